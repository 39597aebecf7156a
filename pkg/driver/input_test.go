package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeHealth fences the pools it names.
type fakeHealth map[string]string

func (f fakeHealth) PoolFenced(pool string) (bool, string) {
	why, ok := f[pool]
	return ok, why
}

// inputDriver serves a dir-backend pool in a temp directory: these tests are
// about request handling, so they need neither root nor a real disk.
func inputDriver(t testing.TB, health PoolHealth) (*Driver, string) {
	t.Helper()
	pool := t.TempDir()
	m, err := node.New(node.Config{NodeID: "node-a", Pools: []node.PoolConfig{{Name: "default", Path: pool, Backend: node.BackendDir}}, DefaultSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	d, err := New(Config{Manager: m, Health: health})
	if err != nil {
		t.Fatal(err)
	}
	return d, pool
}

var (
	rwo    = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	rwx    = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
	block  = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	noMode = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}
)

func createReq(name string, mut func(*csi.CreateVolumeRequest)) *csi.CreateVolumeRequest {
	r := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo}, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}}
	if mut != nil {
		mut(r)
	}
	return r
}

// TestBadInput: every malformed request gets the spec's code and a message
// naming what is wrong, and changes nothing on disk.
func TestBadInput(t *testing.T) {
	d, pool := inputDriver(t, nil)
	ctx := context.Background()
	if _, err := d.CreateVolume(ctx, createReq("existing", nil)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		call     func() error
		code     codes.Code
		contains string
	}{
		{"create: no name", func() error { _, err := d.CreateVolume(ctx, createReq("", nil)); return err }, codes.InvalidArgument, "name is required"},
		{"create: no capabilities", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }))
			return err
		}, codes.InvalidArgument, "volume_capabilities is required"},
		{"create: multi-node mode", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{rwx} }))
			return err
		}, codes.InvalidArgument, "MULTI_NODE_MULTI_WRITER is not supported"},
		{"create: no access mode", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{noMode} }))
			return err
		}, codes.InvalidArgument, "no access mode"},
		{"create: mixed access types", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{rwo, block} }))
			return err
		}, codes.InvalidArgument, "mixes block and mount"},
		{"create: dot-dot name", func() error { _, err := d.CreateVolume(ctx, createReq("..", nil)); return err }, codes.InvalidArgument, "volume name"},
		{"create: slash in name", func() error { _, err := d.CreateVolume(ctx, createReq("a/../../etc", nil)); return err }, codes.InvalidArgument, "volume name"},
		{"create: absolute name", func() error { _, err := d.CreateVolume(ctx, createReq("/etc/passwd", nil)); return err }, codes.InvalidArgument, "volume name"},
		{"create: NUL in name", func() error { _, err := d.CreateVolume(ctx, createReq("a\x00b", nil)); return err }, codes.InvalidArgument, "volume name"},
		{"create: name over 128 bytes", func() error { _, err := d.CreateVolume(ctx, createReq(strings.Repeat("a", 129), nil)); return err }, codes.InvalidArgument, "limit is 128"},
		{"create: unknown parameter", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"replicas": "3"} }))
			return err
		}, codes.InvalidArgument, `unknown parameter(s) "replicas"`},
		{"create: unknown pool", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"pool": "fast"} }))
			return err
		}, codes.ResourceExhausted, `pool "fast" is not configured`}, // another node may have it
		{"create: malformed mode", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mode": "u+rwx"} }))
			return err
		}, codes.InvalidArgument, `parameter "mode"`},
		{"create: limit below required", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.CapacityRange = &csi.CapacityRange{RequiredBytes: 10 << 20, LimitBytes: 5 << 20}
			}))
			return err
		}, codes.InvalidArgument, "limit_bytes"},
		{"create: negative size", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: -1} }))
			return err
		}, codes.InvalidArgument, "required_bytes is negative"},
		{"create: beyond the pool", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 62} }))
			return err
		}, codes.ResourceExhausted, "in total"}, // a larger pool elsewhere may hold it
		{"create: other node's topology", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{"topology.dhpp.io/node": "node-b"}}}}
			}))
			return err
		}, codes.ResourceExhausted, `does not include node "node-a"`},
		{"create: fsType dhpp cannot make", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.VolumeCapabilities = []*csi.VolumeCapability{withFsType(rwo, "vfat")}
			}))
			return err
		}, codes.InvalidArgument, "ext4 and xfs on every pool"},
		{"create: content source", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "x"}}}
			}))
			return err
		}, codes.InvalidArgument, "volume_content_source"},
		{"create: snapshot ID no node issues", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "x"}}}
			}))
			return err
		}, codes.NotFound, "not an ID dhpp issues"}, // csi-sanity wants NotFound here
		{"create: another node's snapshot", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "node-b/default/snapshots/s"}}}
			}))
			return err
		}, codes.ResourceExhausted, "the driver on that node makes the volume"}, // the provisioner of node-b will
		{"create: another node's volume as clone source", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "node-b/default/v0"}}}
			}))
			return err
		}, codes.ResourceExhausted, "the driver on that node makes the clone"},
		{"create: missing snapshot of this node", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "node-a/default/snapshots/gone"}}}
			}))
			return err
		}, codes.NotFound, "does not exist"},
		{"create: restore into another pool", func() error {
			_, err := d.CreateVolume(ctx, createReq("v", func(r *csi.CreateVolumeRequest) {
				r.Parameters = map[string]string{"pool": "other"}
				r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "node-a/default/snapshots/gone"}}}
			}))
			return err
		}, codes.NotFound, "does not exist"}, // the source is looked up first
		{"snapshot: no name", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: "node-a/default/v0"})
			return err
		}, codes.InvalidArgument, "name is required"},
		{"snapshot: malformed source", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "x"})
			return err
		}, codes.InvalidArgument, "is not of the form"},
		{"snapshot: missing source", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "node-a/default/gone"})
			return err
		}, codes.NotFound, "does not exist"},
		{"snapshot: source of another node", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "node-b/default/v0"})
			return err
		}, codes.NotFound, "taken by the driver on that node"},
		{"snapshot: unknown parameter", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "node-a/default/v0", Parameters: map[string]string{"pool": "fast"}})
			return err
		}, codes.InvalidArgument, `unknown VolumeSnapshotClass parameter(s) "pool"`},
		{"snapshot: bad name", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "../x", SourceVolumeId: "node-a/default/v0"})
			return err
		}, codes.InvalidArgument, "snapshot name"},
		{"delete snapshot: another node's", func() error {
			_, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "node-b/default/snapshots/s"})
			return err
		}, codes.FailedPrecondition, `is on node "node-b"`}, // succeeding would orphan its data
		{"get snapshot: malformed", func() error {
			_, err := d.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: "x"})
			return err
		}, codes.NotFound, "not a snapshot ID dhpp issues"},
		{"list snapshots: malformed token", func() error {
			_, err := d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: "x"})
			return err
		}, codes.Aborted, "starting_token"},
		{"create: same name, other size", func() error {
			_, err := d.CreateVolume(ctx, createReq("existing", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: 2 << 20} }))
			return err
		}, codes.AlreadyExists, "outside the requested range"},
		{"delete: no id", func() error { _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{}); return err }, codes.InvalidArgument, "volume_id is required"},
		{"delete: traversal id", func() error {
			_, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "node-a/default/../../etc"})
			return err
		}, codes.InvalidArgument, "not of the form"},
		{"delete: other node", func() error {
			_, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "node-b/default/existing"})
			return err
		}, codes.FailedPrecondition, `on node "node-b"`},
		{"validate: unknown volume", func() error {
			_, err := d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "node-a/default/nope", VolumeCapabilities: []*csi.VolumeCapability{rwo}})
			return err
		}, codes.NotFound, "does not exist"},
		{"list: negative max", func() error { _, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1}); return err }, codes.InvalidArgument, "max_entries"},
		{"list: foreign token", func() error {
			_, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "page-2"})
			return err
		}, codes.Aborted, "starting_token"},
		{"expand: no range", func() error {
			_, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "node-a/default/existing"})
			return err
		}, codes.InvalidArgument, "capacity_range is required"},
		{"publish: relative target", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "node-a/default/existing", TargetPath: "pods/x", StagingTargetPath: "/s", VolumeCapability: rwo})
			return err
		}, codes.InvalidArgument, "target_path"},
		{"publish: unclean target", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "node-a/default/existing", TargetPath: "/var/lib/../../etc", StagingTargetPath: "/s", VolumeCapability: rwo})
			return err
		}, codes.InvalidArgument, "not a clean path"},
		{"publish: NUL in target", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "node-a/default/existing", TargetPath: "/t\x00", StagingTargetPath: "/s", VolumeCapability: rwo})
			return err
		}, codes.InvalidArgument, "NUL"},
		{"publish: no capability", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "node-a/default/existing", TargetPath: "/t", StagingTargetPath: "/s"})
			return err
		}, codes.InvalidArgument, "volume_capability is required"},
		{"stats: relative path", func() error {
			_, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "node-a/default/existing", VolumePath: "some/path"})
			return err
		}, codes.NotFound, "volume_path"},
		{"stats: unknown volume", func() error {
			_, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "node-a/default/nope", VolumePath: "/"})
			return err
		}, codes.NotFound, "does not exist"},
	}
	before := snapshot(t, filepath.Dir(pool))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			st, _ := status.FromError(err)
			if st.Code() != tt.code || !strings.Contains(st.Message(), tt.contains) {
				t.Fatalf("got %s %q, want %s with %q", st.Code(), st.Message(), tt.code, tt.contains)
			}
		})
	}
	if after := snapshot(t, filepath.Dir(pool)); after != before {
		t.Fatalf("bad requests changed the disk:\nbefore %s\nafter  %s", before, after)
	}
}

