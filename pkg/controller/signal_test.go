package controller

import (
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/kube"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var t0 = time.Date(2026, 11, 29, 7, 0, 0, 0, time.UTC)

func testNode(name string, mod ...func(*corev1.Node)) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	for _, m := range mod {
		m(n)
	}
	return n
}

func outOfService(at time.Time) func(*corev1.Node) {
	return func(n *corev1.Node) {
		ts := metav1.NewTime(at)
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: TaintOutOfService, Value: "nodeshutdown", Effect: corev1.TaintEffectNoExecute, TimeAdded: &ts})
	}
}

// notReady is what a partition or a dead kubelet looks like: the node
// lifecycle controller's condition and taints.
func notReady(n *corev1.Node) {
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionUnknown, LastTransitionTime: metav1.NewTime(t0.Add(-time.Hour))}}
	n.Spec.Taints = append(n.Spec.Taints,
		corev1.Taint{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoSchedule},
		corev1.Taint{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute})
}

func fenced(pool string, at time.Time) func(*corev1.Node) {
	return func(n *corev1.Node) {
		n.Labels[kube.PoolLabelPrefix+pool] = kube.PoolLabelFenced
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: kube.ConditionType, Status: corev1.ConditionFalse,
			Reason: kube.ReasonPoolFenced, LastTransitionTime: metav1.NewTime(at)})
	}
}

func TestNodeSignal(t *testing.T) {
	tests := []struct {
		name       string
		node       *corev1.Node
		fenceLimit time.Duration
		want       SignalKind
		wantSince  time.Time
	}{
		{"node deleted", nil, time.Minute, SignalNodeDeleted, time.Time{}},
		{"out-of-service taint", testNode("n1", outOfService(t0)), time.Minute, SignalNodeOutOfService, t0},
		{"NotReady and unreachable taints alone", testNode("n1", notReady), time.Minute, SignalNone, time.Time{}},
		{"healthy", testNode("n1"), time.Minute, SignalNone, time.Time{}},
		{"pool fenced", testNode("n1", fenced("default", t0)), time.Minute, SignalPoolFenced, t0},
		{"pool fenced, limit 0 = never", testNode("n1", fenced("default", t0)), 0, SignalNone, time.Time{}},
		{"another pool fenced", testNode("n1", fenced("fast", t0)), time.Minute, SignalNone, time.Time{}},
		// With two fenced pools the condition's time is the first one's:
		// it says nothing about this pool.
		{"two pools fenced", testNode("n1", fenced("fast", t0), fenced("default", t0)), time.Minute, SignalPoolFenced, time.Time{}},
		{"out-of-service wins over fenced", testNode("n1", fenced("default", t0), outOfService(t0.Add(time.Minute))), time.Minute, SignalNodeOutOfService, t0.Add(time.Minute)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := nodeSignal(tc.node, "default", tc.fenceLimit)
			if got.Kind != tc.want || !got.Since.Equal(tc.wantSince) {
				t.Errorf("nodeSignal = %s since %v, want %s since %v", got.Kind, got.Since, tc.want, tc.wantSince)
			}
		})
	}
}

func TestDhppVolume(t *testing.T) {
	tests := []struct {
		driver, handle string
		want           volume
		ok             bool
	}{
		{dhpp.DriverName, "n1/default/pvc-1", volume{"n1", "default"}, true},
		{"other.csi.io", "n1/default/pvc-1", volume{}, false},
		{dhpp.DriverName, "n1/pvc-1", volume{}, false},
		{dhpp.DriverName, "n1//pvc-1", volume{}, false},
	}
	for _, tc := range tests {
		pv := &corev1.PersistentVolume{Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{
			CSI: &corev1.CSIPersistentVolumeSource{Driver: tc.driver, VolumeHandle: tc.handle}}}}
		if got, ok := dhppVolume(pv); got != tc.want || ok != tc.ok {
			t.Errorf("dhppVolume(%s, %s) = %v %v, want %v %v", tc.driver, tc.handle, got, ok, tc.want, tc.ok)
		}
	}
	if _, ok := dhppVolume(&corev1.PersistentVolume{}); ok {
		t.Error("a PV without CSI source is a dhpp volume")
	}
}

func TestResolvePolicy(t *testing.T) {
	class := func(v string) *storagev1.StorageClass {
		sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "hostpath-dynamic"}, Parameters: map[string]string{}}
		if v != "" {
			sc.Parameters[dhpp.ParamNodeLossPolicy] = v
		}
		return sc
	}
	claim := func(v string) *corev1.PersistentVolumeClaim {
		pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{}}}
		if v != "" {
			pvc.Annotations[dhpp.AnnotationNodeLossPolicy] = v
		}
		return pvc
	}
	tests := []struct {
		name        string
		pvc         *corev1.PersistentVolumeClaim
		sc          *storagev1.StorageClass
		want        Policy
		wantInvalid bool
	}{
		{"nothing set: keep", claim(""), class(""), PolicyKeep, false},
		{"no class: keep", claim(""), nil, PolicyKeep, false},
		{"class recreate", claim(""), class("recreate"), PolicyRecreate, false},
		{"class keep", claim(""), class("keep"), PolicyKeep, false},
		{"annotation keep overrides class recreate", claim("keep"), class("recreate"), PolicyKeep, false},
		{"annotation recreate overrides class keep", claim("recreate"), class("keep"), PolicyRecreate, false},
		{"annotation recreate, no class", claim("recreate"), nil, PolicyRecreate, false},
		{"typo in annotation is keep, never recreate", claim("Recreate"), class("recreate"), PolicyKeep, true},
		{"typo in class is keep", claim(""), class("delete"), PolicyKeep, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := resolvePolicy(tc.pvc, tc.sc)
			if got.Policy != tc.want || (got.Invalid != "") != tc.wantInvalid || got.Source == "" {
				t.Errorf("resolvePolicy = %+v, want %s (invalid %v)", got, tc.want, tc.wantInvalid)
			}
		})
	}
}
