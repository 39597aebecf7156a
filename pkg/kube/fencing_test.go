package kube_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/kube/kubetest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const nodeName = "worker-1"

// fakeMonitor is a Monitor whose state the test sets; it calls the
// callbacks like health.Monitor does (synchronously, on the caller).
type fakeMonitor struct {
	mu        sync.Mutex
	pools     []string
	status    map[string]health.Status
	callbacks []func(old, new health.Status)
	unfenced  []string
}

func newFakeMonitor(pools ...string) *fakeMonitor {
	m := &fakeMonitor{pools: pools, status: map[string]health.Status{}}
	for _, p := range pools {
		m.status[p] = health.Status{Pool: p, State: health.Healthy}
	}
	return m
}

func (m *fakeMonitor) Pools() []string { return append([]string(nil), m.pools...) }

func (m *fakeMonitor) Status(pool string) (health.Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.status[pool]
	return s, ok
}

func (m *fakeMonitor) OnChange(f func(old, new health.Status)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.callbacks = append(m.callbacks, f)
}

// set changes a pool's status and calls the callbacks if the state changed.
func (m *fakeMonitor) set(n health.Status) {
	m.mu.Lock()
	old := m.status[n.Pool]
	m.status[n.Pool] = n
	cbs := m.callbacks
	m.mu.Unlock()
	if old.State != n.State {
		for _, cb := range cbs {
			cb(old, n)
		}
	}
}

func (m *fakeMonitor) Fence(pool, msg string) error {
	if _, ok := m.Status(pool); !ok {
		return fmt.Errorf("pool %q: %w", pool, health.ErrUnknownPool)
	}
	m.set(health.Status{Pool: pool, State: health.Fenced, Manual: true, Reason: health.ReasonManual, LastError: msg})
	return nil
}

func (m *fakeMonitor) Unfence(pool string) error {
	m.mu.Lock()
	m.unfenced = append(m.unfenced, pool)
	m.mu.Unlock()
	m.set(health.Status{Pool: pool, State: health.Healthy})
	return nil
}

var fencedStatus = health.Status{Pool: "default", State: health.Fenced, Reason: health.ReasonReadOnly,
	LastError: "open /mnt/d/.dhpp/health: read-only file system", ConsecutiveFailures: 3}

type harness struct {
	t      *testing.T
	client *fake.Clientset
	mon    *fakeMonitor
	f      *kube.Fencer
	ev     *kube.NodeEvents
	cancel context.CancelFunc
	done   chan error
}

func newNode(labels, annotations map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, UID: "uid-1", Labels: labels, Annotations: annotations},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"}}}}
}

