package app

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/driver"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// makeVolumes creates volumes in a pool directory as a driver on nodeID
// would, and closes it again.
func makeVolumes(t *testing.T, nodeID, pool, dir string, names ...string) {
	t.Helper()
	m, err := node.New(node.Config{NodeID: nodeID, Pools: []node.PoolConfig{{Name: pool, Path: dir, Backend: node.BackendDir}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, n := range names {
		if _, err := m.CreateVolume(context.Background(), node.CreateRequest{Name: n, RequiredBytes: 32 << 20, Mode: 0o777}); err != nil {
			t.Fatal(err)
		}
	}
}

// editRecord rewrites a field of a volume record by hand.
func editRecord(t *testing.T, file, field string, value any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	v[field] = value
	if b, err = json.Marshal(v); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantCode(t *testing.T, what string, err error, code codes.Code, contains ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s = %v, want %s", what, err, code)
		return
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("%s: message %q lacks %q", what, err, c)
		}
	}
}

// TestUntrustedRecordsAndMissingPool runs the whole driver on a node with
// a volume whose record was tampered with (its ID names another volume)
// and a second pool whose directory is missing (its disk not mounted). The
// driver starts and serves the healthy pool; the quarantined volume and
// the missing pool refuse every request with the spec's code and a message
// saying what to do, are reported in /metrics and by Node Events, and
// nothing of them changes. Then the operator mounts the disk and repairs
// the record, and both come back without a restart.
func TestUntrustedRecordsAndMissingPool(t *testing.T) {
	ctx := context.Background()
	const nodeID = "node-1"
	healthy := t.TempDir()
	makeVolumes(t, nodeID, "default", healthy, "pvc-good", "pvc-bad")
	record := filepath.Join(healthy, "volumes/pvc-bad/volume.json")
	goodRecord, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	editRecord(t, record, "id", nodeID+"/default/pvc-good")
	dataFile := filepath.Join(healthy, "volumes/pvc-bad/data/db")
	if err := os.WriteFile(dataFile, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	disk := t.TempDir() // the unmounted data disk of pool "slow"
	makeVolumes(t, nodeID, "slow", disk, "pvc-held")
	slowPath := filepath.Join(t.TempDir(), "mnt", "slow")

	d := startDriverConfig(t, true, Config{
		Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"), NodeID: nodeID,
		Pools: []node.PoolConfig{
			{Name: "default", Path: healthy, Backend: node.BackendDir},
			{Name: "slow", Path: slowPath, Backend: node.BackendDir},
		},
		// A purge round, which also opens missing pools and re-reads
		// quarantined records, every second.
		TrashRetention: 4 * time.Second, DefaultVolumeSize: 32 << 20, MetricsAddress: "127.0.0.1:0", Health: health.DefaultConfig(),
	})
	bad, held := nodeID+"/default/pvc-bad", nodeID+"/slow/pvc-held"
	slowParams := map[string]string{dhpp.ParamPool: "slow"}
	stage := filepath.Join(t.TempDir(), "staging")
	target := filepath.Join(t.TempDir(), "target")

	// The quarantined volume: reserved, refused, reported.
	_, err = d.create("pvc-bad")
	wantCode(t, "CreateVolume(quarantined name)", err, codes.FailedPrecondition, "quarantined", record, `has volume ID "node-1/default/pvc-good"`)
	for _, c := range []struct {
		name string
		err  error
	}{
		{"DeleteVolume", func() error { _, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: bad}); return err }()},
		{"ControllerGetVolume", func() error {
			_, err := d.ctl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: bad})
			return err
		}()},
		{"NodeStageVolume", func() error {
			_, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: bad, StagingTargetPath: stage, VolumeCapability: mountCap[0]})
			return err
		}()},
		{"NodePublishVolume", func() error {
			_, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: bad, StagingTargetPath: stage, TargetPath: target, VolumeCapability: mountCap[0]})
			return err
		}()},
		{"NodeUnstageVolume", func() error {
			_, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: bad, StagingTargetPath: stage})
			return err
		}()},
		{"NodeUnpublishVolume", func() error {
			_, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: bad, TargetPath: target})
			return err
		}()},
		{"NodeGetVolumeStats", func() error {
			_, err := d.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: bad, VolumePath: target})
			return err
		}()},
		{"NodeExpandVolume", func() error {
			_, err := d.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: bad, VolumePath: target, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
			return err
		}()},
		{"ControllerExpandVolume", func() error {
			_, err := d.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: bad, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
			return err
		}()},
	} {
		wantCode(t, c.name+"(quarantined)", c.err, codes.FailedPrecondition, "quarantined", record)
	}
	list, err := d.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetEntries()) != 1 || list.GetEntries()[0].GetVolume().GetVolumeId() != nodeID+"/default/pvc-good" {
		t.Errorf("ListVolumes = %v, want only pvc-good", list.GetEntries())
	}

	// The missing pool: fenced, refusing, reported; the healthy one serves.
	_, err = d.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-new", VolumeCapabilities: mountCap, Parameters: slowParams})
	wantCode(t, "CreateVolume(missing pool)", err, codes.ResourceExhausted, slowPath)
	if r, err := d.ctl.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: mountCap, Parameters: slowParams}); err != nil || r.GetAvailableCapacity() != 0 {
		t.Errorf("GetCapacity(missing pool) = %v, %v; want 0", r, err)
	}
	_, err = d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: held})
	wantCode(t, "DeleteVolume(missing pool)", err, codes.FailedPrecondition, `pool "slow"`, slowPath, "is the data disk mounted?")
	_, err = d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: held, StagingTargetPath: stage, VolumeCapability: mountCap[0]})
	wantCode(t, "NodeStageVolume(missing pool)", err, codes.FailedPrecondition, slowPath, "is the data disk mounted?")
	if _, err := d.create("pvc-new"); err != nil {
		t.Fatalf("CreateVolume in the healthy pool: %v", err)
	}

	for _, g := range []struct {
		name, pool string
		want       float64
	}{
		{"dhpp_pool_quarantined_volumes", "default", 1},
		{"dhpp_pool_quarantined_volumes", "slow", 0},
		{"dhpp_pool_missing", "default", 0},
		{"dhpp_pool_missing", "slow", 1},
		{"dhpp_pool_fenced", "slow", 1},
		{"dhpp_pool_fenced", "default", 0},
	} {
		if v, ok := d.gauge(g.name, map[string]string{"pool": g.pool}); !ok || v != g.want {
			t.Errorf("%s{pool=%s} = %v (present %v), want %v", g.name, g.pool, v, ok, g.want)
		}
	}
	testdisk.WaitFor(t, "VolumesQuarantined and PoolFenced events, fenced label", func() bool {
		n, err := d.kube.CoreV1().Nodes().Get(ctx, nodeID, metav1.GetOptions{})
		return err == nil && n.Labels[kube.PoolLabelPrefix+"slow"] == kube.PoolLabelFenced &&
			strings.Contains(d.eventReasons(), kube.ReasonVolumesQuarantined) && strings.Contains(d.eventReasons(), kube.ReasonPoolFenced)
	})
	for _, e := range d.nodeEvents() {
		t.Logf("event %s: %s", e.Reason, e.Message)
		var want []string
		switch e.Reason {
		case kube.ReasonVolumesQuarantined:
			want = []string{"pvc-bad", record, `has volume ID "node-1/default/pvc-good"`}
		case kube.ReasonPoolFenced:
			want = []string{`pool "slow"`, slowPath, "is the data disk mounted?"}
		default:
			t.Errorf("unexpected event %s: %s", e.Reason, e.Message)
			continue
		}
		if e.Type != corev1.EventTypeWarning || e.InvolvedObject.Kind != "Node" || e.InvolvedObject.Name != nodeID {
			t.Errorf("event %s: type %s on %s/%s", e.Reason, e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name)
		}
		for _, w := range want {
			if !strings.Contains(e.Message, w) {
				t.Errorf("event %s: %q lacks %q", e.Reason, e.Message, w)
			}
		}
	}
	if b, err := os.ReadFile(dataFile); err != nil || string(b) != "precious" {
		t.Fatalf("quarantined data changed: %q, %v", b, err)
	}
	if _, err := os.Stat(slowPath); !os.IsNotExist(err) {
		t.Fatalf("the driver created the missing pool's directory: %v", err)
	}

	// The operator mounts the disk and repairs the record.
	if err := os.MkdirAll(filepath.Dir(slowPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(disk, slowPath); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, goodRecord, 0o600); err != nil {
		t.Fatal(err)
	}
	testdisk.WaitFor(t, "the pool opened and the record re-read", func() bool {
		_, err1 := d.ctl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: held})
		_, err2 := d.ctl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: bad})
		return err1 == nil && err2 == nil
	})
	if v, _ := d.gauge("dhpp_pool_missing", map[string]string{"pool": "slow"}); v != 0 {
		t.Errorf("dhpp_pool_missing{slow} = %v after the disk came back", v)
	}
	if v, _ := d.gauge("dhpp_pool_quarantined_volumes", map[string]string{"pool": "default"}); v != 0 {
		t.Errorf("dhpp_pool_quarantined_volumes{default} = %v after the repair", v)
	}
	// Like any fenced pool it takes new volumes only once unfenced, but
	// its volumes are served again.
	_, err = d.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-new2", VolumeCapabilities: mountCap, Parameters: slowParams})
	wantCode(t, "CreateVolume(reopened, still fenced)", err, codes.ResourceExhausted, "fenced")
	if _, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: held}); err != nil {
		t.Errorf("DeleteVolume after the disk came back: %v", err)
	}
	if _, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: bad}); err != nil {
		t.Errorf("DeleteVolume of the repaired volume: %v", err)
	}
}