// snapshot lists every path under dir (to detect any change).
func snapshot(t testing.TB, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(p)
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestFencedPool: what a fenced pool means to each caller.
func TestFencedPool(t *testing.T) {
	health := fakeHealth{}
	d, _ := inputDriver(t, health)
	ctx := context.Background()
	v, err := d.CreateVolume(ctx, createReq("before", nil))
	if err != nil {
		t.Fatal(err)
	}
	health["default"] = "read_only: pwrite: read-only file system"

	_, err = d.CreateVolume(ctx, createReq("after", nil))
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), `pool "default"`) || !strings.Contains(st.Message(), "read-only file system") {
		t.Fatalf("CreateVolume on a fenced pool: %v; want ResourceExhausted naming the pool and the probe error", err)
	}
	if c, err := d.GetCapacity(ctx, &csi.GetCapacityRequest{}); err != nil || c.AvailableCapacity != 0 {
		t.Fatalf("GetCapacity on a fenced pool = %v, %v; want 0", c, err)
	}
	h, err := d.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.Volume.VolumeId})
	if err != nil || len(h.VolumeHealth.HealthStatuses) != 1 || h.VolumeHealth.HealthStatuses[0].Status != csi.VolumeHealthErrorType_INACCESSIBLE {
		t.Fatalf("ControllerGetVolumeHealth = %v, %v", h, err)
	}
	gv, err := d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: v.Volume.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	if abnormal, msg := testdisk.LegacyCondition(t, gv.Status); !abnormal || !strings.Contains(msg, "PoolFenced") {
		t.Fatalf("legacy VolumeCondition = %v %q, want abnormal PoolFenced", abnormal, msg)
	}
	sh, err := d.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || len(sh.BackendHealth) != 1 || sh.BackendHealth[0].Status != csi.StorageHealthErrorType_STORAGE_UNREACHABLE {
		t.Fatalf("NodeGetStorageHealth = %v, %v", sh, err)
	}

	delete(health, "default")
	gv, _ = d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: v.Volume.VolumeId})
	if abnormal, _ := testdisk.LegacyCondition(t, gv.Status); abnormal {
		t.Fatalf("legacy VolumeCondition still abnormal after recovery")
	}
	if _, err := d.CreateVolume(ctx, createReq("after", nil)); err != nil {
		t.Fatalf("CreateVolume after recovery: %v", err)
	}
}

