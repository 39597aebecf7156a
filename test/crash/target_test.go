package crash

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Half of the kills are aimed: the killer picks a kind of call, waits
// until a worker starts one, and kills after a uniform fraction of that
// kind's usual duration. A purely random kill rarely lands inside a short
// call that runs seldom, such as the offline grow of a loop volume's
// filesystem at its next NodeStageVolume, where an interrupted resize2fs
// used to leave ext4 needing a manual e2fsck (issue 10, item 4).

// killKinds are the calls aimed at. "NodeStageVolume+grow" is a stage of a
// loop volume expanded while unstaged: the stage grows its filesystem.
var killKinds = []string{
	"CreateVolume", "DeleteVolume", "NodeExpandVolume",
	"NodeStageVolume", "NodeStageVolume+grow", "NodeUnstageVolume",
	"NodePublishVolume", "NodeUnpublishVolume",
	"CreateSnapshot", "DeleteSnapshot", "CreateVolume+restore",
}

// aimWeight is how often each kind is aimed at, relative to 1: the
// offline grow has the most steps a kill can split (e2fsck, resize2fs,
// the records around them) and is the rarest call.
var aimWeight = map[string]int{"NodeStageVolume+grow": 4}

// pickKind draws a kind to aim at by aimWeight.
func pickKind(rng *rand.Rand) string {
	total := 0
	for _, k := range killKinds {
		total += max(aimWeight[k], 1)
	}
	n := rng.IntN(total)
	for _, k := range killKinds {
		if n -= max(aimWeight[k], 1); n < 0 {
			return k
		}
	}
	return killKinds[len(killKinds)-1]
}

// aim is the killer's side of targeting; the workers tell it when a call
// starts and how long calls take.
type aim struct {
	mu       sync.Mutex
	want     string        // the kind awaited ("": none)
	started  chan struct{} // signalled (non-blocking) when want starts
	duration map[string]time.Duration
	hits     map[string]int // aimed kills by kind, for the summary
}

func newAim() *aim {
	return &aim{started: make(chan struct{}, 1), duration: map[string]time.Duration{}, hits: map[string]int{}}
}

// starting is called by a worker just before it sends a call of kind.
func (a *aim) starting(kind string) {
	a.mu.Lock()
	hit := a.want == kind
	if hit {
		a.want = ""
	}
	a.mu.Unlock()
	if hit {
		select {
		case a.started <- struct{}{}:
		default:
		}
	}
}

// took records how long an answered call of kind took (moving average).
func (a *aim) took(kind string, d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.duration[kind]; ok {
		d = (3*old + d) / 4
	}
	a.duration[kind] = d
}

// wait waits for a call of kind to start, at most limit, and then for a
// uniform fraction of its usual duration. It reports whether it aimed.
func (a *aim) wait(rng *rand.Rand, kind string, limit time.Duration) bool {
	a.mu.Lock()
	a.want = kind
	select { // a stale signal from an earlier aim
	case <-a.started:
	default:
	}
	a.mu.Unlock()
	select {
	case <-a.started:
	case <-time.After(limit):
		a.mu.Lock()
		a.want = ""
		a.mu.Unlock()
		return false
	}
	a.mu.Lock()
	d := a.duration[kind]
	a.hits[kind]++
	a.mu.Unlock()
	if d > 0 {
		time.Sleep(time.Duration(rng.Int64N(int64(d) + 1)))
	}
	return true
}

func (a *aim) hitCounts() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]int, len(a.hits))
	for k, v := range a.hits {
		out[k] = v
	}
	return out
}
