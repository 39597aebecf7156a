package controller

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
)

const (
	ns        = "app"
	lostNode  = "node-1"
	otherNode = "node-2"
)

// world is a fake API server with the behaviour the controller relies on
// and client-go's fake lacks: delete preconditions (UID), finalizers
// (delete sets deletionTimestamp), the Eviction API with a
// PodDisruptionBudget that can refuse (429), and, in collect, what the
// controller-manager does (pvc-/pv-protection, objects whose last finalizer
// went are removed).
type world struct {
	t      *testing.T
	cs     *fake.Clientset
	mu     sync.Mutex
	pdb    bool // evictions refused
	failPV bool // the next PV delete fails (a leader dying mid-way)
}

var (
	pvcGVR = schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumeclaims"}
	pvGVR  = schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumes"}
	podGVR = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
)

func newWorld(t *testing.T, objs ...runtime.Object) *world {
	w := &world{t: t, cs: fake.NewClientset(objs...)}
	w.cs.PrependReactor("delete", "*", w.deleteReactor)
	w.cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		w.mu.Lock()
		blocked := w.pdb
		w.mu.Unlock()
		if blocked {
			return true, nil, apierrors.NewTooManyRequests("Cannot evict pod as it would violate the pod's disruption budget.", 10)
		}
		name := a.(k8stesting.CreateAction).GetObject().(metav1.Object).GetName()
		return true, nil, w.cs.Tracker().Delete(podGVR, a.GetNamespace(), name)
	})
	return w
}

func (w *world) deleteReactor(a k8stesting.Action) (bool, runtime.Object, error) {
	da := a.(k8stesting.DeleteActionImpl)
	if da.GetResource() == pvGVR {
		w.mu.Lock()
		fail := w.failPV
		w.failPV = false
		w.mu.Unlock()
		if fail {
			return true, nil, errors.New("connection reset (test)")
		}
	}
	obj, err := w.cs.Tracker().Get(da.GetResource(), da.GetNamespace(), da.GetName())
	if err != nil {
		return true, nil, err
	}
	m, _ := meta.Accessor(obj)
	if p := da.DeleteOptions.Preconditions; p != nil && p.UID != nil && *p.UID != m.GetUID() {
		return true, nil, apierrors.NewConflict(da.GetResource().GroupResource(), da.GetName(), errors.New("UID precondition failed"))
	}
	if len(m.GetFinalizers()) == 0 {
		return false, nil, nil // the tracker deletes it
	}
	if m.GetDeletionTimestamp() == nil {
		now := metav1.Now()
		m.SetDeletionTimestamp(&now)
		return true, nil, w.cs.Tracker().Update(da.GetResource(), obj, da.GetNamespace())
	}
	return true, nil, nil
}

// collect plays the controller-manager: a claim no pod uses loses
// pvc-protection; a PV no claim holds loses pv-protection; deleting objects
// without finalizers go.
func (w *world) collect() {
	ctx := context.Background()
	// Pod GC: pods of a deleted node, and of an out-of-service node (the
	// taint evicts them and pod GC force-deletes them), go.
	nodes, _ := w.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	gone := func(name string) bool {
		for _, n := range nodes.Items {
			if n.Name == name {
				return nodeSignal(&n, "", 0).Kind == SignalNodeOutOfService
			}
		}
		return true
	}
	pods, _ := w.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	used := map[string]bool{}
	for _, p := range pods.Items {
		if gone(p.Spec.NodeName) {
			if err := w.cs.Tracker().Delete(podGVR, p.Namespace, p.Name); err != nil {
				w.t.Fatal(err)
			}
			continue
		}
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim != nil {
				used[p.Namespace+"/"+v.PersistentVolumeClaim.ClaimName] = true
			}
		}
	}
	claims, _ := w.cs.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	for _, c := range claims.Items {
		if c.DeletionTimestamp == nil {
			continue
		}
		if !used[c.Namespace+"/"+c.Name] {
			c.Finalizers = slices.DeleteFunc(c.Finalizers, func(f string) bool { return f == "kubernetes.io/pvc-protection" })
		}
		w.settle(pvcGVR, &c, c.Namespace)
	}
	pvs, _ := w.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	for _, pv := range pvs.Items {
		if pv.DeletionTimestamp == nil {
			continue
		}
		if ref := pv.Spec.ClaimRef; ref != nil {
			c, err := w.cs.CoreV1().PersistentVolumeClaims(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil || c.UID != ref.UID {
				pv.Finalizers = slices.DeleteFunc(pv.Finalizers, func(f string) bool { return f == "kubernetes.io/pv-protection" })
			}
		}
		w.settle(pvGVR, &pv, "")
	}
}

