package controller

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapfake "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/fake"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/tools/cache"
)

const (
	wffcClass      = "hostpath-dynamic"
	immediateClass = "hostpath-dynamic-restore"
	otherClass     = "other"
	sourceNode     = "node-3"
	// snapHandle is a snapshot ID of pkg/node's format on sourceNode.
	snapHandle = sourceNode + "/default/snapshots/snapshot-1"
)

func storageClasses() []runtime.Object {
	mode := func(m storagev1.VolumeBindingMode) *storagev1.VolumeBindingMode { return &m }
	return []runtime.Object{
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: wffcClass}, Provisioner: dhpp.DriverName, VolumeBindingMode: mode(storagev1.VolumeBindingWaitForFirstConsumer)},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: immediateClass}, Provisioner: dhpp.DriverName, VolumeBindingMode: mode(storagev1.VolumeBindingImmediate)},
		&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: otherClass}, Provisioner: "other.csi.io", VolumeBindingMode: mode(storagev1.VolumeBindingWaitForFirstConsumer)},
	}
}

// sourceVolume is claim "src" bound to a dhpp PV on sourceNode.
func sourceVolume() []runtime.Object {
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "src", Namespace: ns, UID: "uid-src"},
		Spec:       corev1.PersistentVolumeClaimSpec{VolumeName: "pvc-src", StorageClassName: new(wffcClass)},
		Status:     corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pvc-src"},
		Spec: corev1.PersistentVolumeSpec{
			ClaimRef: &corev1.ObjectReference{Namespace: ns, Name: "src", UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: dhpp.DriverName, VolumeHandle: sourceNode + "/default/pvc-src"}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: dhpp.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{sourceNode}}}}}}},
		},
	}
	return []runtime.Object{pvc, pv}
}

// snapshotOf is VolumeSnapshot "snap" bound to content "content-1" of
// driver with handle (a dynamic snapshot's content: status handle).
func snapshotOf(driver, handle string, bound bool) []runtime.Object {
	snap := &snapshotv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "snap", Namespace: ns, UID: "uid-snap"}}
	content := &snapshotv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: "content-1", Labels: map[string]string{LabelManagedBy: sourceNode}},
		Spec: snapshotv1.VolumeSnapshotContentSpec{Driver: driver,
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: ns, Name: "snap", UID: snap.UID},
			Source:            snapshotv1.VolumeSnapshotContentSource{VolumeHandle: new(sourceNode + "/default/pvc-src")}},
		Status: &snapshotv1.VolumeSnapshotContentStatus{SnapshotHandle: new(handle)},
	}
	if bound {
		snap.Status = &snapshotv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: new(content.Name)}
	}
	return []runtime.Object{snap, content}
}

// restore is the pending claim "restore" of class with the data source.
func restore(class string, src *corev1.TypedLocalObjectReference, ann map[string]string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "restore", Namespace: ns, UID: "uid-restore", Annotations: ann},
		Spec:       corev1.PersistentVolumeClaimSpec{StorageClassName: new(class), DataSource: src},
		Status:     corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending},
	}
}

var (
	fromSnapshot = &corev1.TypedLocalObjectReference{APIGroup: new(snapshotAPIGroup), Kind: "VolumeSnapshot", Name: "snap"}
	fromClaim    = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "src"}
)

// snapHarness is a controller on a world and a fake snapshot API; crds
// false leaves the snapshot API unstarted, as when the CRDs are absent.
type snapHarness struct {
	*world
	snaps *snapfake.Clientset
	c     *Controller
	reg   *prometheus.Registry
}

func newSnapHarness(t *testing.T, opts Options, crds bool, objs []runtime.Object, snapObjs []runtime.Object) *snapHarness {
	t.Helper()
	w := newWorld(t, objs...)
	h := &snapHarness{world: w, snaps: snapfake.NewSimpleClientset(snapObjs...), reg: prometheus.NewRegistry()}
	c, err := New(w.cs, h.snaps, opts, NewMetrics(h.reg))
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return t0 }
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		t.Fatal("caches did not sync")
	}
	if crds {
		c.snaps.start(ctx, c.enqueueContent)
		if _, _, ok := c.snaps.listers(); !ok {
			t.Fatal("snapshot caches did not sync")
		}
	}
	h.c = c
	return h
}

func (h *snapHarness) selectedNode() (string, bool) {
	n, ok := h.claim("restore").Annotations[AnnSelectedNode]
	return n, ok
}

