package health

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

// fakeProber returns queued errors, or blocks while hang is set, so the
// Monitor's timing logic can be tested without a disk.
type fakeProber struct {
	mu        sync.Mutex
	errs      []error // consumed one per probe; nil entries succeed
	hang      chan struct{}
	calls     atomic.Int64
	recreates atomic.Int64
}

func (f *fakeProber) probe() error {
	f.calls.Add(1)
	f.mu.Lock()
	hang := f.hang
	var err error
	if len(f.errs) > 0 {
		err, f.errs = f.errs[0], f.errs[1:]
	}
	f.mu.Unlock()
	if hang != nil {
		<-hang
	}
	return err
}

func (f *fakeProber) allowRecreate() { f.recreates.Add(1) }

func (f *fakeProber) set(hang chan struct{}, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hang, f.errs = hang, errs
}

func testConfig() Config {
	c := DefaultConfig()
	c.Period = 50 * time.Millisecond
	c.Timeout = 30 * time.Millisecond
	c.UnfenceThreshold = 2
	return c
}

func newTestMonitor(t *testing.T, cfg Config) (*Monitor, *pool, *fakeProber) {
	t.Helper()
	m, err := NewMonitor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeProber{}
	if err := m.addPool("p1", f); err != nil {
		t.Fatal(err)
	}
	return m, m.pools["p1"], f
}

// TestMonitorHangingIO: a probe I/O that never returns costs one timeout,
// then "stuck" failures without new I/O; at most one I/O goroutine exists;
// when it finally returns, probing resumes.
func TestMonitorHangingIO(t *testing.T) {
	m, p, f := newTestMonitor(t, testConfig())
	ctx := context.Background()
	before := runtime.NumGoroutine()
	release := make(chan struct{})
	f.set(release)

	start := time.Now()
	m.probeOnce(ctx, p)
	if d := time.Since(start); d < m.cfg.Timeout || d > m.cfg.Timeout+time.Second {
		t.Errorf("hanging probe returned after %s, want about the timeout %s", d, m.cfg.Timeout)
	}
	for i := 0; i < 50; i++ {
		start := time.Now()
		m.probeOnce(ctx, p)
		if d := time.Since(start); d > m.cfg.Timeout/2 {
			t.Errorf("probe %d while stuck took %s; it must not wait for I/O", i, d)
		}
		if n := m.ioInFlight.Load(); n != 1 {
			t.Fatalf("%d probe I/Os in flight, want exactly 1", n)
		}
	}
	if after := runtime.NumGoroutine(); after > before+1 {
		t.Errorf("goroutines grew from %d to %d over 51 probes of a hung disk", before, after)
	}
	if c := f.calls.Load(); c != 1 {
		t.Errorf("prober called %d times while stuck, want 1", c)
	}
	s, _ := m.Status("p1")
	if s.State != Fenced || s.Reason != ReasonStuck || s.ConsecutiveFailures != 51 {
		t.Errorf("status after hang = %+v, want Fenced/stuck/51 failures", s)
	}
	if got := testutil.ToFloat64(m.metrics.failures.WithLabelValues("p1", "timeout")); got != 1 {
		t.Errorf("timeout failures = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.metrics.failures.WithLabelValues("p1", "stuck")); got != 50 {
		t.Errorf("stuck failures = %v, want 50", got)
	}

	// The disk comes back: the late result is discarded, new I/O starts.
	f.set(nil)
	close(release)
	testdisk.WaitFor(t, "the probe I/O to finish", func() bool { return m.ioInFlight.Load() == 0 })
	m.probeOnce(ctx, p)
	if c := f.calls.Load(); c != 2 {
		t.Errorf("prober called %d times after release, want 2", c)
	}
	s, _ = m.Status("p1")
	if s.State != Fenced || s.ConsecutiveSuccesses != 1 || s.ConsecutiveFailures != 0 {
		t.Errorf("status after recovery probe = %+v, want still Fenced (manual policy) with 1 success", s)
	}
}

// TestMonitorRun drives Run with a failing then healthy fake and checks the
// callbacks see every state change in order, and that Run stops with ctx.
func TestMonitorRun(t *testing.T) {
	cfg := testConfig()
	cfg.AutoUnfence = true
	m, _, f := newTestMonitor(t, cfg)
	eio := &osErr{unix.EIO}
	f.set(nil, eio, eio, eio, nil, nil, nil)

	var mu sync.Mutex
	var changes []string
	m.OnChange(func(old, n Status) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, old.State.String()+"->"+n.State.String()+"("+string(n.Reason)+")")
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	testdisk.WaitFor(t, "three successful probes", func() bool { s, _ := m.Status("p1"); return s.ConsecutiveSuccesses >= 3 })
	cancel()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Run did not return after cancel")
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"Healthy->Failing(io_error)", "Failing->Fenced(io_error)", "Fenced->Healthy()"}
	if len(changes) != len(want) {
		t.Fatalf("changes = %q, want %q", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Errorf("change %d = %q, want %q", i, changes[i], want[i])
		}
	}
	if err := m.AddPool("late", "/tmp/x"); err == nil {
		t.Error("AddPool after Run succeeded, want error")
	}
}

