package app

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/internal/vmtest"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/node"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The seed's disk for real: a pool on XFS (project quota) on an md RAID10
// over four virtio disks, in a VM with the stock Debian kernel (this host's
// kernel has no md, no device-mapper and no XFS quota). The whole driver
// runs (Run with its real wiring, a fake API server for the Node).

// raidMemberSize: XFS wants at least 300 MiB, RAID10 halves 4 members.
const raidMemberSize = 192 << 20

var raidDisks = []int64{raidMemberSize, raidMemberSize, raidMemberSize, raidMemberSize}

// vmHealthConfig is the seed's probe scaled for the VM: threshold 3 and a
// 2 s period (the seed's is 5 s) so a test takes seconds. The timeout is 2 s
// (it may not exceed the period), not the production 1 s: under TCG a healthy 1 MiB probe takes tens of
// milliseconds on a quiet host, but the emulated guest loses whole seconds
// when the host's two cores run other test packages beside it, and a probe
// that times out there fences the pool before the test applies its fault.
// The faults these tests inject fail with EIO at once, so the longer timeout
// changes no verdict; the fence bound below is computed from it.
func vmHealthConfig() health.Config {
	hc := health.DefaultConfig()
	hc.Period, hc.Timeout, hc.FailureThreshold = 2*time.Second, 2*time.Second, 3
	return hc
}

// vmLoopbackUp brings up lo: the guest's init does not, and the driver's
// /metrics listens on 127.0.0.1.
func vmLoopbackUp(t *testing.T) {
	t.Helper()
	testdisk.Run(t, "ip", "link", "set", "lo", "up")
}

// vmRAID10 builds /dev/md0, RAID10 over /dev/vda..vdd, and stops it at
// cleanup (after everything on it is gone: cleanups run in reverse).
func vmRAID10(t *testing.T) string {
	t.Helper()
	// --assume-clean: the members are all zeroes; an initial resync
	// would only burn emulated CPU.
	testdisk.Run(t, "mdadm", "--create", "/dev/md0", "--run", "--level=10", "--raid-devices=4", "--assume-clean",
		"/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd")
	t.Cleanup(func() {
		if out, err := exec.Command("mdadm", "--stop", "/dev/md0").CombinedOutput(); err != nil {
			t.Errorf("mdadm --stop /dev/md0: %v: %s", err, out)
		}
	})
	return "/dev/md0"
}

// vmPoolFS makes XFS on dev, mounts it with prjquota (so the pool gets the
// xfs project-quota backend) and lazytime, and returns the pool directory.
//
// lazytime keeps the probe's in-place overwrites from logging timestamp
// updates: with writes failing, an XFS log write error shuts the
// filesystem down for good, and the recovery test needs a filesystem that
// survives a transient fault. Data writes (the probe's) still fail with EIO.
func vmPoolFS(t *testing.T, dev string) (mnt, pool string) {
	t.Helper()
	testdisk.Run(t, "mkfs.xfs", "-q", "-f", dev)
	mnt, err := os.MkdirTemp("/mnt", "raid")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, mnt, "xfs", unix.MS_LAZYTIME, "prjquota"); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
		os.Remove(mnt)
	})
	pool = filepath.Join(mnt, "dhpp")
	if err := os.Mkdir(pool, 0o755); err != nil {
		t.Fatal(err)
	}
	return mnt, pool
}

// storageHealth lists NodeGetStorageHealth as "STATUS/Reason" strings.
func (d *driverUnderTest) storageHealth() []string {
	d.t.Helper()
	r, err := d.node.NodeGetStorageHealth(context.Background(), &csi.NodeGetStorageHealthRequest{})
	if err != nil {
		d.t.Fatalf("NodeGetStorageHealth: %v", err)
	}
	var out []string
	for _, b := range r.GetBackendHealth() {
		out = append(out, b.GetStatus().String()+"/"+b.GetReason())
	}
	return out
}

