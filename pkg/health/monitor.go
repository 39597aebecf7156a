package health

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// ErrUnknownPool is returned (wrapped) for a pool name that was never added.
var ErrUnknownPool = errors.New("unknown pool")

// prober is one pool's probe I/O; fileProber in production, fakes in tests.
type prober interface {
	// probe does one full check and returns nil if the pool is healthy.
	// It may block for as long as the kernel does.
	probe() error
	// allowRecreate permits the next probe to re-create a missing probe file.
	allowRecreate()
}

// Monitor probes all pools of a node and keeps their fencing state.
// Its methods are safe for concurrent use.
type Monitor struct {
	cfg Config
	// period is the time between probe starts: cfg.Period, or what a test
	// set with withProbePeriod.
	period  time.Duration
	now     func() time.Time
	metrics *metrics

	mu      sync.RWMutex
	pools   map[string]*pool
	order   []string
	running bool

	cbMu      sync.RWMutex
	callbacks []func(old, new Status)

	// ioInFlight counts probe I/O goroutines, stuck ones included; tests
	// assert it never exceeds one per pool.
	ioInFlight atomic.Int64
}

type pool struct {
	name   string
	prober prober
	// status is guarded by Monitor.mu.
	status Status
	// seq serialises status changes of this pool with their callbacks, so
	// callbacks see the changes in the order they happened.
	seq sync.Mutex

	// pending and pendingSince belong to the pool's loop goroutine: the
	// result channel of the outstanding I/O, nil if none.
	pending      chan probeOutcome
	pendingSince time.Time
}

type probeOutcome struct {
	err      error
	duration time.Duration
}

// Option configures a Monitor.
type Option func(*Monitor)

// WithClock sets the clock used for Status times (tests).
func WithClock(now func() time.Time) Option {
	return func(m *Monitor) { m.now = now }
}

// withProbePeriod starts a probe every d rather than every cfg.Period, even
// if d is below cfg.Timeout, which Validate refuses. Only tests use it: the
// fault tests on loop disks keep the production timeout, which a loaded CI
// machine needs, but need not wait a production period between probes. The
// Monitor does not depend on Period >= Timeout: a probe slower than the
// period delays the next tick, it never overlaps it.
func withProbePeriod(d time.Duration) Option {
	return func(m *Monitor) { m.period = d }
}

// NewMonitor returns a Monitor for cfg, which must be valid.
func NewMonitor(cfg Config, opts ...Option) (*Monitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Monitor{
		cfg:     cfg,
		period:  cfg.Period,
		now:     time.Now,
		metrics: newMetrics(),
		pools:   map[string]*pool{},
	}
	for _, o := range opts {
		o(m)
	}
	return m, nil
}

// AddPool adds a pool whose probe file is probeFile (the driver uses
// <pool>/.dhpp/health). The file is created on the first probe; a pool whose
// disk is already broken is added anyway and fenced by its probes. Pools must
// be added before Run.
func (m *Monitor) AddPool(name, probeFile string) error {
	if name == "" {
		return errors.New("add pool: empty name")
	}
	if !filepath.IsAbs(probeFile) {
		return fmt.Errorf("add pool %q: probe file %q is not an absolute path", name, probeFile)
	}
	fp, err := newFileProber(filepath.Clean(probeFile), m.cfg.ProbeBytes)
	if err != nil {
		return fmt.Errorf("add pool %q: %w", name, err)
	}
	return m.addPool(name, fp)
}

func (m *Monitor) addPool(name string, pr prober) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running {
		return fmt.Errorf("add pool %q: monitor is already running", name)
	}
	if _, ok := m.pools[name]; ok {
		return fmt.Errorf("add pool %q: already added", name)
	}
	m.pools[name] = &pool{
		name:   name,
		prober: pr,
		status: Status{Pool: name, State: Healthy, Since: m.now()},
	}
	m.order = append(m.order, name)
	m.metrics.initPool(name)
	m.metrics.setState(name, Healthy)
	return nil
}

// Pools returns the pool names in the order they were added.
func (m *Monitor) Pools() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]string(nil), m.order...)
}

