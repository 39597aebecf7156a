package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/kube/kubetest"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

// driverUnderTest is a whole dhpp-driver (Run with its real wiring) in this
// process, with a fake API server for the Node side.
type driverUnderTest struct {
	t       *testing.T
	ctl     csi.ControllerClient
	node    csi.NodeClient
	kube    *fake.Clientset
	metrics string // http://addr/metrics
	cfg     Config
}

// startDriver runs the driver on pools until the test ends, with a fake
// API server holding the Node.
func startDriver(t *testing.T, nodeID string, hc health.Config, pools ...node.PoolConfig) *driverUnderTest {
	t.Helper()
	return startDriverKube(t, true, nodeID, hc, pools...)
}

// startDriverKube is startDriver, without any Kubernetes API if !withKube.
func startDriverKube(t *testing.T, withKube bool, nodeID string, hc health.Config, pools ...node.PoolConfig) *driverUnderTest {
	t.Helper()
	return startDriverConfig(t, withKube, Config{
		Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"), NodeID: nodeID, Pools: pools, TrashRetention: time.Minute,
		DefaultVolumeSize: 64 << 20, MetricsAddress: "127.0.0.1:0", Health: hc,
	})
}

// startDriverConfig is startDriverKube with the whole configuration given.
func startDriverConfig(t *testing.T, withKube bool, cfg Config) *driverUnderTest {
	t.Helper()
	var hk hooks
	var kc *fake.Clientset
	if withKube {
		kc = fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: cfg.NodeID}})
		hk.kubeClient = kubetest.FakeAPI{C: kc}
	}
	d := startDriverHooks(t, cfg, hk)
	d.kube = kc
	return d
}

// startDriverHooks runs the driver with the given hooks until the test
// ends, and connects to its CSI socket and metrics.
func startDriverHooks(t *testing.T, cfg Config, hk hooks) *driverUnderTest {
	t.Helper()
	listening := make(chan string, 1)
	d := &driverUnderTest{t: t, cfg: cfg}
	hk.httpListening = func(a string) { listening <- a }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, hk) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("driver: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("driver did not stop within 20 s")
		}
	})
	select {
	case a := <-listening:
		d.metrics = "http://" + a + "/metrics"
	case err := <-done:
		t.Fatalf("driver stopped at start: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("driver did not start within 20 s")
	}
	conn, err := grpc.NewClient(cfg.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.ctl, d.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	return d
}

var mountCap = []*csi.VolumeCapability{{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}}

func (d *driverUnderTest) create(name string) (*csi.CreateVolumeResponse, error) {
	return d.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: mountCap, CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20},
	})
}

// publishRunning creates a volume and stages and publishes it as the
// kubelet does for a running pod; cleanup unpublishes and unstages it.
func (d *driverUnderTest) publishRunning(t *testing.T, name string) (volID, target string) {
	t.Helper()
	ctx := context.Background()
	vol, err := d.create(name)
	if err != nil {
		t.Fatal(err)
	}
	volID = vol.GetVolume().GetVolumeId()
	work := t.TempDir()
	staging := filepath.Join(work, "staging")
	target = filepath.Join(work, "target")
	for _, p := range []string{staging, target} {
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: mountCap[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap[0]}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume: %v", err)
		}
		if _, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging}); err != nil {
			t.Errorf("NodeUnstageVolume: %v", err)
		}
	})
	return volID, target
}

// runningData is what publishWithData writes, as a running pod's
// database would have.
var runningData = []byte("written before the disk failed\n")

// publishWithData publishes a volume as publishRunning does and writes
// runningData into its file "db".
func (d *driverUnderTest) publishWithData(t *testing.T, name string) (volID, target string) {
	t.Helper()
	volID, target = d.publishRunning(t, name)
	if err := os.WriteFile(filepath.Join(target, "db"), runningData, 0o644); err != nil {
		t.Fatal(err)
	}
	return volID, target
}

// checkHealthy asserts that pool "default" and volume volID are healthy
// in every channel: capacity offered, not fenced, no CSI volume or storage
// health entry, legacy condition normal.
func (d *driverUnderTest) checkHealthy(volID, stage string) {
	d.t.Helper()
	if c := d.capacity(); c <= 0 {
		d.t.Errorf("%s: GetCapacity = %d, want > 0", stage, c)
	}
	if v, ok := d.gauge("dhpp_pool_fenced", map[string]string{"pool": "default"}); !ok || v != 0 {
		d.t.Errorf("%s: dhpp_pool_fenced = %v (present %v), want 0", stage, v, ok)
	}
	if e, _ := d.volumeHealth(volID); len(e) != 0 {
		d.t.Errorf("%s: volume health %v, want none", stage, e)
	}
	if s := d.storageHealth(); len(s) != 0 {
		d.t.Errorf("%s: storage health %v, want none", stage, s)
	}
	if abnormal, msg := d.volumeCondition(volID); abnormal {
		d.t.Errorf("%s: legacy condition abnormal: %s", stage, msg)
	}
}