func (w *world) settle(gvr schema.GroupVersionResource, obj metav1.Object, namespace string) {
	if len(obj.GetFinalizers()) == 0 {
		if err := w.cs.Tracker().Delete(gvr, namespace, obj.GetName()); err != nil {
			w.t.Fatal(err)
		}
		return
	}
	if err := w.cs.Tracker().Update(gvr, obj.(runtime.Object), namespace); err != nil {
		w.t.Fatal(err)
	}
}

// writes are the mutating calls the controller made, as "verb resource".
func (w *world) writes() []string {
	var out []string
	for _, a := range w.cs.Actions() {
		switch a.GetVerb() {
		case "create", "update", "patch", "delete":
			r := a.GetResource().Resource
			if a.GetSubresource() != "" {
				r += "/" + a.GetSubresource()
			}
			out = append(out, a.GetVerb()+" "+r)
		}
	}
	return out
}

func (w *world) events(reason string) []corev1.Event {
	list, err := w.cs.CoreV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range list.Items {
		if e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

func (w *world) claim(name string) *corev1.PersistentVolumeClaim {
	c, err := w.cs.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		w.t.Fatal(err)
	}
	return c
}

func (w *world) pv(name string) *corev1.PersistentVolume {
	pv, err := w.cs.CoreV1().PersistentVolumes().Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		w.t.Fatal(err)
	}
	return pv
}

func (w *world) pod(name string) *corev1.Pod {
	p, err := w.cs.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		w.t.Fatal(err)
	}
	return p
}

// replica is a StatefulSet replica: claim, dhpp PV on node, and its pod.
func replica(name, node string, claimAnn map[string]string) []runtime.Object {
	claimName, pvName := "data-"+name, "pvc-"+name
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: claimName, Namespace: ns, UID: types.UID("uid-" + claimName), Annotations: claimAnn,
			Finalizers: []string{"kubernetes.io/pvc-protection"}},
		Spec:   corev1.PersistentVolumeClaimSpec{VolumeName: pvName, StorageClassName: new("hostpath-dynamic")},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName, UID: types.UID("uid-" + pvName),
			Finalizers: []string{"kubernetes.io/pv-protection", ProvisionerFinalizer}},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName: "hostpath-dynamic",
			ClaimRef:         &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: ns, Name: claimName, UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: dhpp.DriverName, VolumeHandle: node + "/default/" + pvName}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("uid-pod-" + name)},
		Spec: corev1.PodSpec{NodeName: node, Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimName}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	return []runtime.Object{pvc, pv, pod}
}

func class(policy string) *storagev1.StorageClass {
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "hostpath-dynamic"}, Provisioner: dhpp.DriverName, Parameters: map[string]string{}}
	if policy != "" {
		sc.Parameters[dhpp.ParamNodeLossPolicy] = policy
	}
	return sc
}

// harness is a controller on a world, with a clock the test moves.
type harness struct {
	*world
	c       *Controller
	reg     *prometheus.Registry
	mu      sync.Mutex
	clock   time.Time
	stopped func()
}