func (h *snapHarness) count(action, result string) int {
	return int(testutil.ToFloat64(h.c.metrics.actions.WithLabelValues(action, result)))
}

// TestPlaceClaim is the decision table for restores and clones.
func TestPlaceClaim(t *testing.T) {
	tests := []struct {
		name     string
		claim    *corev1.PersistentVolumeClaim
		objs     []runtime.Object // besides the classes and the claim
		snapObjs []runtime.Object
		noCRDs   bool
		opts     func(*Options)
		want     string // the annotation afterwards; "" = absent
		wantSet  bool   // the controller wrote it (an Event, a counter)
		requeue  bool
	}{
		{name: "restore from a snapshot", claim: restore(wffcClass, fromSnapshot, nil),
			snapObjs: snapshotOf(dhpp.DriverName, snapHandle, true), want: sourceNode, wantSet: true},
		{name: "restore the scheduler sent to another node", claim: restore(wffcClass, fromSnapshot, map[string]string{AnnSelectedNode: otherNode}),
			snapObjs: snapshotOf(dhpp.DriverName, snapHandle, true), want: sourceNode, wantSet: true},
		{name: "clone of a claim", claim: restore(wffcClass, fromClaim, nil),
			objs: sourceVolume(), want: sourceNode, wantSet: true},
		{name: "clone through dataSourceRef", claim: func() *corev1.PersistentVolumeClaim {
			c := restore(wffcClass, nil, nil)
			c.Spec.DataSourceRef = &corev1.TypedObjectReference{Kind: "PersistentVolumeClaim", Name: "src"}
			return c
		}(), objs: sourceVolume(), want: sourceNode, wantSet: true},
		{name: "already on the source's node", claim: restore(wffcClass, fromSnapshot, map[string]string{AnnSelectedNode: sourceNode}),
			snapObjs: snapshotOf(dhpp.DriverName, snapHandle, true), want: sourceNode},
		{name: "source claim missing: wait", claim: restore(wffcClass, fromClaim, nil), requeue: true},
		{name: "source claim not bound: wait", claim: restore(wffcClass, fromClaim, nil), requeue: true,
			objs: []runtime.Object{&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "src", Namespace: ns}}}},
		{name: "snapshot missing: wait", claim: restore(wffcClass, fromSnapshot, nil), requeue: true},
		{name: "snapshot not bound yet: wait", claim: restore(wffcClass, fromSnapshot, nil), requeue: true,
			snapObjs: snapshotOf(dhpp.DriverName, snapHandle, false)},
		{name: "snapshot CRDs absent: wait", claim: restore(wffcClass, fromSnapshot, nil), requeue: true, noCRDs: true,
			snapObjs: snapshotOf(dhpp.DriverName, snapHandle, true)},
		{name: "snapshot of another driver", claim: restore(wffcClass, fromSnapshot, nil), requeue: true,
			snapObjs: snapshotOf("other.csi.io", snapHandle, true)},
		{name: "snapshot handle not dhpp's format", claim: restore(wffcClass, fromSnapshot, nil), requeue: true,
			snapObjs: snapshotOf(dhpp.DriverName, "snap-123", true)},
		{name: "other provisioner's class", claim: restore(otherClass, fromSnapshot, nil),
			snapObjs: snapshotOf(dhpp.DriverName, snapHandle, true)},
		{name: "Immediate class", claim: restore(immediateClass, fromSnapshot, nil),
			snapObjs: snapshotOf(dhpp.DriverName, snapHandle, true)},
		{name: "no data source", claim: restore(wffcClass, nil, nil)},
		{name: "bound claim", claim: func() *corev1.PersistentVolumeClaim {
			c := restore(wffcClass, fromSnapshot, map[string]string{AnnSelectedNode: otherNode})
			c.Spec.VolumeName, c.Status.Phase = "pvc-restore", corev1.ClaimBound
			return c
		}(), snapObjs: snapshotOf(dhpp.DriverName, snapHandle, true), want: otherNode},
		{name: "dry run", claim: restore(wffcClass, fromSnapshot, nil), opts: func(o *Options) { o.DryRun = true },
			snapObjs: snapshotOf(dhpp.DriverName, snapHandle, true)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs := append(storageClasses(), tc.claim)
			objs = append(objs, tc.objs...)
			opts := testOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			h := newSnapHarness(t, opts, !tc.noCRDs, objs, tc.snapObjs)
			key := ns + "/restore"
			after, err := h.c.placeClaim(context.Background(), key)
			if err != nil {
				t.Fatal(err)
			}
			if got := after > 0; got != tc.requeue {
				t.Errorf("requeue after %s, want requeue %v", after, tc.requeue)
			}
			if tc.requeue && after != opts.Retry {
				t.Errorf("requeue after %s, want the retry period %s", after, opts.Retry)
			}
			got, _ := h.selectedNode()
			if got != tc.want {
				t.Errorf("%s = %q, want %q", AnnSelectedNode, got, tc.want)
			}
			evs := h.events(ReasonSourceNodeSelected)
			if n := h.count(ActionSelectNode, ResultSuccess); (n == 1) != tc.wantSet || n > 1 {
				t.Errorf("select_node success = %d, want set %v", n, tc.wantSet)
			}
			if !tc.wantSet {
				if writes := h.writes(); len(writes) != 0 {
					t.Errorf("wrote %q, want nothing", writes)
				}
				if tc.opts != nil && h.count(ActionSelectNode, ResultDryRun) != 1 {
					t.Error("dry run did not count the would-be action")
				}
				return
			}
			if len(evs) != 1 || evs[0].InvolvedObject.Kind != "PersistentVolumeClaim" || evs[0].Type != corev1.EventTypeNormal ||
				!strings.Contains(evs[0].Message, sourceNode) || !strings.Contains(evs[0].Message, "src") && !strings.Contains(evs[0].Message, snapHandle) {
				t.Errorf("Events %+v, want one on the claim naming the node and the source", evs)
			}
			// Idempotent: once the cache shows the annotation, nothing more.
			testdisk.WaitFor(t, "the claim cache to show the annotation", func() bool {
				c, err := h.c.claims.PersistentVolumeClaims(ns).Get("restore")
				return err == nil && c.Annotations[AnnSelectedNode] == sourceNode
			})
			before := len(h.writes())
			if _, err := h.c.placeClaim(context.Background(), key); err != nil {
				t.Fatal(err)
			}
			if more := h.writes()[before:]; len(more) != 0 {
				t.Errorf("second look wrote %q", more)
			}
		})
	}
}