// waitUnfencedOnNode waits until the Node has lost the pool's fenced label
// and carries exactly the events PoolFenced then PoolUnfenced.
func (d *driverUnderTest) waitUnfencedOnNode(t *testing.T, nodeName string) {
	t.Helper()
	ctx := context.Background()
	testdisk.WaitFor(t, "label removed and PoolFenced, PoolUnfenced events on "+nodeName, func() bool {
		n, _ := d.kube.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		_, labelled := n.Labels[kube.PoolLabelPrefix+"default"]
		return !labelled && d.eventReasons() == kube.ReasonPoolFenced+","+kube.ReasonPoolUnfenced
	})
}

// nodeEvents lists the Events the driver posted, oldest first.
func (d *driverUnderTest) nodeEvents() []corev1.Event {
	d.t.Helper()
	evs, err := d.kube.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		d.t.Fatalf("list events: %v", err)
	}
	return evs.Items
}

// eventReasons is the reasons of nodeEvents, comma-separated.
func (d *driverUnderTest) eventReasons() string {
	var rs []string
	for _, e := range d.nodeEvents() {
		rs = append(rs, e.Reason)
	}
	return strings.Join(rs, ",")
}

func (d *driverUnderTest) capacity() int64 {
	d.t.Helper()
	r, err := d.ctl.GetCapacity(context.Background(), &csi.GetCapacityRequest{VolumeCapabilities: mountCap})
	if err != nil {
		d.t.Fatalf("GetCapacity: %v", err)
	}
	return r.GetAvailableCapacity()
}

