package scale

import (
	"context"
	"time"
)

// countAt is a cumulative event count read at one moment.
type countAt struct {
	at time.Time
	n  int64
}

// quiet reports whether the count grew by at most maxEvents over the last
// span of samples (oldest first, the last one now). It is false until the
// samples cover a whole span.
func quiet(s []countAt, span time.Duration, maxEvents int64) bool {
	if len(s) == 0 {
		return false
	}
	last := s[len(s)-1]
	for i := len(s) - 1; i >= 0; i-- {
		if last.at.Sub(s[i].at) >= span {
			return last.n-s[i].n <= maxEvents
		}
	}
	return false
}

// settle waits, after a level's claims are bound, until the churn is over
// as every PVC and PV watcher sees it: the benchmark's own watchers got at
// most opt.QuietEvents events in the last opt.Quiet. The sidecars' work is
// driven by those events, so when they stop so does the work the level's
// creation caused. It gives up waiting after opt.Settle and returns how
// long it waited.
func settle(ctx context.Context, pvcT, pvT *Tally, opt Options) (time.Duration, error) {
	start := time.Now()
	var s []countAt
	for {
		now := time.Now()
		s = append(s, countAt{at: now, n: pvcT.Events.Load() + pvT.Events.Load()})
		if quiet(s, opt.Quiet, opt.QuietEvents) || now.Sub(start) >= opt.Settle {
			return now.Sub(start), nil
		}
		if err := sleep(ctx, time.Second); err != nil {
			return now.Sub(start), err
		}
	}
}