func (w *world) controller(opts Options) *harness {
	w.t.Helper()
	h := &harness{world: w, reg: prometheus.NewRegistry(), clock: t0}
	c, err := New(w.cs, nil, opts, NewMetrics(h.reg))
	if err != nil {
		w.t.Fatal(err)
	}
	c.now = func() time.Time { h.mu.Lock(); defer h.mu.Unlock(); return h.clock }
	ctx, cancel := context.WithCancel(context.Background())
	w.t.Cleanup(cancel)
	h.stopped = cancel
	c.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		w.t.Fatal("caches did not sync")
	}
	h.c = c
	return h
}

func (h *harness) advance(d time.Duration) {
	h.mu.Lock()
	h.clock = h.clock.Add(d)
	h.mu.Unlock()
}

// syncPV runs the decision for a PV like a worker would, several rounds
// with the fake controller-manager in between (claims and PVs go away as
// their finalizers do), and returns the last requeue delay.
func (h *harness) syncPV(name string, rounds int) time.Duration {
	h.t.Helper()
	var after time.Duration
	for range rounds {
		var err error
		after, err = h.c.sync(context.Background(), name)
		if err != nil {
			h.t.Fatalf("sync %s: %v", name, err)
		}
		h.collect()
	}
	return after
}

func (h *harness) count(action, result string) int {
	return int(testutil.ToFloat64(h.c.metrics.actions.WithLabelValues(action, result)))
}

func testOptions() Options {
	o := DefaultOptions()
	o.Grace, o.FenceLimit, o.Retry = 2*time.Minute, 10*time.Minute, 10*time.Second
	return o
}

func hasWrite(writes []string, w string) bool { return slices.Contains(writes, w) }

