package poolstatus

import (
	"context"
	"sync"
	"testing"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/node"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	dynfake "k8s.io/client-go/dynamic/fake"
)

// fakePools is a node whose volumes and trash the test changes, and which
// signals each change as node.Manager.Changed does: a capacity-1 channel
// sent to without blocking, after the change is visible.
type fakePools struct {
	mu      sync.Mutex
	volumes int
	trash   []node.TrashedVolume
	changed chan struct{}
}

func (f *fakePools) change(do func()) {
	f.mu.Lock()
	do()
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// runWithChanges starts a publisher that reads f, whose period is an hour:
// only a change signal can cause a timely round.
func runWithChanges(t *testing.T, f *fakePools, minInterval time.Duration) *dynfake.FakeDynamicClient {
	t.Helper()
	client, _, p, _ := newFake(t)
	p.cfg.Period, p.cfg.MinInterval, p.cfg.Now = time.Hour, minInterval, time.Now
	p.cfg.Changed = f.changed
	p.cfg.Pools = func() []PoolInfo {
		f.mu.Lock()
		defer f.mu.Unlock()
		return []PoolInfo{{Name: "default", Path: "/var/lib/dhpp/default", Backend: "btrfs", Volumes: f.volumes,
			Capacity: node.Capacity{Total: 10 * gib, Free: 6 * gib}}}
	}
	p.cfg.Trash = func(PoolInfo) (v1.Trash, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		return TrashOf(f.trash, time.Hour), nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return client
}

func published(client *dynfake.FakeDynamicClient) *v1.DhppPool {
	u, err := client.Resource(v1.GroupVersionResource).Get(context.Background(), "node-a.default", metav1.GetOptions{})
	if err != nil {
		return nil
	}
	p, _ := v1.FromUnstructured(u)
	return p
}

func statusWrites(client *dynfake.FakeDynamicClient) int {
	n := 0
	for _, w := range writes(client) {
		if w == "update/status" {
			n++
		}
	}
	return n
}

// TestChangeIsPublishedWithinTheCoalescingWindow: a volume deleted into the
// trash shows in the status within MinInterval of the change (plus a
// round's work), not at the next period (an hour here).
func TestChangeIsPublishedWithinTheCoalescingWindow(t *testing.T) {
	const window = 500 * time.Millisecond
	f := &fakePools{volumes: 1, changed: make(chan struct{}, 1)}
	client := runWithChanges(t, f, window)
	waitFor(t, func() bool { p := published(client); return p != nil && p.Status.Volumes == 1 })
	time.Sleep(window) // the first round's own write has been seen

	deleted := time.Now()
	f.change(func() {
		f.volumes = 0
		f.trash = []node.TrashedVolume{{Entry: "pvc-1@1", DeletedAt: deleted,
			Volume: &node.Volume{ID: "node-a/default/pvc-1", CapacityBytes: gib, Labels: map[string]string{"namespace": "db", "pvc": "data"}}}}
	})
	waitFor(t, func() bool {
		p := published(client)
		return p.Status.Volumes == 0 && p.Status.Trash.Entries == 1 && p.Status.Trash.Items[0].Claim == "data"
	})
	if took := time.Since(deleted); took > window+time.Second {
		t.Errorf("the delete showed in status after %s, want within the coalescing window %s (+1 s of slack)", took, window)
	} else {
		t.Logf("the delete showed in status after %s (window %s)", took.Round(time.Millisecond), window)
	}
}

// TestBurstOfChangesIsCoalesced: 100 changes in a burst cost at most one
// status write per MinInterval, and the last state is published.
func TestBurstOfChangesIsCoalesced(t *testing.T) {
	const window = 300 * time.Millisecond
	f := &fakePools{changed: make(chan struct{}, 1)}
	client := runWithChanges(t, f, window)
	waitFor(t, func() bool { return published(client) != nil && statusWrites(client) == 1 })
	before := statusWrites(client)

	start := time.Now()
	for i := 1; i <= 100; i++ {
		f.change(func() { f.volumes = i })
		time.Sleep(10 * time.Millisecond)
	}
	burst := time.Since(start)
	waitFor(t, func() bool { return published(client).Status.Volumes == 100 })
	time.Sleep(2 * window) // any round still due has run
	got := statusWrites(client) - before
	// One round per window during the burst, one after it, and one for
	// the change that may have arrived as the previous round started.
	bound := int(burst/window) + 2
	t.Logf("100 changes in %s: %d status writes (bound %d, window %s)", burst.Round(time.Millisecond), got, bound, window)
	if got > bound || got < 1 {
		t.Errorf("100 changes in %s caused %d status writes, want 1..%d", burst.Round(time.Millisecond), got, bound)
	}
}

// TestOwnStatusWritesCauseNoRound: an update that leaves the generation
// alone (the publisher's own status write) asks for no round; a spec
// change (new generation) does, and so does any update from a client
// that keeps no generation.
func TestOwnStatusWritesCauseNoRound(t *testing.T) {
	_, _, p, _ := newFake(t)
	obj := func(gen int64) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{}}
		u.SetGeneration(gen)
		return u
	}
	cases := []struct {
		name     string
		old, new int64
		want     bool
	}{
		{"status write", 3, 3, false},
		{"spec change", 3, 4, true},
		{"no generation kept", 0, 0, true},
	}
	for _, c := range cases {
		for len(p.trigger) > 0 {
			<-p.trigger
		}
		p.pokeOnSpec(obj(c.old), obj(c.new))
		if got := len(p.trigger) == 1; got != c.want {
			t.Errorf("%s: round asked %v, want %v", c.name, got, c.want)
		}
	}
}
