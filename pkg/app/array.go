package app

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dhpp-io/dhpp/pkg/driver"
	dhppmetrics "github.com/dhpp-io/dhpp/pkg/metrics"
	"github.com/dhpp-io/dhpp/pkg/node"
	"k8s.io/klog/v2"
)

// arrayWatcher re-reads the md arrays under every pool each period, logs
// when their state changes and answers, from its last reading, whether a
// pool is degraded (for the CSI health RPCs) and what its arrays look like
// (for /metrics). A degraded array keeps serving I/O, so degradation is
// reported, never fenced: fencing is the write probe's business.
//
// Polling sysfs costs a few small file reads per pool and period; reading
// it on every health RPC instead would cost that per volume.
type arrayWatcher struct {
	find   func(path string) ([]node.Array, error)
	pools  []arrayPool
	period time.Duration

	mu    sync.RWMutex
	state map[string]arrayState
	// notify hears of changes in a pool's degradation (OnDegradation).
	notify func(pool string, degraded bool, detail string)
}

type arrayPool struct{ name, path string }

// arrayState is one pool's last reading. After a failed read the arrays of
// the last successful one are kept: a degradation must not vanish from
// the reports because sysfs could not be read once.
type arrayState struct {
	arrays []node.Array
	err    string
}

var (
	_ driver.PoolDegradation  = (*arrayWatcher)(nil)
	_ dhppmetrics.ArraySource = (*arrayWatcher)(nil)
)

func newArrayWatcher(pools []*node.Pool, period time.Duration, find func(string) ([]node.Array, error)) *arrayWatcher {
	w := &arrayWatcher{find: find, period: period, state: map[string]arrayState{}}
	for _, p := range pools {
		w.pools = append(w.pools, arrayPool{name: p.Name, path: p.Path})
	}
	return w
}

// Run checks every period until ctx is done.
func (w *arrayWatcher) Run(ctx context.Context) {
	t := time.NewTicker(w.period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.check()
		}
	}
}

// check reads every pool's arrays once, logs what changed and tells
// notify when a pool's degradation changed.
func (w *arrayWatcher) check() {
	for _, p := range w.pools {
		arrays, err := w.find(p.path)
		w.mu.Lock()
		old, seen := w.state[p.name]
		n := arrayState{arrays: arrays}
		if err != nil {
			n = arrayState{arrays: old.arrays, err: err.Error()}
		}
		w.state[p.name] = n
		notify := w.notify
		w.mu.Unlock()
		logArrayChange(p, old, n, seen)
		if notify != nil && degradationKey(old.arrays) != degradationKey(n.arrays) {
			if d := degradedArrays(n.arrays); d != "" {
				notify(p.name, true, d)
			} else {
				notify(p.name, false, describeArrays(n.arrays))
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
func (w *arrayWatcher) OnDegradation(f func(pool string, degraded bool, detail string)) {
	type degraded struct{ pool, detail string }
	var now []degraded
	w.mu.Lock()
	w.notify = f
	for _, p := range w.pools {
		if d := degradedArrays(w.state[p.name].arrays); d != "" {
			now = append(now, degraded{p.name, d})
		}
	}
	w.mu.Unlock()
	for _, d := range now {
		f(d.pool, true, d.detail)
	}
}

// logArrayChange logs a pool's array state when it differs from the last
// reading.
func logArrayChange(p arrayPool, old, n arrayState, seen bool) {
	msg, isErr := arrayChange(old, n, seen)
	switch {
	case msg == "":
	case n.err != "":
		klog.ErrorS(nil, msg, "pool", p.name, "path", p.path, "err", n.err)
	case isErr:
		klog.ErrorS(nil, msg, "pool", p.name, "path", p.path, "arrays", describeArrays(n.arrays))
	default:
		klog.InfoS(msg, "pool", p.name, "path", p.path, "arrays", describeArrays(n.arrays))
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
func changeKey(arrays []node.Array) string {
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

func describeArrays(arrays []node.Array) string {
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
func degradationKey(arrays []node.Array) string {
	var s []string
	for _, a := range arrays {
		if a.IsDegraded() {
			s = append(s, fmt.Sprintf("%s/%d/%t", a.Name, a.Degraded, a.State == "broken"))
		}
	}
	return strings.Join(s, ";")
}

// degradedArrays describes the degraded ones among arrays, "" if none.
func degradedArrays(arrays []node.Array) string {
	var s []string
	for _, a := range arrays {
		if a.IsDegraded() {
			s = append(s, a.String())
		}
	}
	return strings.Join(s, "; ")
}

// PoolDegraded implements driver.PoolDegradation.
func (w *arrayWatcher) PoolDegraded(pool string) (bool, string) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	d := degradedArrays(w.state[pool].arrays)
	return d != "", d
}

// PoolArrays implements metrics.ArraySource.
func (w *arrayWatcher) PoolArrays() []dhppmetrics.PoolArrays {
	w.mu.RLock()
	defer w.mu.RUnlock()
	out := make([]dhppmetrics.PoolArrays, 0, len(w.pools))
	for _, p := range w.pools {
		out = append(out, dhppmetrics.PoolArrays{Pool: p.name, Arrays: w.state[p.name].arrays})
	}
	return out
}

// arrayHealth is the driver's view of pool health: fencing from the
// Monitor, degradation from the array watcher.
type arrayHealth struct {
	poolHealth
	arrays *arrayWatcher
}

var (
	_ driver.PoolHealth      = arrayHealth{}
	_ driver.PoolDegradation = arrayHealth{}
)

// PoolDegraded implements driver.PoolDegradation.
func (h arrayHealth) PoolDegraded(pool string) (bool, string) { return h.arrays.PoolDegraded(pool) }