// TestRelease is the decision table: each signal × policy × time, on a
// world with a lost replica (web-0 on node-1) and a healthy one (web-1 on
// node-2) that must never be touched.
func TestRelease(t *testing.T) {
	type want struct {
		claimGone, claimDeleting, pvGone, evicted bool
		keptEvent                                 bool
		noWrites                                  bool // not even an annotation
		requeue                                   bool
	}
	tests := []struct {
		name     string
		node     *corev1.Node // nil: node-1 deleted
		policy   string       // class parameter
		claimAnn map[string]string
		elapsed  time.Duration // since the first look
		opts     func(*Options)
		want     want
	}{
		{name: "node deleted, recreate, within grace", policy: "recreate", elapsed: 119 * time.Second,
			want: want{requeue: true}},
		{name: "node deleted, recreate, after grace", policy: "recreate", elapsed: 2 * time.Minute,
			want: want{claimGone: true, pvGone: true}},
		{name: "out-of-service, recreate, after grace", node: testNode(lostNode, outOfService(t0)), policy: "recreate", elapsed: 2 * time.Minute,
			want: want{claimGone: true, pvGone: true}},
		{name: "out-of-service, recreate, within grace", node: testNode(lostNode, outOfService(t0)), policy: "recreate", elapsed: time.Minute,
			want: want{requeue: true}},
		// The taint's timeAdded counts: applied 90 s before the controller
		// looked, so 30 s more are enough.
		{name: "out-of-service since before the controller looked", node: testNode(lostNode, outOfService(t0.Add(-90*time.Second))), policy: "recreate", elapsed: 30 * time.Second,
			want: want{claimGone: true, pvGone: true}},
		{name: "node deleted, keep (default)", elapsed: time.Hour,
			want: want{keptEvent: true}},
		{name: "out-of-service, keep by class", node: testNode(lostNode, outOfService(t0)), policy: "keep", elapsed: time.Hour,
			want: want{keptEvent: true}},
		{name: "annotation keep overrides class recreate", policy: "recreate", claimAnn: map[string]string{dhpp.AnnotationNodeLossPolicy: "keep"}, elapsed: time.Hour,
			want: want{keptEvent: true}},
		{name: "annotation recreate overrides class keep", policy: "keep", claimAnn: map[string]string{dhpp.AnnotationNodeLossPolicy: "recreate"}, elapsed: 2 * time.Minute,
			want: want{claimGone: true, pvGone: true}},
		{name: "NotReady alone does nothing, ever", node: testNode(lostNode, notReady), policy: "recreate", elapsed: 24 * time.Hour,
			want: want{noWrites: true}},
		{name: "healthy node does nothing", node: testNode(lostNode), policy: "recreate", elapsed: 24 * time.Hour,
			want: want{noWrites: true}},
		{name: "pool fenced, recreate, within limit", node: testNode(lostNode, fenced("default", t0)), policy: "recreate", elapsed: 9 * time.Minute,
			want: want{requeue: true}},
		// Fenced: the pod is evicted and the claim goes; the PV stays for
		// the node's own provisioner (DeleteVolume → trash).
		{name: "pool fenced, recreate, after limit", node: testNode(lostNode, fenced("default", t0)), policy: "recreate", elapsed: 10 * time.Minute,
			want: want{claimGone: true, evicted: true}},
		{name: "pool fenced, limit 0 = never", node: testNode(lostNode, fenced("default", t0)), policy: "recreate", elapsed: 24 * time.Hour,
			opts: func(o *Options) { o.FenceLimit = 0 }, want: want{noWrites: true}},
		{name: "pool fenced, keep", node: testNode(lostNode, fenced("default", t0)), elapsed: time.Hour,
			want: want{keptEvent: true}},
		{name: "dry run writes nothing", policy: "recreate", elapsed: time.Hour,
			opts: func(o *Options) { o.DryRun = true }, want: want{noWrites: true}},
		{name: "dry run, keep, writes nothing", elapsed: time.Hour,
			opts: func(o *Options) { o.DryRun = true }, want: want{noWrites: true}},
		{name: "grace 0 acts at once", policy: "recreate", elapsed: 0,
			opts: func(o *Options) { o.Grace = 0 }, want: want{claimGone: true, pvGone: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs := append(replica("web-0", lostNode, tc.claimAnn), replica("web-1", otherNode, nil)...)
			objs = append(objs, testNode(otherNode), class(tc.policy))
			if tc.node != nil {
				objs = append(objs, tc.node)
			}
			w := newWorld(t, objs...)
			opts := testOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			h := w.controller(opts)
			h.syncPV("pvc-web-0", 1)
			h.advance(tc.elapsed)
			after := h.syncPV("pvc-web-0", 3)
			h.syncPV("pvc-web-1", 2)

			claim, pv, pod := w.claim("data-web-0"), w.pv("pvc-web-0"), w.pod("web-0")
			got := want{
				claimGone:     claim == nil,
				claimDeleting: claim != nil && claim.DeletionTimestamp != nil,
				pvGone:        pv == nil,
				evicted:       h.count(ActionEvictPod, ResultSuccess) > 0 && pod == nil,
				keptEvent:     len(w.events(ReasonClaimKept)) > 0,
				noWrites:      len(w.writes()) == 0,
				requeue:       after > 0,
			}
			if got != tc.want {
				t.Errorf("got %+v\nwant %+v\nwrites: %q", got, tc.want, w.writes())
			}
			// The healthy replica is never touched.
			if w.claim("data-web-1") == nil || w.pv("pvc-web-1") == nil || w.pod("web-1") == nil {
				t.Error("the replica on the healthy node was touched")
			}
			if tc.want.requeue && after > opts.Grace {
				t.Errorf("requeue after %s, more than the grace period", after)
			}
			if tc.want.claimGone {
				checkReleaseReported(t, h, tc.want.pvGone)
			}
			if tc.want.keptEvent {
				checkKeptReported(t, h)
			}
		})
	}
}

