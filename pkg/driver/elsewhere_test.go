package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/node"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCreateElsewhereCodes: a CreateVolume this node cannot serve but
// another node may is ResourceExhausted (csi-provisioner hands the claim
// back to the scheduler); one no node could ever serve is InvalidArgument
// or OutOfRange (final). One row per reason, on real directories.
func TestCreateElsewhereCodes(t *testing.T) {
	dflt, fenced := t.TempDir(), t.TempDir()
	m, err := node.New(node.Config{NodeID: "node-a", DefaultSize: 1 << 20, Pools: []node.PoolConfig{
		{Name: "default", Path: dflt, Backend: node.BackendDir},
		{Name: "fenced", Path: fenced, Backend: node.BackendDir},
		{Name: "gone", Path: filepath.Join(t.TempDir(), "unmounted"), Backend: node.BackendDir},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	d, err := New(Config{Manager: m, Health: fakeHealth{"fenced": "read probe failed: EIO"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := m.Pools()[0].Capacity()
	if err != nil {
		t.Fatal(err)
	}
	// Fill three quarters of what the default pool has, so the same size
	// again does not fit now (but would on an emptier node). A quarter of
	// the pool is the margin for other writers on the shared disk.
	half := (c.Available / 4 * 3 / (1 << 20)) << 20
	if _, err := d.CreateVolume(ctx, createReq("first-half", func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = half })); err != nil {
		t.Fatal(err)
	}
	inPool := func(pool string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"pool": pool} }
	}
	fsType := func(fs string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{withFsType(rwo, fs)} }
	}
	tests := []struct {
		name     string
		mut      func(*csi.CreateVolumeRequest)
		code     codes.Code
		contains string
	}{
		// Another node may serve these.
		{"pool not configured on this node", inPool("fast"), codes.ResourceExhausted, `pool "fast" is not configured on node "node-a"`},
		{"pool fenced", inPool("fenced"), codes.ResourceExhausted, "fenced"},
		{"pool directory missing", inPool("gone"), codes.ResourceExhausted, "was missing"},
		{"not enough room now", func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = half }, codes.ResourceExhausted, "available"},
		{"larger than the whole pool", func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 1 << 62 }, codes.ResourceExhausted, "in total"},
		{"topology of another node", func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{"topology.dhpp.io/node": "node-b"}}}}
		}, codes.ResourceExhausted, `does not include node "node-a"`},
		{"fsType btrfs on a pool not on btrfs", fsType("btrfs"), codes.ResourceExhausted, "btrfs volumes are made on pools on btrfs"},
		// No node could ever serve these.
		{"fsType dhpp cannot make", fsType("ntfs"), codes.InvalidArgument, `fsType "ntfs" is not one dhpp makes: ext4 and xfs on every pool, btrfs on pools on btrfs`},
		{"malformed pool name", inPool("Fast_Pool"), codes.InvalidArgument, "DNS label"},
		{"malformed mode", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"mode": "rwx"} }, codes.InvalidArgument, `parameter "mode"`},
		{"unknown parameter", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"replicas": "3"} }, codes.InvalidArgument, "unknown parameter"},
		{"limit below required", func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 10 << 20, LimitBytes: 5 << 20}
		}, codes.InvalidArgument, "limit_bytes"},
		{"limit below the granularity", func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1, LimitBytes: 1000}
		}, codes.OutOfRange, "above limit_bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.CreateVolume(ctx, createReq("v-"+strings.ReplaceAll(tc.name, " ", "-"), tc.mut))
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("CreateVolume = %v, want %v containing %q", err, tc.code, tc.contains)
			}
		})
	}
	if vols := m.ListVolumes(); len(vols) != 1 {
		t.Errorf("refused requests left volumes behind: %d volumes, want 1", len(vols))
	}
}

// withFsType is a copy of the capability c asking for the filesystem fs.
func withFsType(c *csi.VolumeCapability, fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: c.GetAccessMode(),
	}
}

// TestValidateFsType: ValidateVolumeCapabilities confirms a volume's own
// filesystem (the pool's, for a native volume) and no other.
func TestValidateFsType(t *testing.T) {
	d, pool := inputDriver(t, nil)
	ctx := context.Background()
	v, err := d.CreateVolume(ctx, createReq("native", nil))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	own, other := "ext4", "xfs"
	switch st.Type {
	case unix.XFS_SUPER_MAGIC:
		own, other = "xfs", "ext4"
	case unix.EXT4_SUPER_MAGIC:
	default:
		t.Fatalf("the test's temp dir is on filesystem %#x; it needs ext4 or xfs", st.Type)
	}
	for _, tc := range []struct {
		fs      string
		confirm bool
	}{{"", true}, {own, true}, {other, false}} {
		r, err := d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{
			VolumeId: v.Volume.VolumeId, VolumeCapabilities: []*csi.VolumeCapability{withFsType(rwo, tc.fs)},
		})
		if err != nil || (r.GetConfirmed() != nil) != tc.confirm {
			t.Errorf("fs_type %q: %v, %v; want confirmed %v", tc.fs, r, err, tc.confirm)
		}
	}
}

// TestCapacityPerCapability: GetCapacity publishes a pool's room for every
// volume mode and the filesystems it can make, and 0 where the scheduler
// must look elsewhere (a pool this node lacks, a filesystem it cannot make).
func TestCapacityPerCapability(t *testing.T) {
	d, _ := inputDriver(t, nil)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		pool string
		c    *csi.VolumeCapability
		some bool
	}{
		{"filesystem", "", rwo, true},
		{"block", "", block, true},
		{"xfs image", "", withFsType(rwo, "xfs"), true},
		{"pool not on this node", "fast", rwo, false},
		{"btrfs on a pool not on btrfs", "", withFsType(rwo, "btrfs"), false},
		{"a filesystem dhpp cannot make", "", withFsType(rwo, "vfat"), false},
	} {
		req := &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{tc.c}}
		if tc.pool != "" {
			req.Parameters = map[string]string{"pool": tc.pool}
		}
		r, err := d.GetCapacity(ctx, req)
		if err != nil || (r.GetAvailableCapacity() > 0) != tc.some {
			t.Errorf("%s: GetCapacity = %v, %v; want capacity %v", tc.name, r, err, tc.some)
		}
	}
}