// TestPlaceClaimOtherProvisionerAnnotation: a claim handed to another
// provisioner (storage-provisioner annotation) is not ours even in a dhpp
// class.
func TestPlaceClaimOtherProvisionerAnnotation(t *testing.T) {
	claim := restore(wffcClass, fromSnapshot, map[string]string{"volume.kubernetes.io/storage-provisioner": "other.csi.io"})
	h := newSnapHarness(t, testOptions(), true, append(storageClasses(), claim), snapshotOf(dhpp.DriverName, snapHandle, true))
	if _, err := h.c.placeClaim(context.Background(), ns+"/restore"); err != nil {
		t.Fatal(err)
	}
	if w := h.writes(); len(w) != 0 {
		t.Errorf("wrote %q", w)
	}
}

// preContent is a VolumeSnapshotContent made from a snapshot handle.
func preContent(name, driver, handle string, labels map[string]string) *snapshotv1.VolumeSnapshotContent {
	return &snapshotv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), Labels: labels},
		Spec: snapshotv1.VolumeSnapshotContentSpec{Driver: driver,
			VolumeSnapshotRef: corev1.ObjectReference{Namespace: ns, Name: "pre"},
			Source:            snapshotv1.VolumeSnapshotContentSource{SnapshotHandle: new(handle)}},
	}
}

