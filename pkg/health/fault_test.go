package health

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

// Fault tests: real filesystems on loop devices, real faults. They need root
// (testdisk.RequireRoot skips locally, fails under CI=true). The subtests of
// one fault run in parallel, each on its own disk; the top-level tests run
// one at a time, because the throttle test moves the whole test process
// into a cgroup and counts the process's goroutines.

// faultConfig keeps the production timeout (1 s), so that a probe on a
// loaded 2-core machine does not time out by accident: 250 ms timed out
// under CI load (go test runs packages in parallel, next to VM and sanity
// tests). The harness probes every faultPeriod, not every Period.
func faultConfig(auto bool) Config {
	return Config{
		Period:           1 * time.Second,
		Timeout:          1 * time.Second,
		FailureThreshold: 3,
		SuccessThreshold: 1,
		UnfenceThreshold: 3,
		AutoUnfence:      auto,
		ProbeBytes:       1 << 20,
	}
}

// faultPeriod is the harness's time between probe starts: the tests count
// probes (FailureThreshold failures, UnfenceThreshold successes...), and
// waiting a production period for each made this package the slowest of
// the test suite. It is below the timeout, which Validate refuses in
// production; see withProbePeriod.
const faultPeriod = 200 * time.Millisecond

// fenceBound is the promise of the design: a fault is fenced within
// period×failureThreshold+timeout of happening. slack covers scheduling on
// a loaded machine and the callback hand-off.
func (h *harness) fenceBound() time.Duration {
	return h.period*time.Duration(h.m.cfg.FailureThreshold) + h.m.cfg.Timeout
}

const slack = 1 * time.Second

// harness runs a Monitor with one pool on a test disk and records state
// changes with their wall-clock time.
type harness struct {
	t       *testing.T
	m       *Monitor
	disk    *testdisk.Disk
	poolDir string
	probe   string
	period  time.Duration

	mu      sync.Mutex
	changes []change
	notify  chan struct{}
}

type change struct {
	at       time.Time
	old, new Status
}

