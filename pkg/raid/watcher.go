package raid

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Watcher re-reads the md arrays under every pool each period, logs
// when their state changes and answers, from its last reading, whether a
// pool is degraded (for the CSI health RPCs) and what its arrays look like
// (for /metrics). A degraded array keeps serving I/O, so degradation is
// reported, never fenced: fencing is the write probe's business.
//
// Polling sysfs costs a few small file reads per pool and period; reading
// it on every health RPC instead would cost that per volume.
type Watcher struct {
	find   func(path string) ([]Array, error)
	pools  []Pool
	period time.Duration

	mu    sync.RWMutex
	state map[string]arrayState
	// notify hears of changes in a pool's degradation (OnDegradation).
	notify func(pool string, degraded bool, detail string)
}

// Pool is a pool to watch: its name and directory.
type Pool struct{ Name, Path string }

// arrayState is one pool's last reading. After a failed read the arrays of
// the last successful one are kept: a degradation must not vanish from
// the reports because sysfs could not be read once.
type arrayState struct {
	arrays []Array
	err    string
}

var _ Source = (*Watcher)(nil)

// NewWatcher returns a Watcher of pools that reads them with find (a
// Finder's Arrays on a real system) every period once it runs.
func NewWatcher(pools []Pool, period time.Duration, find func(path string) ([]Array, error)) *Watcher {
	return &Watcher{find: find, pools: pools, period: period, state: map[string]arrayState{}}
}

// Run checks every period until ctx is done; it never fails.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.Check()
		}
	}
}

// Check reads every pool's arrays once, logs what changed and tells
// notify when a pool's degradation changed.
func (w *Watcher) Check() {
	for _, p := range w.pools {
		arrays, err := w.find(p.Path)
		w.mu.Lock()
		old, seen := w.state[p.Name]
		n := arrayState{arrays: arrays}
		if err != nil {
			n = arrayState{arrays: old.arrays, err: err.Error()}
		}
		w.state[p.Name] = n
		notify := w.notify
		w.mu.Unlock()
		logArrayChange(p, old, n, seen)
		if notify != nil && degradationKey(old.arrays) != degradationKey(n.arrays) {
			if d := degradedArrays(n.arrays); d != "" {
				notify(p.Name, true, d)
			} else {
				notify(p.Name, false, describeArrays(n.arrays))
			}
		}
	}
}

// OnDegradation registers f to hear, on the watcher's goroutine, when a
// pool's arrays become degraded, lose or regain a member slot (another
// disk fails, a rebuild completes) or regain full redundancy
// (degradationKey). f is called at once for every pool degraded now, so a
// restarted driver reports a degradation that is still there. f must not
// block.
func (w *Watcher) OnDegradation(f func(pool string, degraded bool, detail string)) {
	type degraded struct{ pool, detail string }
	var now []degraded
	w.mu.Lock()
	w.notify = f
	for _, p := range w.pools {
		if d := degradedArrays(w.state[p.Name].arrays); d != "" {
			now = append(now, degraded{p.Name, d})
		}
	}
	w.mu.Unlock()
	for _, d := range now {
		f(d.pool, true, d.detail)
	}
}

// logArrayChange logs a pool's array state when it differs from the last
// reading.
func logArrayChange(p Pool, old, n arrayState, seen bool) {
	msg, isErr := arrayChange(old, n, seen)
	switch {
	case msg == "":
	case n.err != "":
		klog.ErrorS(nil, msg, "pool", p.Name, "path", p.Path, "err", n.err)
	case isErr:
		klog.ErrorS(nil, msg, "pool", p.Name, "path", p.Path, "arrays", describeArrays(n.arrays))
	default:
		klog.InfoS(msg, "pool", p.Name, "path", p.Path, "arrays", describeArrays(n.arrays))
	}
}

// arrayChange is the log message for a change from old to n ("" if there
// is nothing new to say): a degradation is an error (an operator should
// replace a disk), anything else (first sighting, rebuild progress, back
// to optimal) is information. seen is false on the first reading.
func arrayChange(old, n arrayState, seen bool) (msg string, isErr bool) {
	if n.err != "" {
		if n.err == old.err {
			return "", false
		}
		return "Cannot read the RAID state under the pool; reporting the last known state", true
	}
	if seen && old.err == "" && changeKey(n.arrays) == changeKey(old.arrays) {
		return "", false
	}
	switch {
	case degradedArrays(n.arrays) != "":
		return "RAID array under the pool is degraded: the pool keeps serving and taking volumes, but another disk failure may lose its data; replace the failed disk", true
	case degradedArrays(old.arrays) != "":
		return "RAID array under the pool is no longer degraded", false
	case len(n.arrays) > 0:
		return "RAID arrays under the pool", false
	case seen && len(old.arrays) > 0:
		return "The pool is no longer on an md array", false
	}
	return "", false
}

// changeKey is what is worth a log line about arrays: everything but the
// array_state flips between clean and active that md makes around every
// burst of writes.
func changeKey(arrays []Array) string {
	s := make([]string, len(arrays))
	for i, a := range arrays {
		switch a.State {
		case "clean", "active", "active-idle", "write-pending":
			a.State = "in use"
		}
		s[i] = a.String()
	}
	return strings.Join(s, "; ")
}

func describeArrays(arrays []Array) string {
	s := make([]string, len(arrays))
	for i, a := range arrays {
		s[i] = a.String()
	}
	return strings.Join(s, "; ")
}

// degradationKey identifies how far arrays are degraded ("" if not at
// all): which arrays, how many member slots lack a working device, whether
// one is broken. md counts a failed member as missing at once, so a second
// failure changes the key, while removing a failed member, adding a
// replacement and rebuild progress do not, until the rebuild completes.
func degradationKey(arrays []Array) string {
	var s []string
	for _, a := range arrays {
		if a.IsDegraded() {
			s = append(s, fmt.Sprintf("%s/%d/%t", a.Name, a.Degraded, a.State == "broken"))
		}
	}
	return strings.Join(s, ";")
}

// degradedArrays describes the degraded ones among arrays, "" if none.
func degradedArrays(arrays []Array) string {
	var s []string
	for _, a := range arrays {
		if a.IsDegraded() {
			s = append(s, a.String())
		}
	}
	return strings.Join(s, "; ")
}

// PoolDegraded tells whether the pool's arrays, as last read, run without
// full redundancy, and describes the degraded ones.
func (w *Watcher) PoolDegraded(pool string) (bool, string) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	d := degradedArrays(w.state[pool].arrays)
	return d != "", d
}

// PoolArrays implements Source.
func (w *Watcher) PoolArrays() []PoolArrays {
	w.mu.RLock()
	defer w.mu.RUnlock()
	out := make([]PoolArrays, 0, len(w.pools))
	for _, p := range w.pools {
		out = append(out, PoolArrays{Pool: p.Name, Arrays: w.state[p.Name].arrays})
	}
	return out
}