// volumeHealth returns ControllerGetVolumeHealth's and NodeGetVolumeHealth's
// entries (which must agree) as "STATUS/Reason" strings and their messages.
func (d *driverUnderTest) volumeHealth(id string) (entries []string, msgs string) {
	d.t.Helper()
	ctx := context.Background()
	ch, err := d.ctl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil {
		d.t.Fatalf("ControllerGetVolumeHealth: %v", err)
	}
	nh, err := d.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
	if err != nil {
		d.t.Fatalf("NodeGetVolumeHealth: %v", err)
	}
	var nentries []string
	for _, e := range ch.GetVolumeHealth().GetHealthStatuses() {
		entries = append(entries, e.GetStatus().String()+"/"+e.GetReason())
		msgs += e.GetMessage() + "\n"
	}
	for _, e := range nh.GetVolumeHealth().GetHealthStatuses() {
		nentries = append(nentries, e.GetStatus().String()+"/"+e.GetReason())
	}
	if fmt.Sprint(entries) != fmt.Sprint(nentries) {
		d.t.Errorf("ControllerGetVolumeHealth %v and NodeGetVolumeHealth %v disagree", entries, nentries)
	}
	return entries, msgs
}

// volumeCondition is ControllerGetVolume's legacy VolumeCondition.
func (d *driverUnderTest) volumeCondition(id string) (bool, string) {
	d.t.Helper()
	gv, err := d.ctl.ControllerGetVolume(context.Background(), &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil {
		d.t.Fatalf("ControllerGetVolume: %v", err)
	}
	return testdisk.LegacyCondition(d.t, gv.GetStatus())
}

// probeFailures sums dhpp_health_probe_failures_total over all reasons.
func (d *driverUnderTest) probeFailures(pool string) float64 {
	d.t.Helper()
	var sum float64
	for _, r := range health.Reasons {
		v, _ := d.gauge("dhpp_health_probe_failures_total", map[string]string{"pool": pool, "reason": string(r)})
		sum += v
	}
	return sum
}

// waitLong is waitFor with a caller's deadline, for what takes longer than
// waitFor's 10 s under emulation (an md rebuild).
func waitLong(t *testing.T, what string, limit time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// TestRAID10DegradedVM: one member of the pool's RAID10 fails (mdadm
// --fail). The array is degraded but serves I/O, so the pool stays Healthy
// and unfenced and keeps taking volumes, while the degradation shows in
// dhpp_pool_degraded and the array gauges, in the CSI 1.13 health RPCs
// (DEGRADED / STORAGE_DEGRADED, reason ArrayDegraded) and in the legacy
// condition's message (not abnormal). Replacing the disk (remove, add,
// rebuild) clears it all.
func TestRAID10DegradedVM(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: raidDisks, Timeout: 4 * time.Minute}) {
		return
	}
	vmLoopbackUp(t)
	md := vmRAID10(t)
	_, pool := vmPoolFS(t, md)
	hc := vmHealthConfig()
	d := startDriver(t, "raid-node", hc, node.PoolConfig{Name: "default", Path: pool, Backend: node.BackendAuto})
	vol, err := d.create("pvc-before")
	if err != nil {
		t.Fatal(err)
	}
	if b := vol.GetVolume().GetVolumeContext()["dhpp.io/backend"]; b != string(node.BackendXFS) {
		t.Errorf("backend %q on XFS with prjquota, want xfs", b)
	}
	volID := vol.GetVolume().GetVolumeId()
	pl := map[string]string{"pool": "default"}
	arr := map[string]string{"pool": "default", "array": "md0"}
	members := func(state string) float64 {
		v, _ := d.gauge("dhpp_pool_array_members", map[string]string{"pool": "default", "array": "md0", "state": state})
		return v
	}

	// Optimal: the array is seen, nothing is reported.
	if v, ok := d.gauge("dhpp_pool_degraded", pl); !ok || v != 0 {
		t.Fatalf("optimal array: dhpp_pool_degraded = %v (present %v), want 0", v, ok)
	}
	if v, ok := d.gauge("dhpp_pool_array_degraded_devices", map[string]string{"pool": "default", "array": "md0", "level": "raid10"}); !ok || v != 0 {
		t.Fatalf("optimal array: dhpp_pool_array_degraded_devices = %v (present %v), want 0: is md0 found under the pool?", v, ok)
	}
	if n := members("in_sync"); n != 4 {
		t.Fatalf("optimal array: %v members in_sync, want 4", n)
	}
	if e, _ := d.volumeHealth(volID); len(e) != 0 || len(d.storageHealth()) != 0 {
		t.Fatalf("optimal array: volume health %v, storage health %v; want none", e, d.storageHealth())
	}

	failuresBefore := d.probeFailures("default")
	failAt := time.Now()
	testdisk.Run(t, "mdadm", "/dev/md0", "--fail", "/dev/vdb")
	seen := waitLong(t, "dhpp_pool_degraded 1", 10*hc.Period, func() bool {
		v, _ := d.gauge("dhpp_pool_degraded", pl)
		return v == 1
	})
	t.Logf("mdadm --fail -> dhpp_pool_degraded 1 after %s (watcher period %s)", seen.Round(time.Millisecond), hc.Period)
	t.Logf("/proc/mdstat:\n%s", testdisk.Run(t, "cat", "/proc/mdstat"))

	checkDegraded := func(stage, want string) {
		t.Helper()
		if v, _ := d.gauge("dhpp_pool_array_degraded_devices", map[string]string{"pool": "default", "array": "md0", "level": "raid10"}); v != 1 {
			t.Errorf("%s: dhpp_pool_array_degraded_devices = %v, want 1", stage, v)
		}
		entries, msgs := d.volumeHealth(volID)
		if fmt.Sprint(entries) != "[DEGRADED/ArrayDegraded]" || !strings.Contains(msgs, want) {
			t.Errorf("%s: volume health %v %q, want DEGRADED/ArrayDegraded naming %q", stage, entries, msgs, want)
		}
		if got := d.storageHealth(); fmt.Sprint(got) != "[STORAGE_DEGRADED/ArrayDegraded]" {
			t.Errorf("%s: storage health %v, want STORAGE_DEGRADED/ArrayDegraded", stage, got)
		}
		abnormal, msg := d.volumeCondition(volID)
		if abnormal || !strings.Contains(msg, "ArrayDegraded") || !strings.Contains(msg, want) {
			t.Errorf("%s: legacy condition (%v, %q), want not abnormal, naming ArrayDegraded and %q", stage, abnormal, msg, want)
		}
		// Not fenced: the array serves I/O, so the probes pass.
		if v, _ := d.gauge("dhpp_pool_fenced", pl); v != 0 {
			t.Errorf("%s: dhpp_pool_fenced = %v, want 0", stage, v)
		}
		if v, _ := d.gauge("dhpp_pool_health_state", map[string]string{"pool": "default", "state": "Healthy"}); v != 1 {
			t.Errorf("%s: pool is not Healthy", stage)
		}
		if c := d.capacity(); c <= 0 {
			t.Errorf("%s: GetCapacity = %d, want > 0", stage, c)
		}
	}
	checkDegraded("member failed", "faulty: vdb")
	testdisk.WaitFor(t, "a PoolDegraded Node Event", func() bool { return d.eventReasons() == kube.ReasonPoolDegraded })
	if ev := d.nodeEvents()[0]; ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, "faulty: vdb") || !strings.Contains(ev.Message, "replace the failed disk") {
		t.Errorf("PoolDegraded event: %s %q, want a Warning naming vdb and what to do", ev.Type, ev.Message)
	}
	if n := members("faulty"); n != 1 {
		t.Errorf("member failed: %v members faulty, want 1", n)
	}
	// Several probe periods on the degraded array: still no failure.
	time.Sleep(3 * hc.Period)
	if f := d.probeFailures("default"); f != failuresBefore {
		t.Errorf("probes failed on the degraded array: %v failures, %v before", f, failuresBefore)
	}
	checkDegraded("degraded for 3 periods", "faulty: vdb")
	newVol, err := d.create("pvc-on-degraded")
	if err != nil {
		t.Fatalf("CreateVolume on the degraded array: %v", err)
	}
	if e, _ := d.volumeHealth(newVol.GetVolume().GetVolumeId()); fmt.Sprint(e) != "[DEGRADED/ArrayDegraded]" {
		t.Errorf("the new volume's health %v, want DEGRADED/ArrayDegraded", e)
	}

	// Replace the disk: remove the failed member, add it back as new. It
	// stays degraded (rebuilding) until the recovery completes.
	testdisk.Run(t, "mdadm", "/dev/md0", "--remove", "/dev/vdb")
	testdisk.Run(t, "mdadm", "--zero-superblock", "/dev/vdb")
	waitLong(t, "the removed member to leave the metrics", 10*hc.Period, func() bool { return members("faulty") == 0 })
	checkDegraded("member removed", "1 missing")
	addAt := time.Now()
	testdisk.Run(t, "mdadm", "/dev/md0", "--add", "/dev/vdb")
	rebuilt := waitLong(t, "the rebuild to finish (dhpp_pool_degraded 0)", 2*time.Minute, func() bool {
		v, _ := d.gauge("dhpp_pool_degraded", pl)
		return v == 0
	})
	t.Logf("mdadm --add -> rebuilt, dhpp_pool_degraded 0 after %s (%d MiB members)", rebuilt.Round(time.Millisecond), raidMemberSize>>20)
	if v, _ := d.gauge("dhpp_pool_array_rebuilding", arr); v != 0 {
		t.Errorf("rebuilt: dhpp_pool_array_rebuilding = %v, want 0", v)
	}
	if n := members("in_sync"); n != 4 {
		t.Errorf("rebuilt: %v members in_sync, want 4", n)
	}
	if e, _ := d.volumeHealth(volID); len(e) != 0 || len(d.storageHealth()) != 0 {
		t.Errorf("rebuilt: volume health %v, storage health %v; want none", e, d.storageHealth())
	}
	if abnormal, msg := d.volumeCondition(volID); abnormal || msg != "volume is healthy" {
		t.Errorf("rebuilt: legacy condition (%v, %q), want healthy", abnormal, msg)
	}
	if f := d.probeFailures("default"); f != failuresBefore {
		t.Errorf("probes failed during the failure and rebuild: %v failures, %v before", f, failuresBefore)
	}
	// Removing the failed disk and rebuilding onto the new one are no news;
	// the end of the degradation is.
	testdisk.WaitFor(t, "a PoolNotDegraded Node Event", func() bool {
		return d.eventReasons() == kube.ReasonPoolDegraded+","+kube.ReasonPoolNotDegraded
	})
	t.Logf("member failure to array optimal again: %s (rebuild started after %s)", time.Since(failAt).Round(time.Millisecond), addAt.Sub(failAt).Round(time.Millisecond))
}