// TestSecondInstanceRefused: a second driver started on the socket of a
// running one fails before it touches the pools, and the first keeps
// serving on its socket.
func TestSecondInstanceRefused(t *testing.T) {
	defer func(d time.Duration) { driver.ClaimWait = d }(driver.ClaimWait)
	driver.ClaimWait = 300 * time.Millisecond // the refusal comes after this wait
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	pool := t.TempDir()
	first := startDriverKube(t, false, "solo", health.DefaultConfig(), node.PoolConfig{Name: "default", Path: pool, Backend: node.BackendDir})
	sock := strings.TrimPrefix(first.cfg.Endpoint, "unix://")
	before, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	// A half-made volume of the first instance: a second instance that
	// opened the pool would move it to the trash.
	tmpEntry := filepath.Join(pool, ".dhpp/tmp/pvc-making.0a0b0c")
	if err := os.Mkdir(tmpEntry, 0o700); err != nil {
		t.Fatal(err)
	}
	second := first.cfg
	second.MetricsAddress = "127.0.0.1:0"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = Run(ctx, second)
	if err == nil || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), "another dhpp-driver instance") {
		t.Fatalf("second instance: %v; want a refusal naming %s", err, sock)
	}
	if _, err := os.Stat(tmpEntry); err != nil {
		t.Fatalf("the second instance touched the pool: %v", err)
	}
	after, err := os.Lstat(sock)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("the first instance's socket was replaced or removed: %v", err)
	}
	conn, err := grpc.NewClient(first.cfg.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{}); err != nil {
		t.Fatalf("Probe of the first instance: %v", err)
	}
	if err := os.Remove(tmpEntry); err != nil {
		t.Fatal(err)
	}
}