// gauge reads one sample from /metrics.
func (d *driverUnderTest) gauge(name string, labels map[string]string) (float64, bool) {
	d.t.Helper()
	resp, err := http.Get(d.metrics)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		d.t.Fatalf("parse /metrics: %v", err)
	}
	for _, m := range mfs[name].GetMetric() {
		n := 0
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; ok && v == l.GetValue() {
				n++
			}
		}
		if n == len(labels) {
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestFaultReadOnlyDisk injects a read-only remount under a running driver
// and checks everything fencing promises, then heals the disk and unfences
// by annotation. Loop pools are not in the table: an attached loop image is
// a file open for writing, so the kernel refuses the read-only remount.
func TestFaultReadOnlyDisk(t *testing.T) {
	testdisk.RequireRoot(t)
	tests := []struct {
		fs      string
		backend node.BackendKind
	}{
		{"btrfs", node.BackendBtrfs},
		{"ext4", node.BackendDir},
	}
	for _, tt := range tests {
		t.Run(tt.fs+"-"+string(tt.backend), func(t *testing.T) { testFaultReadOnly(t, tt.fs, tt.backend) })
	}
}

func testFaultReadOnly(t *testing.T, fs string, backend node.BackendKind) {
	disk := testdisk.New(t, fs, 512<<20)
	poolPath := filepath.Join(disk.Dir, "dhpp")
	if err := os.Mkdir(poolPath, 0o755); err != nil {
		t.Fatal(err)
	}
	// The production timeout (1 s): shorter ones time out healthy probes
	// on a loaded CI machine (measured in pkg/health: 250 ms did). A 1 s
	// period keeps the test short: bound 1 s x 3 + 1 s = 4 s.
	hc := health.DefaultConfig()
	hc.Period, hc.Timeout, hc.FailureThreshold = time.Second, time.Second, 3
	bound := hc.Period*time.Duration(hc.FailureThreshold) + hc.Timeout
	d := startDriver(t, "fault-node", hc, node.PoolConfig{Name: "default", Path: poolPath, Backend: backend})
	ctx := context.Background()

	// A published volume with data, as a running pod would have.
	volID, target := d.publishWithData(t, "pvc-running")
	d.checkHealthy(volID, "before the fault")

	// The fault.
	faultAt := time.Now()
	disk.RemountRetrying(t, "ro")
	var fencedAfter time.Duration
	var createErr error
	for {
		_, createErr = d.create(fmt.Sprintf("pvc-new-%d", time.Now().UnixNano()))
		if status.Code(createErr) == codes.ResourceExhausted {
			fencedAfter = time.Since(faultAt)
			break
		}
		if createErr == nil || status.Code(createErr) != codes.Internal {
			// Creates that slip in before fencing may fail on the
			// read-only disk (Internal) or not at all on a cached path;
			// anything else is a bug.
			if createErr != nil {
				t.Fatalf("CreateVolume on a failing disk: %v", createErr)
			}
		}
		if time.Since(faultAt) > 10*bound {
			t.Fatalf("not fenced %s after the fault (bound %s); last CreateVolume: %v", time.Since(faultAt), bound, createErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("read-only remount -> fenced (CreateVolume ResourceExhausted) after %s; bound period x failureThreshold + timeout = %s", fencedAfter.Round(time.Millisecond), bound)
	if fencedAfter > bound {
		t.Errorf("fenced after %s, want within %s", fencedAfter, bound)
	}
	msg := status.Convert(createErr).Message()
	for _, want := range []string{`pool "default"`, "read_only", "read-only file system", "last probe error"} {
		if !strings.Contains(msg, want) {
			t.Errorf("CreateVolume message %q lacks %q", msg, want)
		}
	}

	checkFenced := func(stage string) {
		t.Helper()
		if c := d.capacity(); c != 0 {
			t.Errorf("%s: GetCapacity = %d, want 0", stage, c)
		}
		if v, _ := d.gauge("dhpp_pool_fenced", map[string]string{"pool": "default"}); v != 1 {
			t.Errorf("%s: dhpp_pool_fenced = %v, want 1", stage, v)
		}
		if v, _ := d.gauge("dhpp_pool_health_state", map[string]string{"pool": "default", "state": "Fenced"}); v != 1 {
			t.Errorf("%s: dhpp_pool_health_state{state=Fenced} = %v, want 1", stage, v)
		}
		if v, _ := d.gauge("dhpp_health_probe_failures_total", map[string]string{"pool": "default", "reason": "read_only"}); v < float64(hc.FailureThreshold) {
			t.Errorf("%s: read_only failures = %v, want >= %d", stage, v, hc.FailureThreshold)
		}
		if abnormal, m := d.volumeCondition(volID); !abnormal || !strings.Contains(m, "fenced") {
			t.Errorf("%s: ControllerGetVolume condition = %v %q, want abnormal", stage, abnormal, m)
		}
		st, err := d.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: volID, VolumePath: target})
		if err != nil {
			t.Fatal(err)
		}
		if abnormal, m := testdisk.LegacyCondition(t, st); !abnormal || !strings.Contains(m, "read-only file system") {
			t.Errorf("%s: NodeGetVolumeStats condition = %v %q, want abnormal naming the error", stage, abnormal, m)
		}
		vh, err := d.ctl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: volID})
		if err != nil {
			t.Fatal(err)
		}
		if hs := vh.GetVolumeHealth().GetHealthStatuses(); len(hs) != 1 || hs[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE {
			t.Errorf("%s: volume health %v, want INACCESSIBLE", stage, vh.GetVolumeHealth())
		}
		// The running pod's data stays readable: fencing does not unmount.
		if got, err := os.ReadFile(filepath.Join(target, "db")); err != nil || !bytes.Equal(got, runningData) {
			t.Errorf("%s: published volume unreadable: %q, %v", stage, got, err)
		}
		n, err := d.kube.CoreV1().Nodes().Get(ctx, "fault-node", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Labels[kube.PoolLabelPrefix+"default"] != kube.PoolLabelFenced {
			t.Errorf("%s: node labels %v", stage, n.Labels)
		}
	}
	// The Node side is asynchronous: give the worker a moment.
	testdisk.WaitFor(t, "fenced label on the Node", func() bool {
		n, _ := d.kube.CoreV1().Nodes().Get(ctx, "fault-node", metav1.GetOptions{})
		return n.Labels[kube.PoolLabelPrefix+"default"] == kube.PoolLabelFenced
	})
	checkFenced("fenced")

	// Heal the disk. Auto-unfence is off: the pool stays fenced.
	disk.RemountRetrying(t, "rw")
	time.Sleep(3 * hc.Period)
	checkFenced("disk healed, not yet unfenced")

	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"now"}}}`, kube.UnfenceAnnotationPrefix+"default")
	if _, err := d.kube.CoreV1().Nodes().Patch(ctx, "fault-node", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	testdisk.WaitFor(t, "CreateVolume to succeed after unfence", func() bool {
		_, err := d.create("pvc-after-unfence")
		return err == nil
	})
	d.checkHealthy(volID, "unfenced")
	d.waitUnfencedOnNode(t, "fault-node")
	if got, err := os.ReadFile(filepath.Join(target, "db")); err != nil || !bytes.Equal(got, runningData) {
		t.Errorf("published volume after recovery: %q, %v", got, err)
	}
}