// start runs a Fencer against a fake API server holding node. restore
// calls Restore first, as the driver does before its probes start.
func start(t *testing.T, node *corev1.Node, mon *fakeMonitor, restore bool) *harness {
	t.Helper()
	objs := []runtime.Object{}
	if node != nil {
		objs = append(objs, node)
	}
	// Another node: the informer must not act on it.
	objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-2",
		Annotations: map[string]string{kube.UnfenceAnnotationPrefix + "default": "now"}}})
	h := &harness{t: t, client: fake.NewClientset(objs...), mon: mon, done: make(chan error, 2)}
	paths := map[string]string{"default": "/mnt/d", "fast": "/mnt/f"}
	h.ev = kube.NewNodeEvents(kubetest.FakeAPI{C: h.client}, nodeName, paths)
	f, err := kube.NewFencer(kube.Config{Client: kubetest.FakeAPI{C: h.client}, NodeName: nodeName, Monitor: mon,
		PoolPaths: paths, Events: h.ev})
	if err != nil {
		t.Fatal(err)
	}
	h.f = f
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	if restore {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		if err := f.Restore(rctx); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		rcancel()
	}
	go func() { h.done <- f.Run(ctx) }()
	go func() { h.done <- h.ev.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	for range 2 { // the Fencer and its NodeEvents
		select {
		case err := <-h.done:
			if err != nil {
				h.t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			h.t.Error("Run did not return after cancel")
			return
		}
	}
}

func (h *harness) node() *corev1.Node {
	n, err := h.client.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

func (h *harness) events() []corev1.Event {
	l, err := h.client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return l.Items
}

// eventually polls cond for up to 5 s.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	// Generous: the Fencer's work is asynchronous, and on a loaded 2-core CI
	// machine (other packages' tests run in parallel) 201 queued Events took
	// longer than 5 s. A real hang still fails.
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func condition(n *corev1.Node) *corev1.NodeCondition {
	for i, c := range n.Status.Conditions {
		if c.Type == kube.ConditionType {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

func reasons(evs []corev1.Event) []string {
	var r []string
	for _, e := range evs {
		r = append(r, e.Reason)
	}
	return r
}

func TestFenceAndRecover(t *testing.T) {
	tests := []struct {
		name string
		// recover moves the pool out of Fenced: by the probe (auto-unfence)
		// or by an operator's annotation.
		recover      func(h *harness)
		wantReason   string
		wantUnfenced []string
	}{
		{
			name: "auto-unfence by the probe",
			recover: func(h *harness) {
				h.mon.set(health.Status{Pool: "default", State: health.Healthy, ConsecutiveSuccesses: 60})
			},
			wantReason: kube.ReasonPoolRecovered,
		},
		{
			name: "kubectl annotate node unfence.dhpp.io/default=now",
			recover: func(h *harness) {
				patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"now"}}}`, kube.UnfenceAnnotationPrefix+"default")
				if _, err := h.client.CoreV1().Nodes().Patch(context.Background(), nodeName, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
					h.t.Fatal(err)
				}
			},
			wantReason:   kube.ReasonPoolUnfenced,
			wantUnfenced: []string{"default"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, newNode(map[string]string{"kubernetes.io/hostname": nodeName}, nil), newFakeMonitor("default", "fast"), true)
			// Initial sync: condition True, no labels, no events.
			h.eventually("condition True", func() bool {
				c := condition(h.node())
				return c != nil && c.Status == corev1.ConditionTrue
			})
			if c := condition(h.node()); c.Reason != kube.ReasonPoolsHealthy {
				t.Fatalf("initial condition %+v", c)
			}

			h.mon.set(health.Status{Pool: "default", State: health.Failing, ConsecutiveFailures: 1})
			h.mon.set(fencedStatus)
			h.eventually("label, condition and event for the fenced pool", func() bool {
				n := h.node()
				c := condition(n)
				return n.Labels[kube.PoolLabelPrefix+"default"] == kube.PoolLabelFenced && c != nil && c.Status == corev1.ConditionFalse && len(h.events()) == 1
			})
			n := h.node()
			if _, ok := n.Labels[kube.PoolLabelPrefix+"fast"]; ok {
				t.Errorf("healthy pool labelled: %v", n.Labels)
			}
			if n.Labels["kubernetes.io/hostname"] != nodeName {
				t.Errorf("other labels lost: %v", n.Labels)
			}
			c := condition(n)
			for _, want := range []string{"default", "/mnt/d", "read_only", "read-only file system"} {
				if !strings.Contains(c.Message, want) {
					t.Errorf("condition message %q lacks %q", c.Message, want)
				}
			}
			if c.Reason != kube.ReasonPoolFenced {
				t.Errorf("condition reason %q", c.Reason)
			}
			if len(n.Status.Conditions) != 2 {
				t.Errorf("kubelet's conditions must be kept: %+v", n.Status.Conditions)
			}
			ev := h.events()[0]
			if ev.Reason != kube.ReasonPoolFenced || ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.Kind != "Node" || ev.InvolvedObject.Name != nodeName {
				t.Errorf("event %+v", ev)
			}
			for _, want := range []string{`"default"`, "/mnt/d", "read_only", "read-only file system", "kubectl annotate node worker-1 unfence.dhpp.io/default=now"} {
				if !strings.Contains(ev.Message, want) {
					t.Errorf("event message %q lacks %q", ev.Message, want)
				}
			}

			tt.recover(h)
			h.eventually("label removed, condition True, recovery event", func() bool {
				n := h.node()
				_, labelled := n.Labels[kube.PoolLabelPrefix+"default"]
				c := condition(n)
				return !labelled && c.Status == corev1.ConditionTrue && len(h.events()) == 2
			})
			if got := reasons(h.events()); got[0] != kube.ReasonPoolFenced || got[1] != tt.wantReason {
				// List order of the fake is by name; names carry the time.
				t.Errorf("events %v, want [%s %s]", got, kube.ReasonPoolFenced, tt.wantReason)
			}
			if _, ok := h.node().Annotations[kube.UnfenceAnnotationPrefix+"default"]; ok {
				t.Error("unfence annotation not removed")
			}
			if fmt.Sprint(h.mon.unfenced) != fmt.Sprint(tt.wantUnfenced) {
				t.Errorf("Unfence calls %v, want %v", h.mon.unfenced, tt.wantUnfenced)
			}
			// The other node's annotation is not this driver's business.
			other, _ := h.client.CoreV1().Nodes().Get(context.Background(), "worker-2", metav1.GetOptions{})
			if _, ok := other.Annotations[kube.UnfenceAnnotationPrefix+"default"]; !ok {
				t.Error("another node's annotation was touched")
			}
		})
	}
}

func TestRestoreFromLabel(t *testing.T) {
	tests := []struct {
		name       string
		labels     map[string]string
		wantFenced []string
	}{
		{"no labels", nil, nil},
		{"fenced pool", map[string]string{kube.PoolLabelPrefix + "fast": kube.PoolLabelFenced}, []string{"fast"}},
		{"unknown pool and other values ignored", map[string]string{kube.PoolLabelPrefix + "gone": kube.PoolLabelFenced, kube.PoolLabelPrefix + "default": "maybe"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mon := newFakeMonitor("default", "fast")
			h := start(t, newNode(tt.labels, nil), mon, true)
			var fenced []string
			for _, p := range mon.Pools() {
				if s, _ := mon.Status(p); s.State == health.Fenced {
					fenced = append(fenced, p)
					if !s.Manual || !strings.Contains(s.LastError, "fenced before the driver restarted") {
						t.Errorf("restored status %+v", s)
					}
				}
			}
			if fmt.Sprint(fenced) != fmt.Sprint(tt.wantFenced) {
				t.Fatalf("fenced %v, want %v", fenced, tt.wantFenced)
			}
			h.eventually("condition", func() bool { return condition(h.node()) != nil })
			want := corev1.ConditionTrue
			if len(tt.wantFenced) > 0 {
				want = corev1.ConditionFalse
			}
			if c := condition(h.node()); c.Status != want {
				t.Errorf("condition %+v, want %s", c, want)
			}
			// A restore repeats what the Node says; it is not news.
			time.Sleep(50 * time.Millisecond)
			if evs := h.events(); len(evs) != 0 {
				t.Errorf("restore emitted events %v", reasons(evs))
			}
		})
	}
}

func TestRestoreWithoutNodeTimesOut(t *testing.T) {
	h := &harness{client: fake.NewClientset()}
	f, err := kube.NewFencer(kube.Config{Client: kubetest.FakeAPI{C: h.client}, NodeName: nodeName, Monitor: newFakeMonitor("default"),
		Events: kube.NewNodeEvents(kubetest.FakeAPI{C: h.client}, nodeName, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := f.Restore(ctx); err == nil || !strings.Contains(err.Error(), "restore fenced pools") {
		t.Fatalf("Restore = %v, want a timeout error", err)
	}
}

// TestUnfenceAnnotationEdgeCases: annotations that unfence nothing are
// still removed, so kubectl annotate can be repeated safely.
func TestUnfenceAnnotationEdgeCases(t *testing.T) {
	tests := []struct {
		name       string
		annotation string
		wantEvent  string
	}{
		{"pool not fenced", kube.UnfenceAnnotationPrefix + "fast", ""},
		{"unknown pool", kube.UnfenceAnnotationPrefix + "nope", kube.ReasonUnfenceFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mon := newFakeMonitor("default", "fast")
			h := start(t, newNode(nil, map[string]string{tt.annotation: "now", "keep": "me"}), mon, false)
			h.eventually("annotation removed", func() bool {
				_, ok := h.node().Annotations[tt.annotation]
				return !ok
			})
			if h.node().Annotations["keep"] != "me" {
				t.Error("unrelated annotation removed")
			}
			if len(mon.unfenced) != 0 {
				t.Errorf("Unfence called for %v", mon.unfenced)
			}
			if tt.wantEvent != "" {
				h.eventually("event", func() bool { return len(h.events()) == 1 })
				if got := h.events()[0].Reason; got != tt.wantEvent {
					t.Errorf("event %s, want %s", got, tt.wantEvent)
				}
			}
		})
	}
}

// TestOnChangeNeverBlocks: with the API server hanging, the probing
// goroutine's callback still returns at once, and the work is done once the
// API answers again.
func TestOnChangeNeverBlocks(t *testing.T) {
	mon := newFakeMonitor("default")
	h := start(t, newNode(nil, nil), mon, false)
	h.eventually("initial condition", func() bool { return condition(h.node()) != nil })

	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()
	block := func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil
	}
	h.client.PrependReactor("patch", "nodes", block)
	h.client.PrependReactor("create", "events", block)

	start := time.Now()
	for i := 0; i < 100; i++ {
		mon.set(fencedStatus)
		mon.set(health.Status{Pool: "default", State: health.Healthy})
	}
	mon.set(fencedStatus)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("201 state changes took %s with the API server hanging; the callback blocks", d)
	}
	unblock()
	h.eventually("final state on the Node", func() bool {
		return h.node().Labels[kube.PoolLabelPrefix+"default"] == kube.PoolLabelFenced
	})
	h.eventually("every event posted", func() bool { return len(h.events()) == 201 })
}

// TestRealMonitor drives the Fencer with a real health.Monitor whose probe
// fails for real: the probe file vanishes after the first probe.
func TestRealMonitor(t *testing.T) {
	dir := t.TempDir()
	cfg := health.DefaultConfig()
	// The production timeout (1 s): a slow probe under -race on a loaded
	// machine must not fence the pool for the wrong reason.
	cfg.Period, cfg.Timeout, cfg.FailureThreshold, cfg.ProbeBytes = time.Second, time.Second, 2, 4096
	mon, err := health.NewMonitor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(dir, ".dhpp", "health")
	if err := os.MkdirAll(filepath.Dir(probe), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := mon.AddPool("default", probe); err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(newNode(nil, nil))
	events := kube.NewNodeEvents(kubetest.FakeAPI{C: client}, nodeName, map[string]string{"default": dir})
	f, err := kube.NewFencer(kube.Config{Client: kubetest.FakeAPI{C: client}, NodeName: nodeName, Monitor: mon, PoolPaths: map[string]string{"default": dir}, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { _ = f.Run(ctx) })
	wg.Go(func() { _ = events.Run(ctx) })
	wg.Go(func() { mon.Run(ctx) })
	h := &harness{t: t, client: client}
	h.eventually("probe file created", func() bool { _, err := os.Stat(probe); return err == nil })
	if err := os.Remove(probe); err != nil {
		t.Fatal(err)
	}
	h.eventually("fenced label", func() bool { return h.node().Labels[kube.PoolLabelPrefix+"default"] == kube.PoolLabelFenced })
	if s, _ := mon.Status("default"); s.Reason != health.ReasonMissing {
		t.Errorf("fenced for %q, want %q", s.Reason, health.ReasonMissing)
	}
	h.eventually("event", func() bool { return len(h.events()) == 1 })
	if ev := h.events()[0]; !strings.Contains(ev.Message, "missing") {
		t.Errorf("event message %q does not name the failure reason", ev.Message)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"now"}}}`, kube.UnfenceAnnotationPrefix+"default")
	if _, err := client.CoreV1().Nodes().Patch(ctx, nodeName, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	// Unfence lets the probe re-create the file; the pool stays healthy.
	h.eventually("label removed", func() bool { _, ok := h.node().Labels[kube.PoolLabelPrefix+"default"]; return !ok })
	h.eventually("PoolUnfenced event", func() bool {
		evs := h.events()
		return len(evs) >= 2 && evs[1].Reason == kube.ReasonPoolUnfenced
	})
}

// TestRestoreKeepsFenceReason: a pool fenced at start for a reason of its
// own (its directory is missing) keeps that reason when the Node label
// also says fenced.
func TestRestoreKeepsFenceReason(t *testing.T) {
	mon := newFakeMonitor("default")
	if err := mon.Fence("default", "directory /mnt/d is missing"); err != nil {
		t.Fatal(err)
	}
	start(t, newNode(map[string]string{kube.PoolLabelPrefix + "default": kube.PoolLabelFenced}, nil), mon, true)
	if s, _ := mon.Status("default"); s.State != health.Fenced || s.LastError != "directory /mnt/d is missing" {
		t.Fatalf("status after restore %+v, want the start-up reason kept", s)
	}
}