// Run probes every pool each Period until ctx is done. It runs one goroutine
// per pool, plus at most one probe I/O goroutine per pool. It returns when the
// pool goroutines have stopped; an I/O goroutine stuck in the kernel is not
// waited for (it ends when the kernel returns). It never fails.
func (m *Monitor) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		klog.ErrorS(nil, "Health monitor Run called twice; ignoring the second call")
		return nil
	}
	m.running = true
	pools := make([]*pool, 0, len(m.order))
	for _, n := range m.order {
		pools = append(pools, m.pools[n])
	}
	m.mu.Unlock()

	klog.InfoS("Starting pool health probes", "pools", len(pools), "period", m.period,
		"timeout", m.cfg.Timeout, "failureThreshold", m.cfg.FailureThreshold,
		"autoUnfence", m.cfg.AutoUnfence, "unfenceThreshold", m.cfg.UnfenceThreshold)
	var wg sync.WaitGroup
	for _, p := range pools {
		wg.Go(func() { m.runPool(ctx, p) })
	}
	wg.Wait()
	return nil
}

func (m *Monitor) runPool(ctx context.Context, p *pool) {
	t := time.NewTicker(m.period)
	defer t.Stop()
	// Probe at once, so a pool that is broken at start is fenced within
	// the same bound as one that breaks later.
	m.probeOnce(ctx, p)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.probeOnce(ctx, p)
		}
	}
}

// probeOnce runs one probe of p and records its result. It returns after at
// most Timeout, whatever the I/O does. Only p's loop goroutine calls it.
func (m *Monitor) probeOnce(ctx context.Context, p *pool) {
	start := m.now()
	if p.pending != nil {
		select {
		case late := <-p.pending:
			// The I/O that timed out earlier has returned; its result is
			// stale, so only log it and probe afresh.
			klog.V(2).InfoS("Late probe result discarded", "pool", p.name, "duration", late.duration, "err", late.err)
			p.pending = nil
		default:
			m.record(p, Result{At: start, Reason: ReasonStuck,
				Err: fmt.Sprintf("previous probe I/O still outstanding after %s; no new I/O started",
					start.Sub(p.pendingSince).Round(time.Millisecond))}, false)
			return
		}
	}
	done := make(chan probeOutcome, 1) // buffered: a late sender never blocks
	p.pending, p.pendingSince = done, start
	m.ioInFlight.Add(1)
	go func() {
		defer m.ioInFlight.Add(-1)
		t0 := time.Now()
		err := p.prober.probe()
		done <- probeOutcome{err: err, duration: time.Since(t0)}
	}()

	timer := time.NewTimer(m.cfg.Timeout)
	defer timer.Stop()
	select {
	case out := <-done:
		p.pending = nil
		r := Result{At: start, Duration: out.duration}
		switch {
		case out.err != nil:
			r.Reason, r.Err = classify(out.err), out.err.Error()
		case out.duration > m.cfg.Timeout:
			// Finished, but too slowly; the select may pick this branch
			// over the timer when both are ready.
			r.Reason = ReasonTimeout
			r.Err = fmt.Sprintf("probe took %s, timeout %s", out.duration.Round(time.Millisecond), m.cfg.Timeout)
		}
		m.record(p, r, true)
	case <-timer.C:
		m.record(p, Result{At: start, Duration: m.cfg.Timeout, Reason: ReasonTimeout,
			Err: fmt.Sprintf("probe I/O did not finish within %s", m.cfg.Timeout)}, true)
	case <-ctx.Done():
	}
}

// record applies one probe result to p. observed says whether the probe did
// I/O whose duration belongs in the histogram.
func (m *Monitor) record(p *pool, r Result, observed bool) {
	if observed {
		m.metrics.observeDuration(p.name, r.Duration)
	}
	if !r.OK() {
		m.metrics.countFailure(p.name, r.Reason)
		klog.V(2).InfoS("Pool health probe failed", "pool", p.name, "reason", r.Reason, "err", r.Err)
	}
	m.update(p, func(s Status) Status { return transition(m.cfg, s, r) })
}

