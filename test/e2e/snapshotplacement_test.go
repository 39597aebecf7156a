//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/controller"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// sourcedPVCYAML is a claim of class whose dataSource is a VolumeSnapshot
// or a claim (kind "PersistentVolumeClaim").
func sourcedPVCYAML(ns, name, class, size, kind, source string) string {
	group := ""
	if kind == "VolumeSnapshot" {
		group = "\n    apiGroup: snapshot.storage.k8s.io"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %s
  namespace: %s
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: %s
  resources:
    requests: {storage: %s}
  dataSource:
    kind: %s
    name: %s%s
`, name, ns, class, size, kind, source, group)
}

// TestSnapshotPlacement: a restore and a clone in the default class
// (WaitForFirstConsumer), used by pods that name no node, bind on the
// source's node because dhpp-controller points them there (Event
// SourceNodeSelected), and read the source's data. Without the
// controller the scheduler picks among four nodes knowing nothing of the
// source, and every wrong pick only sends the pod back (README "Which class
// for restores and clones"). A pre-provisioned content of the same snapshot
// gets its node's managed-by label and becomes ready.
func TestSnapshotPlacement(t *testing.T) {
	e := dhppCluster(t)
	sc := e.snapshots(t)
	ctx := testCtx(t, 15*time.Minute)
	ns := e.namespace(t, "place")
	const size = "64Mi"
	node := btrfsNode

	e.applyYAML(t, ctx, pvcYAML(ns, "src", size, false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, "src", "src", podOpts{node: node}))
	e.waitPodReady(t, ctx, ns, "src", "", 3*time.Minute)
	e.sh(t, ctx, ns, "src", writeScript)
	want := e.sh(t, ctx, ns, "src", readScript)
	e.applyYAML(t, ctx, volumeSnapshotYAML(ns, "snap", "src"))
	_, content := waitSnapshotReady(t, ctx, sc, e, ns, "snap")

	for _, tc := range []struct{ claim, kind, source string }{
		{"restore", "VolumeSnapshot", "snap"},
		{"clone", "PersistentVolumeClaim", "src"},
	} {
		t.Run(tc.claim, func(t *testing.T) {
			start := time.Now()
			e.applyYAML(t, ctx, sourcedPVCYAML(ns, tc.claim, storageClass, size, tc.kind, tc.source))
			e.applyYAML(t, ctx, podWithClaimYAML(ns, tc.claim, tc.claim, podOpts{}))
			_, pv := e.waitPVCBound(t, ctx, ns, tc.claim, 3*time.Minute)
			bind := time.Since(start)
			got, err := pvNode(pv)
			if err != nil {
				t.Fatal(err)
			}
			if got != node {
				t.Fatalf("claim %s from %s %s is on %s, want the source's node %s", tc.claim, tc.kind, tc.source, got, node)
			}
			p := e.waitPodReady(t, ctx, ns, tc.claim, "", 3*time.Minute)
			if p.Spec.NodeName != node {
				t.Fatalf("pod %s runs on %s, want %s", tc.claim, p.Spec.NodeName, node)
			}
			checkSourceNodeSelected(t, ctx, e, ns, tc.claim, node)
			if out := e.sh(t, ctx, ns, tc.claim, readScript); out != want {
				t.Errorf("%s reads\n%s\nwant the source's\n%s", tc.claim, out, want)
			}
			t.Logf("%s (%s from %s %s, class %s, unpinned pod) bound on %s in %s", tc.claim, size, tc.kind, tc.source, storageClass, node, bind.Round(100*time.Millisecond))
		})
	}

	t.Run("pre-provisioned", func(t *testing.T) {
		preProvisioned(t, ctx, e, sc, ns, *content.Status.SnapshotHandle, node)
	})
}

// checkSourceNodeSelected: the claim carries dhpp-controller's Event naming
// the node, so the placement was the controller's doing, not a lucky pick.
func checkSourceNodeSelected(t *testing.T, ctx context.Context, e *env, ns, claim, node string) {
	t.Helper()
	evs, err := e.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.AndSelectors(
		fields.OneTermEqualSelector("involvedObject.name", claim),
		fields.OneTermEqualSelector("reason", controller.ReasonSourceNodeSelected)).String()})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs.Items {
		if ev.InvolvedObject.Kind == "PersistentVolumeClaim" && strings.Contains(ev.Message, fmt.Sprintf("%q", node)) {
			t.Logf("Event %s: %s", ev.Reason, ev.Message)
			return
		}
	}
	e.describe(t, ctx, ns, "pvc", claim)
	t.Errorf("claim %s has no %s Event naming %s (%d such Events)", claim, controller.ReasonSourceNodeSelected, node, len(evs.Items))
}

// preProvisioned binds a VolumeSnapshot to a content made by hand from
// handle (deletionPolicy Retain, so deleting it leaves the snapshot): the
// controller labels the content with the handle's node, whose
// csi-snapshotter then makes the snapshot ready.
func preProvisioned(t *testing.T, ctx context.Context, e *env, sc snapclient.Interface, ns, handle, node string) {
	name := "pre-" + ns
	e.applyYAML(t, ctx, fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotContent
metadata:
  name: %[1]s
spec:
  deletionPolicy: Retain
  driver: hostpath.dhpp.io
  volumeSnapshotClassName: %[4]s
  source:
    snapshotHandle: %[2]s
  volumeSnapshotRef:
    name: pre
    namespace: %[3]s
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: pre
  namespace: %[3]s
spec:
  volumeSnapshotClassName: %[4]s
  source:
    volumeSnapshotContentName: %[1]s
`, name, handle, ns, snapshotClass))
	t.Cleanup(func() {
		_ = sc.SnapshotV1().VolumeSnapshotContents().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	_, content := waitSnapshotReady(t, ctx, sc, e, ns, "pre")
	if got := content.Labels[managedByLabel]; got != node {
		t.Errorf("pre-provisioned content %s label %s=%q, want %s", name, managedByLabel, got, node)
	}
	evs, err := e.cs.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{FieldSelector: fields.AndSelectors(
		fields.OneTermEqualSelector("involvedObject.name", name),
		fields.OneTermEqualSelector("reason", controller.ReasonContentLabelled)).String()})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Items) == 0 {
		t.Errorf("no %s Event on content %s: labelled by someone else?", controller.ReasonContentLabelled, name)
	}
	// The pre-provisioned snapshot restores too (and is placed like any).
	e.applyYAML(t, ctx, sourcedPVCYAML(ns, "from-pre", storageClass, "64Mi", "VolumeSnapshot", "pre"))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, "from-pre", "from-pre", podOpts{}))
	p := e.waitPodReady(t, ctx, ns, "from-pre", "", 4*time.Minute)
	if p.Spec.NodeName != node {
		t.Errorf("pod of the restore from the pre-provisioned snapshot runs on %s, want %s", p.Spec.NodeName, node)
	}
}