// checkReleaseReported: every action is an Event on the claim and on the
// node, and a counter.
func checkReleaseReported(t *testing.T, h *harness, pvGone bool) {
	t.Helper()
	for reason, wantN := range map[string]int{ReasonClaimReleased: 2, ReasonVolumeRemoved: map[bool]int{true: 2}[pvGone]} {
		evs := h.events(reason)
		if len(evs) != wantN {
			t.Errorf("%d %s Events, want %d (claim and node)", len(evs), reason, wantN)
		}
		kinds := map[string]bool{}
		for _, e := range evs {
			kinds[e.InvolvedObject.Kind] = true
		}
		if wantN > 0 && (!kinds["PersistentVolumeClaim"] || !kinds["Node"]) {
			t.Errorf("%s Events on %v, want on the claim and the node", reason, kinds)
		}
	}
	if n := h.count(ActionDeleteClaim, ResultSuccess); n != 1 {
		t.Errorf("delete_claim success = %d, want 1", n)
	}
	if n, want := h.count(ActionDeleteVolume, ResultSuccess), map[bool]int{true: 1}[pvGone]; n != want {
		t.Errorf("delete_volume success = %d, want %d", n, want)
	}
}

func checkKeptReported(t *testing.T, h *harness) {
	t.Helper()
	evs := h.events(ReasonClaimKept)
	if len(evs) != 2 {
		t.Fatalf("%d %s Events, want 2 (claim and node)", len(evs), ReasonClaimKept)
	}
	for _, e := range evs {
		if e.Type != corev1.EventTypeWarning || !strings.Contains(e.Message, "kubectl delete pvc -n app data-web-0") || !strings.Contains(e.Message, "Nothing was done") {
			t.Errorf("kept Event %s %q does not say why and how to release by hand", e.Type, e.Message)
		}
	}
	if n := h.count(ActionWarnKeep, ResultSuccess); n != 1 {
		t.Errorf("warn_keep success = %d, want 1 (once, however often it is looked at)", n)
	}
}

// TestDryRunCounts: --dry-run logs and counts each would-be action once.
func TestDryRunCounts(t *testing.T) {
	objs := append(replica("web-0", lostNode, nil), class("recreate"))
	w := newWorld(t, objs...)
	opts := testOptions()
	opts.DryRun = true
	h := w.controller(opts)
	h.syncPV("pvc-web-0", 1)
	h.advance(time.Hour)
	h.syncPV("pvc-web-0", 3)
	if got := w.writes(); len(got) != 0 {
		t.Fatalf("dry run wrote: %q", got)
	}
	for _, a := range []string{ActionDeleteClaim, ActionDeleteVolume} {
		if n := h.count(a, ResultDryRun); n != 1 {
			t.Errorf("%s dry_run = %d, want 1", a, n)
		}
	}
}

// TestForgetClearsDryRunRecords: once a PV is fine again, its dry-run
// actions are forgotten, so a later loss is logged and counted again.
func TestForgetClearsDryRunRecords(t *testing.T) {
	w := newWorld(t, append(replica("web-0", lostNode, nil), class("recreate"))...)
	opts := testOptions()
	opts.DryRun = true
	h := w.controller(opts)
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-a", UID: "uid-a"}}
	other := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-b", UID: "uid-b"}}
	for _, p := range []*corev1.PersistentVolume{pv, other} {
		h.c.dryRunOnce(p, ActionDeleteClaim, "test")
	}
	h.c.forget(pv)
	h.c.dryRunOnce(pv, ActionDeleteClaim, "test")
	h.c.dryRunOnce(other, ActionDeleteClaim, "test")
	if n := h.count(ActionDeleteClaim, ResultDryRun); n != 3 {
		t.Errorf("delete_claim dry_run = %d, want 3 (pv-a twice: forgotten in between; pv-b once)", n)
	}
}