// TestRAID10WriteEIOVM: writes under the pool fail with EIO (dm-flakey with
// error_writes between the RAID10 and XFS). The pool is fenced within
// period x failureThreshold + timeout with every effect: CreateVolume
// ResourceExhausted naming the pool and the probe error, GetCapacity 0,
// health RPCs INACCESSIBLE / STORAGE_UNREACHABLE, legacy condition abnormal,
// dhpp_pool_fenced 1, the Node label and PoolFenced Event; a published
// volume stays readable. The fault removed, the pool stays fenced (manual
// policy) while its probes pass again, until the unfence annotation: then
// Healthy, and new volumes work.
func TestRAID10WriteEIOVM(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: raidDisks, Timeout: 4 * time.Minute}) {
		return
	}
	vmLoopbackUp(t)
	md := vmRAID10(t)
	sectors := strings.TrimSpace(testdisk.Run(t, "blockdev", "--getsz", md))
	linear := "0 " + sectors + " linear " + md + " 0"
	// up 0 s, down 3600 s: every write fails from the moment it is loaded.
	failing := "0 " + sectors + " flakey " + md + " 0 0 3600 1 error_writes"
	testdisk.Run(t, "dmsetup", "create", "pool", "--table", linear)
	t.Cleanup(func() {
		if out, err := exec.Command("dmsetup", "remove", "pool").CombinedOutput(); err != nil {
			t.Errorf("dmsetup remove pool: %v: %s", err, out)
		}
	})
	load := func(table string) {
		t.Helper()
		// --nolockfs: freezing the filesystem would flush it, which
		// fails (and the suspend with it) while writes fail.
		testdisk.Run(t, "dmsetup", "suspend", "--nolockfs", "pool")
		testdisk.Run(t, "dmsetup", "reload", "pool", "--table", table)
		testdisk.Run(t, "dmsetup", "resume", "pool")
	}
	mnt, pool := vmPoolFS(t, "/dev/mapper/pool")
	hc := vmHealthConfig()
	bound := hc.Period*time.Duration(hc.FailureThreshold) + hc.Timeout
	d := startDriver(t, "eio-node", hc, node.PoolConfig{Name: "default", Path: pool, Backend: node.BackendAuto})
	ctx := context.Background()
	pl := map[string]string{"pool": "default"}

	// A published volume with data, as a running pod would have.
	volID, target := d.publishWithData(t, "pvc-running")
	d.checkHealthy(volID, "before the fault")
	// The array under the dm device is found, and it is fine.
	if v, ok := d.gauge("dhpp_pool_array_degraded_devices", map[string]string{"pool": "default", "array": "md0", "level": "raid10"}); !ok || v != 0 {
		t.Errorf("md0 under dm: dhpp_pool_array_degraded_devices = %v (present %v), want 0", v, ok)
	}

	// Settle the filesystem: freezing XFS writes back everything and
	// covers its log, so while writes fail the only writer is the probe
	// (whose in-place overwrites need no metadata with lazytime).
	testdisk.Run(t, "sync")
	testdisk.Run(t, "xfs_io", "-x", "-c", "freeze", "-c", "thaw", mnt)

	// The fault: every write under XFS fails with EIO.
	load(failing)
	faultAt := time.Now()
	// Poll with reads only (GetCapacity): a CreateVolume that slips in
	// before fencing would write metadata, and XFS shuts down on a failed
	// log write.
	var fencedAfter time.Duration
	for {
		if d.capacity() == 0 {
			fencedAfter = time.Since(faultAt)
			break
		}
		if time.Since(faultAt) > 10*bound {
			t.Fatalf("not fenced %s after the EIO fault (bound %s)", time.Since(faultAt), bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("dm-flakey error_writes (EIO) -> fenced (GetCapacity 0) after %s; bound period x failureThreshold + timeout = %s", fencedAfter.Round(time.Millisecond), bound)
	if fencedAfter > bound {
		t.Errorf("fenced after %s, want within %s", fencedAfter, bound)
	}

	_, createErr := d.create("pvc-while-fenced")
	if status.Code(createErr) != codes.ResourceExhausted {
		t.Fatalf("CreateVolume on the fenced pool: %v, want ResourceExhausted", createErr)
	}
	msg := status.Convert(createErr).Message()
	for _, want := range []string{`pool "default"`, "io_error", "input/output error", "last probe error"} {
		if !strings.Contains(msg, want) {
			t.Errorf("CreateVolume message %q lacks %q", msg, want)
		}
	}
	t.Logf("CreateVolume while fenced: %s", msg)

	checkFenced := func(stage string) {
		t.Helper()
		if c := d.capacity(); c != 0 {
			t.Errorf("%s: GetCapacity = %d, want 0", stage, c)
		}
		if v, _ := d.gauge("dhpp_pool_fenced", pl); v != 1 {
			t.Errorf("%s: dhpp_pool_fenced = %v, want 1", stage, v)
		}
		if v, _ := d.gauge("dhpp_pool_health_state", map[string]string{"pool": "default", "state": "Fenced"}); v != 1 {
			t.Errorf("%s: dhpp_pool_health_state{state=Fenced} = %v, want 1", stage, v)
		}
		if v, _ := d.gauge("dhpp_health_probe_failures_total", map[string]string{"pool": "default", "reason": "io_error"}); v < float64(hc.FailureThreshold) {
			t.Errorf("%s: io_error failures = %v, want >= %d", stage, v, hc.FailureThreshold)
		}
		// The array itself is fine: the errors come from above it.
		if v, _ := d.gauge("dhpp_pool_degraded", pl); v != 0 {
			t.Errorf("%s: dhpp_pool_degraded = %v, want 0", stage, v)
		}
		if e, m := d.volumeHealth(volID); fmt.Sprint(e) != "[INACCESSIBLE/PoolFenced]" || !strings.Contains(m, "input/output error") {
			t.Errorf("%s: volume health %v %q, want INACCESSIBLE/PoolFenced naming the error", stage, e, m)
		}
		if s := d.storageHealth(); fmt.Sprint(s) != "[STORAGE_UNREACHABLE/PoolFenced]" {
			t.Errorf("%s: storage health %v, want STORAGE_UNREACHABLE/PoolFenced", stage, s)
		}
		if abnormal, m := d.volumeCondition(volID); !abnormal || !strings.Contains(m, "fenced") {
			t.Errorf("%s: ControllerGetVolume condition (%v, %q), want abnormal", stage, abnormal, m)
		}
		st, err := d.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: volID, VolumePath: target})
		if err != nil {
			t.Fatal(err)
		}
		if abnormal, m := testdisk.LegacyCondition(t, st); !abnormal || !strings.Contains(m, "input/output error") {
			t.Errorf("%s: NodeGetVolumeStats condition (%v, %q), want abnormal naming the error", stage, abnormal, m)
		}
		// Fencing does not unmount: the running pod still reads its data.
		if got, err := os.ReadFile(filepath.Join(target, "db")); err != nil || !bytes.Equal(got, runningData) {
			t.Errorf("%s: published volume unreadable: %q, %v", stage, got, err)
		}
		n, err := d.kube.CoreV1().Nodes().Get(ctx, "eio-node", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Labels[kube.PoolLabelPrefix+"default"] != kube.PoolLabelFenced {
			t.Errorf("%s: node labels %v, want %s%s=%s", stage, n.Labels, kube.PoolLabelPrefix, "default", kube.PoolLabelFenced)
		}
	}
	testdisk.WaitFor(t, "fenced label on the Node", func() bool {
		n, _ := d.kube.CoreV1().Nodes().Get(ctx, "eio-node", metav1.GetOptions{})
		return n.Labels[kube.PoolLabelPrefix+"default"] == kube.PoolLabelFenced
	})
	checkFenced("fenced")

	// Remove the fault. The policy is manual unfence: the pool stays
	// fenced, but its probes pass again (the failure count stops growing,
	// so XFS survived the fault).
	load(linear)
	time.Sleep(hc.Period + hc.Timeout)
	failures := d.probeFailures("default")
	time.Sleep(3 * hc.Period)
	if f := d.probeFailures("default"); f != failures {
		t.Errorf("probes still fail after the fault was removed: %v failures, %v %s earlier", f, failures, 3*hc.Period)
	}
	checkFenced("fault removed, not yet unfenced")

	unfenceAt := time.Now()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"now"}}}`, kube.UnfenceAnnotationPrefix+"default")
	if _, err := d.kube.CoreV1().Nodes().Patch(ctx, "eio-node", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	testdisk.WaitFor(t, "CreateVolume to succeed after unfence", func() bool {
		_, err := d.create("pvc-after-unfence")
		return err == nil
	})
	t.Logf("unfence annotation -> CreateVolume succeeds after %s", time.Since(unfenceAt).Round(time.Millisecond))
	d.checkHealthy(volID, "unfenced")
	if v, _ := d.gauge("dhpp_pool_health_state", map[string]string{"pool": "default", "state": "Healthy"}); v != 1 {
		t.Errorf("unfenced: pool is not Healthy")
	}
	d.waitUnfencedOnNode(t, "eio-node")
	// The running pod's data survived, and the pool takes writes again.
	if got, err := os.ReadFile(filepath.Join(target, "db")); err != nil || !bytes.Equal(got, runningData) {
		t.Errorf("published volume after recovery: %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(target, "after"), runningData, 0o644); err != nil {
		t.Errorf("write into the published volume after recovery: %v", err)
	}
	testdisk.Run(t, "sync")
}