// TestLabelContent: only unlabelled pre-provisioned contents of dhpp with a
// dhpp snapshot ID get the managed-by label of their node.
func TestLabelContent(t *testing.T) {
	dynamic := snapshotOf(dhpp.DriverName, snapHandle, true)[1].(*snapshotv1.VolumeSnapshotContent)
	dynamic.Labels = nil
	tests := []struct {
		name    string
		content *snapshotv1.VolumeSnapshotContent
		want    string // the label afterwards
		labels  bool   // the controller labelled it
	}{
		{name: "pre-provisioned, unlabelled", content: preContent("c", dhpp.DriverName, snapHandle, nil), want: sourceNode, labels: true},
		{name: "already labelled, another node", content: preContent("c", dhpp.DriverName, snapHandle, map[string]string{LabelManagedBy: otherNode}), want: otherNode},
		{name: "another driver", content: preContent("c", "other.csi.io", snapHandle, nil)},
		{name: "handle not dhpp's format", content: preContent("c", dhpp.DriverName, "snap-123", nil)},
		{name: "dynamic content (the snapshot-controller's)", content: dynamic},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newSnapHarness(t, testOptions(), true, nil, []runtime.Object{tc.content})
			if _, err := h.c.labelContent(context.Background(), tc.content.Name); err != nil {
				t.Fatal(err)
			}
			got, err := h.snaps.SnapshotV1().VolumeSnapshotContents().Get(context.Background(), tc.content.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if l := got.Labels[LabelManagedBy]; l != tc.want {
				t.Errorf("label %s = %q, want %q", LabelManagedBy, l, tc.want)
			}
			patches := 0
			for _, a := range h.snaps.Actions() {
				if a.GetVerb() == "patch" {
					patches++
				}
			}
			if want := map[bool]int{true: 1}[tc.labels]; patches != want || h.count(ActionLabelContent, ResultSuccess) != want {
				t.Errorf("%d patches, label_content success %d; want %d", patches, h.count(ActionLabelContent, ResultSuccess), want)
			}
			if tc.labels && len(h.events(ReasonContentLabelled)) != 1 {
				t.Errorf("want one %s Event", ReasonContentLabelled)
			}
		})
	}
}

// TestSnapshotCRDsAbsent: without the snapshot CRDs the controller still
// releases a lost volume; it keeps looking for the CRDs, and once they
// appear it labels a pre-provisioned content and places a restore.
func TestSnapshotCRDsAbsent(t *testing.T) {
	wffc := class("recreate")
	wffc.VolumeBindingMode = new(storagev1.VolumeBindingWaitForFirstConsumer)
	objs := append(replica("web-0", lostNode, nil), wffc, restore(wffcClass, fromSnapshot, nil))
	w := newWorld(t, objs...)
	snaps := snapfake.NewSimpleClientset(append(snapshotOf(dhpp.DriverName, snapHandle, true), preContent("pre", dhpp.DriverName, snapHandle, nil))...)
	opts := testOptions()
	opts.Grace, opts.Retry = 0, 100*time.Millisecond
	c, err := New(w.cs, snaps, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	var present atomic.Bool
	var lookups atomic.Int32
	c.lookupSnapshotAPI = func() (bool, error) { lookups.Add(1); return present.Load(), nil }
	c.snaps.every = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx, 1) }()
	testdisk.WaitFor(t, "the lost volume's claim to be released without snapshot CRDs", func() bool { w.collect(); return w.claim("data-web-0") == nil })
	testdisk.WaitFor(t, "discovery to be retried", func() bool { return lookups.Load() >= 3 })
	if _, _, ok := c.snaps.listers(); ok {
		t.Fatal("snapshot caches started although the CRDs are absent")
	}
	present.Store(true)
	testdisk.WaitFor(t, "the pre-provisioned content to be labelled", func() bool {
		got, err := snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, "pre", metav1.GetOptions{})
		return err == nil && got.Labels[LabelManagedBy] == sourceNode
	})
	// The restore was looked at before the CRDs appeared: it is retried.
	testdisk.WaitFor(t, "the restore to be placed", func() bool { return w.claim("restore").Annotations[AnnSelectedNode] == sourceNode })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestInstalled reads the snapshot API from discovery.
func TestInstalled(t *testing.T) {
	w := newWorld(t)
	d := w.cs.Discovery().(*fakediscovery.FakeDiscovery)
	if ok, err := installed(d); ok || err != nil {
		t.Errorf("no snapshot API: installed = %v, %v; want false, nil", ok, err)
	}
	d.Resources = []*metav1.APIResourceList{{GroupVersion: snapshotGroupVersion, APIResources: []metav1.APIResource{{Name: "volumesnapshots"}}}}
	if ok, _ := installed(d); ok {
		t.Error("only volumesnapshots: installed = true, want false")
	}
	d.Resources[0].APIResources = append(d.Resources[0].APIResources, metav1.APIResource{Name: "volumesnapshotcontents"})
	if ok, err := installed(d); !ok || err != nil {
		t.Errorf("both resources: installed = %v, %v; want true", ok, err)
	}
}

// TestMain turns off client-go's streaming list for the informers: the
// snapshot client's fake (external-snapshotter v8) cannot serve it, and its
// generated informers do not tell the reflector so (client-go's own fake
// does), so their caches would never sync in tests.
func TestMain(m *testing.M) {
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}