// FuzzCreateVolume: whatever the name, parameters and sizes, CreateVolume
// either makes a volume inside the pool or refuses with a client error;
// it never fails with Internal and never touches anything outside the pool.
func FuzzCreateVolume(f *testing.F) {
	f.Add("pvc-1", "default", "0750", int64(1<<20), int64(0))
	f.Add("../../etc", "", "", int64(0), int64(0))
	f.Add("a", "Default", "9999", int64(-5), int64(1))
	f.Add(strings.Repeat("x", 128), "default", "0777", int64(1<<40), int64(1<<40))
	f.Add("ok.name_1", "default", "700", int64(3<<20), int64(2<<20))
	f.Fuzz(func(t *testing.T, name, pool, mode string, required, limit int64) {
		d, dir := inputDriver(t, nil)
		outside := snapshot(t, filepath.Dir(dir)) // the test's private temp root
		params := map[string]string{}
		if pool != "" {
			params["pool"] = pool
		}
		if mode != "" {
			params["mode"] = mode
		}
		resp, err := d.CreateVolume(context.Background(), createReq(name, func(r *csi.CreateVolumeRequest) {
			r.Parameters = params
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit}
		}))
		if err != nil {
			switch c := status.Code(err); c {
			case codes.InvalidArgument, codes.OutOfRange, codes.ResourceExhausted:
			default:
				t.Fatalf("CreateVolume(%q, %v, %d, %d) = %s: %v", name, params, required, limit, c, err)
			}
		} else {
			id, perr := node.ParseVolumeID(resp.Volume.VolumeId)
			if perr != nil {
				t.Fatalf("returned an unparsable ID %q: %v", resp.Volume.VolumeId, perr)
			}
			if _, serr := os.Stat(filepath.Join(dir, "volumes", id.Name, "data")); serr != nil {
				t.Fatalf("volume %q is not inside the pool: %v", id, serr)
			}
		}
		// Only the pool's own directory may have changed.
		now := snapshot(t, filepath.Dir(dir))
		for _, line := range strings.Split(now, "\n") {
			if line != "" && !strings.HasPrefix(line, dir) && !strings.Contains(outside, line+"\n") {
				t.Fatalf("CreateVolume created %s outside the pool %s", line, dir)
			}
		}
	})
}