type osErr struct{ errno unix.Errno }

func (e *osErr) Error() string { return "pwrite: " + e.errno.Error() }
func (e *osErr) Unwrap() error { return e.errno }

func TestMonitorFenceUnfence(t *testing.T) {
	cfg := testConfig()
	cfg.AutoUnfence = true
	m, p, f := newTestMonitor(t, cfg)
	ctx := context.Background()
	var changes atomic.Int64
	m.OnChange(func(_, _ Status) { changes.Add(1) })

	if err := m.Unfence("p1"); err != nil {
		t.Fatalf("Unfence of a healthy pool: %v", err)
	}
	if changes.Load() != 0 || f.recreates.Load() != 0 {
		t.Errorf("Unfence of a healthy pool changed something")
	}
	if err := m.Fence("p1", "disk swap at 14:00"); err != nil {
		t.Fatal(err)
	}
	if fenced, s := m.Fenced("p1"); !fenced || s.Reason != ReasonManual || s.LastError != "disk swap at 14:00" {
		t.Errorf("after Fence: fenced=%v status %+v", fenced, s)
	}
	for i := 0; i < 2*cfg.UnfenceThreshold; i++ {
		m.probeOnce(ctx, p)
	}
	if fenced, s := m.Fenced("p1"); !fenced {
		t.Errorf("manual fence lifted by %d successful probes with AutoUnfence: %+v", 2*cfg.UnfenceThreshold, s)
	}
	if err := m.Unfence("p1"); err != nil {
		t.Fatal(err)
	}
	if fenced, s := m.Fenced("p1"); fenced || s.State != Healthy {
		t.Errorf("after Unfence: %+v", s)
	}
	if f.recreates.Load() != 1 {
		t.Errorf("Unfence did not allow re-creating the probe file")
	}
	if changes.Load() != 2 {
		t.Errorf("%d OnChange calls, want 2 (fence, unfence)", changes.Load())
	}
	for _, call := range []func() error{
		func() error { return m.Unfence("nope") },
		func() error { return m.Fence("nope", "x") },
	} {
		if err := call(); !errors.Is(err, ErrUnknownPool) {
			t.Errorf("unknown pool: err %v, want ErrUnknownPool", err)
		}
	}
	if fenced, _ := m.Fenced("nope"); fenced {
		t.Error("unknown pool reported fenced")
	}
	if _, ok := m.Status("nope"); ok {
		t.Error("Status of unknown pool ok")
	}
}

func TestAddPoolErrors(t *testing.T) {
	m, err := NewMonitor(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.AddPool("a", "/x/.dhpp/health"); err != nil {
		t.Fatalf("valid AddPool: %v", err)
	}
	tests := []struct{ name, pool, file string }{
		{"empty name", "", "/y/.dhpp/health"},
		{"relative path", "b", "y/.dhpp/health"},
		{"duplicate", "a", "/z/.dhpp/health"},
	}
	for _, tc := range tests {
		if err := m.AddPool(tc.pool, tc.file); err == nil {
			t.Errorf("%s: AddPool(%q, %q) succeeded", tc.name, tc.pool, tc.file)
		}
	}
	if got := m.Pools(); len(got) != 1 || got[0] != "a" {
		t.Errorf("Pools() = %q", got)
	}
	if _, err := NewMonitor(Config{}); err == nil {
		t.Error("NewMonitor accepted an invalid config")
	}
}

func TestWithClock(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 8, 0, 0, 0, time.UTC)
	now := t0
	m, err := NewMonitor(testConfig(), WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.addPool("p1", &fakeProber{}); err != nil {
		t.Fatal(err)
	}
	now = t0.Add(time.Hour)
	if err := m.Fence("p1", "maintenance"); err != nil {
		t.Fatal(err)
	}
	if s, _ := m.Status("p1"); s.Since != now {
		t.Errorf("Since = %v, want the injected clock's %v", s.Since, now)
	}
	now = t0.Add(2 * time.Hour)
	m.probeOnce(context.Background(), m.pools["p1"])
	if s, _ := m.Status("p1"); s.LastProbe != now {
		t.Errorf("LastProbe = %v, want %v", s.LastProbe, now)
	}
}