func newHarness(t *testing.T, fstype string, size int64, cfg Config) *harness {
	t.Helper()
	d := testdisk.New(t, fstype, size)
	h := &harness{t: t, disk: d, poolDir: filepath.Join(d.Dir, "pool"), period: faultPeriod, notify: make(chan struct{}, 1)}
	h.probe = filepath.Join(h.poolDir, ".dhpp", "health")
	if err := os.Mkdir(h.poolDir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := NewMonitor(cfg, withProbePeriod(h.period))
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	if err := m.AddPool("p", h.probe); err != nil {
		t.Fatal(err)
	}
	m.OnChange(func(old, n Status) {
		h.mu.Lock()
		h.changes = append(h.changes, change{time.Now(), old, n})
		h.mu.Unlock()
		select {
		case h.notify <- struct{}{}:
		default:
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	// Registered after testdisk.New, so it runs before the disk teardown:
	// stop probing and let the last I/O finish, or the unmount is busy.
	t.Cleanup(func() {
		cancel()
		<-done
		deadline := time.Now().Add(10 * time.Second)
		for m.ioInFlight.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := m.ioInFlight.Load(); n > 0 {
			t.Errorf("%d probe I/O still in flight 10 s after stop", n)
		}
	})
	return h
}

// waitState waits until the pool is in state want and returns the time of
// the change that put it there (or now, if it already was).
func (h *harness) waitState(want State, within time.Duration) time.Time {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		h.mu.Lock()
		n := len(h.changes)
		var last change
		if n > 0 {
			last = h.changes[n-1]
		}
		h.mu.Unlock()
		if s, _ := h.m.Status("p"); s.State == want {
			if n > 0 && last.new.State == want {
				return last.at
			}
			return time.Now()
		}
		select {
		case <-h.notify:
		case <-time.After(time.Until(deadline)):
			s, _ := h.m.Status("p")
			h.t.Fatalf("pool not %s within %s; status %+v", want, within, s)
		}
	}
}

// waitSuccesses waits for n consecutive successful probes.
func (h *harness) waitSuccesses(n int, within time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		s, _ := h.m.Status("p")
		if s.ConsecutiveSuccesses >= n {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no %d consecutive successful probes within %s; status %+v", n, within, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// assertFencedInTime waits for Fenced and checks the time from fault to fence
// against the design bound.
func (h *harness) assertFencedInTime(fault time.Time, reasons ...Reason) {
	h.t.Helper()
	bound := h.fenceBound()
	at := h.waitState(Fenced, bound+10*time.Second)
	took := at.Sub(fault)
	s, _ := h.m.Status("p")
	h.t.Logf("fault -> Fenced in %s (bound %s + slack %s); reason %s: %s", took.Round(time.Millisecond),
		bound, slack, s.Reason, s.LastError)
	if took > bound+slack {
		h.t.Errorf("fenced %s after the fault, want <= %s", took, bound+slack)
	}
	for _, r := range reasons {
		if s.Reason == r {
			return
		}
	}
	h.t.Errorf("fenced with reason %q (%s), want one of %q", s.Reason, s.LastError, reasons)
}

// stayHealthy checks that the pool stays Healthy, without a single state
// change, for n successful probes counted from now (Unfence resets the
// count, so after it n successes are n probes).
func (h *harness) stayHealthy(n int) {
	h.t.Helper()
	h.mu.Lock()
	changes := len(h.changes)
	h.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, _ := h.m.Status("p")
		h.mu.Lock()
		var changed []string
		for _, c := range h.changes[changes:] {
			changed = append(changed, c.old.State.String()+"->"+c.new.State.String())
		}
		h.mu.Unlock()
		if s.State != Healthy || len(changed) > 0 {
			h.t.Fatalf("pool left Healthy (changes %q): %+v", changed, s)
		}
		if s.ConsecutiveSuccesses >= n {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no %d consecutive successful probes within 10s; status %+v", n, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFaultReadOnly: remount read-only -> Fenced with reason read_only within
// the bound; after remount rw the default (manual) policy keeps it fenced
// however many probes succeed, until Unfence.
func TestFaultReadOnly(t *testing.T) {
	for _, fstype := range []string{"ext4", "xfs", "btrfs"} {
		t.Run(fstype, func(t *testing.T) {
			t.Parallel()
			cfg := faultConfig(false)
			h := newHarness(t, fstype, testdisk.MinSize[fstype]+64<<20, cfg)
			h.waitSuccesses(2, 10*time.Second)

			h.disk.RemountRetrying(t, "ro")
			h.assertFencedInTime(time.Now(), ReasonReadOnly)

			h.disk.RemountRetrying(t, "rw")
			h.waitSuccesses(cfg.UnfenceThreshold+2, 10*time.Second)
			if fenced, s := h.m.Fenced("p"); !fenced {
				t.Fatalf("manual policy: pool unfenced itself after the fault was removed: %+v", s)
			}
			if err := h.m.Unfence("p"); err != nil {
				t.Fatal(err)
			}
			h.stayHealthy(cfg.FailureThreshold + 1)
		})
	}
}

// TestFaultMissing: the probe directory removed, or the filesystem lazily
// unmounted -> Fenced (missing). After an unmount the prober must not
// re-create the probe file on the root filesystem, even when unfenced.
func TestFaultMissing(t *testing.T) {
	tests := []struct {
		name  string
		fault func(h *harness) error
		// heal undoes the fault; nil means Unfence alone must heal it.
		heal func(h *harness) error
	}{
		{"probe dir removed", func(h *harness) error { return os.RemoveAll(filepath.Dir(h.probe)) }, nil},
		{"lazy unmount",
			func(h *harness) error { return unix.Unmount(h.disk.Dir, unix.MNT_DETACH) },
			func(h *harness) error {
				out, err := exec.Command("mount", h.disk.Device, h.disk.Dir).CombinedOutput()
				if err != nil {
					return fmt.Errorf("mount again: %w: %s", err, out)
				}
				return nil
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := faultConfig(false)
			h := newHarness(t, "ext4", 64<<20, cfg)
			h.waitSuccesses(2, 10*time.Second)

			if err := tc.fault(h); err != nil {
				t.Fatal(err)
			}
			h.assertFencedInTime(time.Now(), ReasonMissing)

			if tc.heal != nil {
				// Unfence while the disk is still gone: the next probe must
				// refuse to create the file on the root filesystem.
				if err := h.m.Unfence("p"); err != nil {
					t.Fatal(err)
				}
				h.assertFencedInTime(time.Now(), ReasonMissing)
				s, _ := h.m.Status("p")
				if !strings.Contains(s.LastError, "different device") {
					t.Errorf("last error %q does not explain the device check", s.LastError)
				}
				if _, err := os.Stat(h.disk.Dir + "/pool"); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("prober created the pool under the unmounted mount point (stat: %v)", err)
				}
				if err := tc.heal(h); err != nil {
					t.Fatal(err)
				}
				h.waitSuccesses(cfg.UnfenceThreshold+1, 10*time.Second)
				if fenced, _ := h.m.Fenced("p"); !fenced {
					t.Fatal("manual policy: unfenced without Unfence")
				}
			}
			if err := h.m.Unfence("p"); err != nil {
				t.Fatal(err)
			}
			h.stayHealthy(cfg.FailureThreshold + 1)
			if _, err := os.Stat(h.probe); err != nil {
				t.Errorf("probe file after recovery: %v", err)
			}
		})
	}
}

// TestFaultDiskFull: a filesystem filled with other data is not a failed
// disk; the preallocated probe file keeps working.
func TestFaultDiskFull(t *testing.T) {
	for _, fstype := range []string{"ext4", "xfs", "btrfs"} {
		t.Run(fstype, func(t *testing.T) {
			t.Parallel()
			cfg := faultConfig(false)
			h := newHarness(t, fstype, testdisk.MinSize[fstype]+64<<20, cfg)
			h.waitSuccesses(2, 10*time.Second)

			filled := fill(t, filepath.Join(h.disk.Dir, "filler"))
			// Prove the filesystem is full: a new small file cannot be written.
			if err := os.WriteFile(filepath.Join(h.disk.Dir, "one-more"), make([]byte, 64<<10), 0o600); !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("filesystem not full after writing %d MiB: write of 64 KiB gave %v", filled>>20, err)
			}
			t.Logf("filled %d MiB of other data; ENOSPC confirmed", filled>>20)
			before, _ := h.m.Status("p")
			h.waitSuccesses(before.ConsecutiveSuccesses+cfg.FailureThreshold+2, 10*time.Second)
			if s, _ := h.m.Status("p"); s.State != Healthy {
				t.Fatalf("full disk changed the pool state: %+v", s)
			}
			for _, r := range Reasons {
				if n := testutil.ToFloat64(h.m.metrics.failures.WithLabelValues("p", string(r))); n > 0 {
					t.Errorf("%v probe failures with reason %s on a full disk", n, r)
				}
			}
		})
	}
}

// fill writes files under dir until ENOSPC and returns the bytes the
// filesystem lost (statfs), since a failed fallocate may keep part of its
// allocation: fallocate in halving chunks (fast), then 4 KiB writes.
func fill(t *testing.T, dir string) int64 {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	free := func() int64 {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}
	before := free()
	i := 0
	for chunk := int64(64 << 20); chunk >= 4096; chunk /= 2 {
		for {
			f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%04d", i)))
			i++
			if errors.Is(err, unix.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			err = unix.Fallocate(int(f.Fd()), 0, 0, chunk)
			f.Close()
			if errors.Is(err, unix.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatalf("fallocate: %v", err)
			}
		}
	}
	if f, err := os.Create(filepath.Join(dir, "tail")); err == nil {
		buf := make([]byte, 4096)
		for {
			if _, err := f.Write(buf); err != nil {
				break
			}
		}
		f.Sync()
		f.Close()
	}
	// syncfs, not sync: the disks of parallel tests are none of this
	// test's business.
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		t.Fatalf("syncfs %s: %v", dir, err)
	}
	return before - free()
}

// blkioRoot is the cgroup v1 blkio hierarchy (see notes/machine-storage.md).
const blkioRoot = "/sys/fs/cgroup/blkio"

// throttle puts the whole test process into a new blkio cgroup whose writes
// to dev are limited to bps bytes/s. The returned func (also registered as
// cleanup, idempotent) lifts the limit, moves the process back and removes
// the group.
func throttle(t *testing.T, dev string, bps int) func() {
	t.Helper()
	if _, err := os.Stat(filepath.Join(blkioRoot, "blkio.throttle.write_bps_device")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cgroup v1 blkio throttling not available: %v", err)
		}
		t.Skipf("cgroup v1 blkio throttling not available: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	majMin := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	orig := ownBlkioCgroup(t)
	grp := filepath.Join(blkioRoot, fmt.Sprintf("dhpp-health-test-%d", os.Getpid()))
	if err := os.Mkdir(grp, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(file, val string) error {
		return os.WriteFile(filepath.Join(file), []byte(val), 0)
	}
	var once sync.Once
	undo := func() {
		once.Do(func() {
			// A very high limit first: it re-times bios already queued under
			// the old limit, then the rule is deleted.
			if err := write(filepath.Join(grp, "blkio.throttle.write_bps_device"), majMin+" 1099511627776"); err != nil {
				t.Errorf("raise throttle: %v", err)
			}
			if err := write(filepath.Join(grp, "blkio.throttle.write_bps_device"), majMin+" 0"); err != nil {
				t.Errorf("remove throttle: %v", err)
			}
			if err := write(filepath.Join(orig, "cgroup.procs"), fmt.Sprint(os.Getpid())); err != nil {
				t.Errorf("move test process back to %s: %v", orig, err)
			}
			var err error
			for i := 0; i < 100; i++ {
				if err = unix.Rmdir(grp); err == nil || errors.Is(err, unix.ENOENT) {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			t.Errorf("remove cgroup %s: %v", grp, err)
		})
	}
	t.Cleanup(undo)
	if err := write(filepath.Join(grp, "blkio.throttle.write_bps_device"), fmt.Sprintf("%s %d", majMin, bps)); err != nil {
		t.Fatalf("set throttle: %v", err)
	}
	if err := write(filepath.Join(grp, "cgroup.procs"), fmt.Sprint(os.Getpid())); err != nil {
		t.Fatalf("move test process into %s: %v", grp, err)
	}
	return undo
}

// ownBlkioCgroup is the directory of the blkio cgroup the process is in.
func ownBlkioCgroup(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && strings.Contains(","+parts[1]+",", ",blkio,") {
			return filepath.Join(blkioRoot, parts[2])
		}
	}
	t.Fatalf("no blkio cgroup in /proc/self/cgroup:\n%s", b)
	return ""
}

// TestFaultSlowDisk: writes throttled to 4 KiB/s make a 1 MiB probe hang
// for minutes -> Fenced by timeout within the bound; while the I/O stays
// stuck no goroutines pile up and no new I/O starts; throttle removed ->
// auto-unfence after UnfenceThreshold successes.
func TestFaultSlowDisk(t *testing.T) {
	cfg := faultConfig(true)
	h := newHarness(t, "ext4", 64<<20, cfg)
	h.waitSuccesses(2, 10*time.Second)
	baseline := runtime.NumGoroutine()

	undo := throttle(t, h.disk.Device, 4096)
	h.assertFencedInTime(time.Now(), ReasonTimeout, ReasonStuck)
	if n := testutil.ToFloat64(h.m.metrics.failures.WithLabelValues("p", string(ReasonTimeout))); n < 1 {
		t.Errorf("no timeout failure counted")
	}

	// Many periods with the I/O stuck in the kernel.
	maxG, maxIO := 0, int64(0)
	stuckBefore := testutil.ToFloat64(h.m.metrics.failures.WithLabelValues("p", string(ReasonStuck)))
	periods := 20
	for end := time.Now().Add(time.Duration(periods) * h.period); time.Now().Before(end); {
		maxG = max(maxG, runtime.NumGoroutine())
		maxIO = max(maxIO, h.m.ioInFlight.Load())
		time.Sleep(5 * time.Millisecond)
	}
	stuck := testutil.ToFloat64(h.m.metrics.failures.WithLabelValues("p", string(ReasonStuck))) - stuckBefore
	t.Logf("over %d periods stuck: goroutines baseline %d max %d; I/O in flight max %d; %v stuck failures",
		periods, baseline, maxG, maxIO, stuck)
	if maxIO != 1 {
		t.Errorf("I/O in flight max %d, want exactly 1 (one stuck probe, none started after it)", maxIO)
	}
	if maxG > baseline+2 {
		t.Errorf("goroutines grew from %d to %d while the disk was stuck", baseline, maxG)
	}
	// Each tick counts one; a fifth may be lost to a loaded machine (a
	// ticker drops the ticks its reader is late for).
	if stuck < float64(periods*4/5) {
		t.Errorf("%v stuck failures over %d periods; each tick must count one", stuck, periods)
	}
	if s, _ := h.m.Status("p"); s.State != Fenced {
		t.Errorf("pool left Fenced while stuck: %+v", s)
	}

	undo()
	healed := time.Now()
	at := h.waitState(Healthy, 30*time.Second)
	t.Logf("throttle removed -> Healthy (auto-unfence after %d successes) in %s",
		cfg.UnfenceThreshold, at.Sub(healed).Round(time.Millisecond))
}