// update changes p's status with f, then updates metrics, logs and calls the
// callbacks if the state changed.
func (m *Monitor) update(p *pool, f func(Status) Status) {
	p.seq.Lock()
	defer p.seq.Unlock()
	m.mu.Lock()
	old := p.status
	n := f(old)
	p.status = n
	m.mu.Unlock()
	if old.State == n.State {
		return
	}
	m.metrics.setState(p.name, n.State)
	kv := []any{"pool", p.name, "from", old.State, "to", n.State, "reason", n.Reason, "lastError", n.LastError,
		"consecutiveFailures", n.ConsecutiveFailures, "consecutiveSuccesses", n.ConsecutiveSuccesses}
	if n.State == Fenced {
		klog.ErrorS(nil, "Pool fenced: no new volumes will be placed on it", kv...)
	} else {
		klog.InfoS("Pool health state changed", kv...)
	}
	m.cbMu.RLock()
	cbs := m.callbacks
	m.cbMu.RUnlock()
	for _, cb := range cbs {
		cb(old, n)
	}
}

func (m *Monitor) pool(name string) (*pool, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	p, ok := m.pools[name]
	if !ok {
		return nil, fmt.Errorf("pool %q: %w", name, ErrUnknownPool)
	}
	return p, nil
}

// Status returns the current status of a pool.
func (m *Monitor) Status(pool string) (Status, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	p, ok := m.pools[pool]
	if !ok {
		return Status{}, false
	}
	return p.status, true
}

// Fenced reports whether pool takes no new volumes, with its status for the
// error message. An unknown pool is not fenced (the caller reports it as
// unknown on its own terms).
func (m *Monitor) Fenced(pool string) (bool, Status) {
	s, ok := m.Status(pool)
	return ok && s.State == Fenced, s
}

// PoolFenced reports whether pool is fenced, with a reason that names the
// state, the failure reason and the last probe error (Status.Describe): it
// ends up in CreateVolume's ResourceExhausted message and in the volume
// conditions, so whoever reads a Pending PVC's events learns why without
// node access. It is the driver's input on fencing (driver.PoolHealth).
func (m *Monitor) PoolFenced(pool string) (bool, string) {
	fenced, s := m.Fenced(pool)
	if !fenced {
		return false, ""
	}
	return true, s.Describe()
}

// Unfence returns a pool to Healthy, e.g. after an operator replaced the
// disk. The probe continues: a still-broken disk is fenced again after
// FailureThreshold failures. If the probe file is missing, the next probe
// re-creates it, provided its directory is still on the same device.
// Unfencing a pool that is not fenced is a no-op, so a controller may repeat it.
func (m *Monitor) Unfence(pool string) error {
	p, err := m.pool(pool)
	if err != nil {
		return fmt.Errorf("unfence: %w", err)
	}
	if s, _ := m.Status(pool); s.State != Fenced {
		return nil
	}
	p.prober.allowRecreate()
	now := m.now()
	m.update(p, func(s Status) Status {
		if s.State != Fenced {
			return s
		}
		klog.InfoS("Pool unfenced manually", "pool", pool, "wasReason", s.Reason, "consecutiveSuccesses", s.ConsecutiveSuccesses)
		return unfenced(s, now)
	})
	return nil
}

// Fence fences a pool by hand (maintenance, or restoring the fenced state
// recorded in the node label after a driver restart). Only Unfence lifts it.
func (m *Monitor) Fence(pool, message string) error {
	p, err := m.pool(pool)
	if err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	now := m.now()
	m.update(p, func(s Status) Status { return fenced(s, message, now) })
	return nil
}

// OnChange registers f to be called after every state change of any pool,
// with the status before and after. Calls for one pool are sequential and in
// order; f runs on the probing goroutine (or the caller of Unfence/Fence),
// so it must not block: hand slow work such as API calls to a queue.
func (m *Monitor) OnChange(f func(old, new Status)) {
	m.cbMu.Lock()
	defer m.cbMu.Unlock()
	m.callbacks = append(m.callbacks, f)
}