// TestEvictionBlockedByPDB: a 429 from the Eviction API is counted and
// retried after the retry period; once the budget allows, the pod goes.
func TestEvictionBlockedByPDB(t *testing.T) {
	objs := append(replica("web-0", lostNode, nil), testNode(lostNode, fenced("default", t0)), class("recreate"))
	w := newWorld(t, objs...)
	w.pdb = true
	h := w.controller(testOptions())
	h.advance(10 * time.Minute)
	after := h.syncPV("pvc-web-0", 3)
	if after != testOptions().Retry {
		t.Errorf("requeue after %s, want the retry period %s", after, testOptions().Retry)
	}
	if w.pod("web-0") == nil {
		t.Fatal("pod evicted despite the budget")
	}
	if c := w.claim("data-web-0"); c == nil || c.DeletionTimestamp == nil {
		t.Fatalf("claim %v: want it deleting (kept by pvc-protection while its pod runs)", c)
	}
	if n := h.count(ActionEvictPod, ResultBlocked); n != 3 {
		t.Errorf("evict_pod blocked = %d, want 3 (one per attempt)", n)
	}
	if n := len(h.events(ReasonEvictBlocked)); n != 2 {
		t.Errorf("%d EvictionBlocked Events, want 2 (claim and node, once)", n)
	}
	w.mu.Lock()
	w.pdb = false
	w.mu.Unlock()
	if after := h.syncPV("pvc-web-0", 2); after != 0 {
		t.Errorf("still requeued after %s once the pod could go", after)
	}
	if w.pod("web-0") != nil || w.claim("data-web-0") != nil {
		t.Error("pod or claim still there after the budget allowed the eviction")
	}
	if n := h.count(ActionEvictPod, ResultSuccess); n != 1 {
		t.Errorf("evict_pod success = %d, want 1", n)
	}
	if w.pv("pvc-web-0") == nil {
		t.Error("the PV of a fenced pool was removed; its node's provisioner must delete it (data to the trash)")
	}
	if n := h.count(ActionDeleteClaim, ResultSuccess); n != 1 {
		t.Errorf("delete_claim success = %d, want 1", n)
	}
}

// TestLeaderChange: a leader dies after deleting the claim but before
// removing the PV; the StatefulSet controller meanwhile made a new claim of
// the same name. The next leader (a new process, nothing in memory)
// finishes: it removes the PV and never touches the new claim; then nobody
// does anything twice.
func TestLeaderChange(t *testing.T) {
	objs := append(replica("web-0", lostNode, nil), class("recreate"))
	w := newWorld(t, objs...)
	a := w.controller(testOptions())
	a.syncPV("pvc-web-0", 1)
	a.advance(2 * time.Minute)
	a.syncPV("pvc-web-0", 1) // claim deleted; pod GC and pvc-protection let it go
	w.failPV = true
	if _, err := a.c.sync(context.Background(), "pvc-web-0"); err == nil {
		t.Fatal("the PV delete did not fail as arranged")
	}
	a.stopped()
	if w.claim("data-web-0") != nil || w.pv("pvc-web-0") == nil {
		t.Fatal("leader A should have deleted the claim and not the PV")
	}
	fresh := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-web-0", Namespace: ns, UID: "uid-new"},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: new("hostpath-dynamic")}}
	if _, err := w.cs.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), fresh, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	b := w.controller(testOptions())
	b.advance(2 * time.Minute)
	b.syncPV("pvc-web-0", 3)
	if w.pv("pvc-web-0") != nil {
		t.Error("leader B did not finish removing the PV")
	}
	if c := w.claim("data-web-0"); c == nil || c.UID != "uid-new" || c.DeletionTimestamp != nil {
		t.Errorf("the new claim was touched: %+v", c)
	}
	deletes := func() (n int) {
		for _, wr := range w.writes() {
			if strings.HasPrefix(wr, "delete persistentvolumeclaims") {
				n++
			}
		}
		return n
	}
	if n := deletes(); n != 1 {
		t.Errorf("%d claim deletes, want exactly 1", n)
	}
	if a.count(ActionDeleteClaim, ResultSuccess)+b.count(ActionDeleteClaim, ResultSuccess) != 1 {
		t.Error("delete_claim counted other than once across the two leaders")
	}
	if n := len(w.events(ReasonClaimReleased)); n != 2 {
		t.Errorf("%d ClaimReleased Events, want 2 (claim and node, once)", n)
	}

	// A third leader with everything done: no write at all.
	before := len(w.writes())
	c := w.controller(testOptions())
	c.advance(time.Hour)
	c.syncPV("pvc-web-0", 2)
	if got := w.writes()[before:]; len(got) != 0 {
		t.Errorf("a later leader wrote %q", got)
	}
}

// TestLeaderChangeKeepsGrace: the loss time is on the PV, so a new leader
// does not restart the grace period, and one that looks early waits.
func TestLeaderChangeKeepsGrace(t *testing.T) {
	objs := append(replica("web-0", lostNode, nil), class("recreate"))
	w := newWorld(t, objs...)
	a := w.controller(testOptions())
	a.syncPV("pvc-web-0", 1)
	a.stopped()
	if w.pv("pvc-web-0").Annotations[AnnotationLostSince] != t0.Format(time.RFC3339) {
		t.Fatalf("loss time not recorded on the PV: %v", w.pv("pvc-web-0").Annotations)
	}
	b := w.controller(testOptions())
	b.advance(time.Minute)
	if after := b.syncPV("pvc-web-0", 1); after != time.Minute {
		t.Errorf("new leader waits %s, want the remaining 1m0s", after)
	}
	b.advance(time.Minute)
	b.syncPV("pvc-web-0", 3)
	if w.claim("data-web-0") != nil || w.pv("pvc-web-0") != nil {
		t.Error("new leader did not release at the original deadline")
	}
}

// TestNodeReturns: a node that comes back within the grace period leaves
// nothing behind, and its claims are not released later.
func TestNodeReturns(t *testing.T) {
	objs := append(replica("web-0", lostNode, nil), testNode(lostNode, outOfService(t0)), class("recreate"))
	w := newWorld(t, objs...)
	h := w.controller(testOptions())
	h.syncPV("pvc-web-0", 1)
	if _, ok := w.pv("pvc-web-0").Annotations[AnnotationLostSince]; !ok {
		t.Fatal("loss not recorded")
	}
	n, _ := w.cs.CoreV1().Nodes().Get(context.Background(), lostNode, metav1.GetOptions{})
	n.Spec.Taints = nil
	if _, err := w.cs.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testdisk.WaitFor(t, "the informer to see the untainted node", func() bool {
		cached, err := h.c.nodes.Get(lostNode)
		return err == nil && len(cached.Spec.Taints) == 0
	})
	h.advance(time.Hour)
	h.syncPV("pvc-web-0", 2)
	pv := w.pv("pvc-web-0")
	if _, ok := pv.Annotations[AnnotationLostSince]; ok {
		t.Error("loss annotation kept after the node returned")
	}
	if w.claim("data-web-0") == nil {
		t.Error("claim released although the node returned")
	}
}

// TestRunWorksQueue runs the controller as the binary does (informers,
// queue, workers) and checks a lost volume is released without calling
// sync by hand: the events wire the queue.
func TestRunWorksQueue(t *testing.T) {
	objs := append(replica("web-0", lostNode, nil), replica("web-1", otherNode, nil)...)
	objs = append(objs, testNode(otherNode), class("recreate"))
	w := newWorld(t, objs...)
	opts := testOptions()
	opts.Grace = 0
	c, err := New(w.cs, nil, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx, 2) }()
	testdisk.WaitFor(t, "the claim to be released", func() bool { w.collect(); return w.claim("data-web-0") == nil })
	testdisk.WaitFor(t, "the PV to be deleted", func() bool { w.collect(); return w.pv("pvc-web-0") == nil })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if w.claim("data-web-1") == nil || w.pv("pvc-web-1") == nil {
		t.Error("healthy replica touched")
	}
}

func TestOptionsValidate(t *testing.T) {
	bad := []func(*Options){
		func(o *Options) { o.Grace = -1 },
		func(o *Options) { o.FenceLimit = -1 },
		func(o *Options) { o.Retry = 0 },
		func(o *Options) { o.Resync = 0 },
	}
	for i, b := range bad {
		o := DefaultOptions()
		b(&o)
		if o.Validate() == nil {
			t.Errorf("case %d: %+v accepted", i, o)
		}
	}
	if err := DefaultOptions().Validate(); err != nil {
		t.Error(err)
	}
}
