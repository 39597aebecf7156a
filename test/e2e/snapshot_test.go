//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// The snapshot objects deploy/ installs (kustomize base, Helm defaults).
const (
	snapshotClass = "hostpath-dynamic"
	restoreClass  = "hostpath-dynamic-restore"
	// managedByLabel is what the snapshot-controller's
	// --enable-distributed-snapshotting puts on a VolumeSnapshotContent:
	// the node whose csi-snapshotter serves it.
	managedByLabel = "snapshot.storage.kubernetes.io/managed-by"
)

// writeScript fills a volume with what the restores must give back: random
// bytes, a file with its own mode and a sparse file, then syncs so the
// snapshot of the mounted volume sees all of it.
const writeScript = `set -e
dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null
mkdir -p /data/dir && echo "snapshot me" > /data/dir/f && chmod 0640 /data/dir/f
dd if=/dev/urandom of=/data/sparse bs=1M count=1 seek=20 2>/dev/null
sync`

// readScript prints what writeScript left, for comparing two volumes.
const readScript = `cd /data && sha256sum blob dir/f sparse && stat -c '%n %a %s' dir/f sparse`

func (e *env) snapshots(t *testing.T) snapclient.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", e.cfg.KubeconfigPath())
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	c, err := snapclient.NewForConfig(rc)
	if err != nil {
		t.Fatalf("snapshot client: %v", err)
	}
	return c
}

func volumeSnapshotYAML(ns, name, claim string) string {
	return fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: %s
  namespace: %s
spec:
  volumeSnapshotClassName: %s
  source:
    persistentVolumeClaimName: %s
`, name, ns, snapshotClass, claim)
}

// waitSnapshotReady waits until a VolumeSnapshot is readyToUse and returns
// it with its content.
func waitSnapshotReady(t *testing.T, ctx context.Context, sc snapclient.Interface, e *env, ns, name string) (*snapshotv1.VolumeSnapshot, *snapshotv1.VolumeSnapshotContent) {
	t.Helper()
	var vs *snapshotv1.VolumeSnapshot
	err := poll(ctx, 3*time.Minute, time.Second, "VolumeSnapshot "+ns+"/"+name+" readyToUse", func() (bool, string, error) {
		s, err := sc.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not found", nil
		}
		if err != nil {
			return false, "", err
		}
		vs = s
		st := s.Status
		if st == nil {
			return false, "no status", nil
		}
		if st.Error != nil && st.Error.Message != nil {
			return false, "error: " + *st.Error.Message, nil
		}
		return st.ReadyToUse != nil && *st.ReadyToUse, fmt.Sprintf("readyToUse %v content %v", st.ReadyToUse, st.BoundVolumeSnapshotContentName), nil
	})
	if err != nil {
		e.describe(t, ctx, ns, "volumesnapshot", name)
		t.Fatal(err)
	}
	content, err := sc.SnapshotV1().VolumeSnapshotContents().Get(ctx, *vs.Status.BoundVolumeSnapshotContentName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("content of %s/%s: %v", ns, name, err)
	}
	return vs, content
}

// restoreOnSourceNode creates a claim from a snapshot or a claim on the
// restore class, waits until it is bound, checks its PV is on node (no
// pinning: the claim names no node and the pod has no nodeSelector) and
// starts a pod on it; it returns the pod and how long the claim took to
// bind.
func restoreOnSourceNode(t *testing.T, ctx context.Context, e *env, ns, claim, size, kind, source, node string) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	e.applyYAML(t, ctx, sourcedPVCYAML(ns, claim, restoreClass, size, kind, source))
	_, pv := e.waitPVCBound(t, ctx, ns, claim, 5*time.Minute)
	bind := time.Since(start)
	got, err := pvNode(pv)
	if err != nil {
		t.Fatal(err)
	}
	if got != node {
		t.Fatalf("claim %s from %s %s is on %s, want the source's node %s", claim, kind, source, got, node)
	}
	t.Logf("claim %s (%s from %s %s) bound on %s in %s", claim, size, kind, source, node, bind.Round(100*time.Millisecond))
	pod := claim
	e.applyYAML(t, ctx, podWithClaimYAML(ns, pod, claim, podOpts{}))
	p := e.waitPodReady(t, ctx, ns, pod, "", 3*time.Minute)
	if p.Spec.NodeName != node {
		t.Fatalf("pod %s runs on %s, want %s", pod, p.Spec.NodeName, node)
	}
	return pod, bind
}

// TestSnapshotRestoreClone runs the snapshot life cycle on a btrfs node
// (subvolume snapshots) and on the ext4 node (loop images): snapshot a
// written volume, restore it, clone the claim, restore into a larger claim,
// delete the source and restore again, delete the snapshot. Every restore
// and clone goes to the restore class without naming a node and must land
// on the source's node with the source's bytes.
func TestSnapshotRestoreClone(t *testing.T) {
	e := dhppCluster(t)
	sc := e.snapshots(t)
	for _, node := range []string{btrfsNode, loopNode} {
		t.Run(nodeFS(node), func(t *testing.T) {
			snapshotLifeCycle(t, e, sc, node)
		})
	}
}

func snapshotLifeCycle(t *testing.T, e *env, sc snapclient.Interface, node string) {
	ctx := testCtx(t, 25*time.Minute)
	ns := e.namespace(t, "snap")
	const size = "64Mi"

	e.applyYAML(t, ctx, pvcYAML(ns, "src", size, false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, "src", "src", podOpts{node: node}))
	e.waitPodReady(t, ctx, ns, "src", "", 3*time.Minute)
	e.sh(t, ctx, ns, "src", writeScript)
	want := e.sh(t, ctx, ns, "src", readScript)
	t.Logf("source on %s:\n%s", node, want)

	start := time.Now()
	e.applyYAML(t, ctx, volumeSnapshotYAML(ns, "snap", "src"))
	vs, content := waitSnapshotReady(t, ctx, sc, e, ns, "snap")
	t.Logf("snapshot readyToUse in %s, restoreSize %v, content %s", time.Since(start).Round(100*time.Millisecond), vs.Status.RestoreSize, content.Name)
	if got := content.Labels[managedByLabel]; got != node {
		t.Errorf("content %s label %s=%q, want the source's node %s (snapshot-controller --enable-distributed-snapshotting)", content.Name, managedByLabel, got, node)
	}
	if content.Status == nil || content.Status.SnapshotHandle == nil || *content.Status.SnapshotHandle == "" {
		t.Errorf("content %s has no snapshot handle: %+v", content.Name, content.Status)
	}

	// The source changes after the snapshot; the restore must not see it.
	e.sh(t, ctx, ns, "src", "echo changed > /data/dir/f && rm /data/blob && sync")

	// Restore into a claim of the same size, no node named anywhere.
	pod, _ := restoreOnSourceNode(t, ctx, e, ns, "restore", size, "VolumeSnapshot", "snap", node)
	if got := e.sh(t, ctx, ns, pod, readScript); got != want {
		t.Errorf("restore reads\n%s\nwant the snapshot's\n%s", got, want)
	}
	// Restore and source are separate volumes.
	e.sh(t, ctx, ns, pod, "echo restored-only > /data/new && sync")
	if out := e.sh(t, ctx, ns, "src", "cat /data/new 2>/dev/null || echo absent"); out != "absent" {
		t.Errorf("a write to the restore shows in the source: %q", out)
	}

	// Clone of the (changed) source claim.
	wantClone := e.sh(t, ctx, ns, "src", "cd /data && sha256sum dir/f sparse")
	clone, _ := restoreOnSourceNode(t, ctx, e, ns, "clone", size, "PersistentVolumeClaim", "src", node)
	if got := e.sh(t, ctx, ns, clone, "cd /data && sha256sum dir/f sparse && test ! -e blob && echo blob-gone-as-in-source"); got != wantClone+"\nblob-gone-as-in-source" {
		t.Errorf("clone reads\n%s\nwant the source's\n%s", got, wantClone)
	}

	// A restore larger than the source: same bytes, and the pod can use
	// the larger size (96 MiB of data did not fit the 64 MiB source).
	big, _ := restoreOnSourceNode(t, ctx, e, ns, "bigger", "128Mi", "VolumeSnapshot", "snap", node)
	if got := e.sh(t, ctx, ns, big, readScript); got != want {
		t.Errorf("larger restore reads\n%s\nwant the snapshot's\n%s", got, want)
	}
	e.sh(t, ctx, ns, big, "rm /data/blob /data/sparse && dd if=/dev/zero of=/data/fill bs=1M count=96 conv=fsync 2>&1 && rm /data/fill")
	t.Logf("wrote 96 MiB into the 128Mi restore of a 64Mi snapshot; df: %s", e.sh(t, ctx, ns, big, "df -k /data | tail -1"))

	// Delete the source (pod, claim, PV): the snapshot still restores.
	if err := e.cs.CoreV1().Pods(ns).Delete(ctx, "src", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitPodGone(t, ctx, ns, "src", 2*time.Minute)
	srcPV, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "src", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.cs.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "src", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 3*time.Minute, time.Second, "source PV "+srcPV.Spec.VolumeName+" deleted", func() (bool, string, error) {
		_, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, srcPV.Spec.VolumeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		return false, "still there", err
	}); err != nil {
		t.Fatal(err)
	}
	again, _ := restoreOnSourceNode(t, ctx, e, ns, "after-source-deleted", size, "VolumeSnapshot", "snap", node)
	if got := e.sh(t, ctx, ns, again, readScript); got != want {
		t.Errorf("restore after the source was deleted reads\n%s\nwant the snapshot's\n%s", got, want)
	}

	// Deleting the VolumeSnapshot (deletionPolicy Delete) removes its
	// content, which csi-snapshotter releases only after DeleteSnapshot
	// succeeded on the node.
	start = time.Now()
	if err := sc.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "snap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 3*time.Minute, time.Second, "VolumeSnapshot and content "+content.Name+" deleted", func() (bool, string, error) {
		_, err := sc.SnapshotV1().VolumeSnapshotContents().Get(ctx, content.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = sc.SnapshotV1().VolumeSnapshots(ns).Get(ctx, "snap", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, "", nil
			}
			return false, "snapshot still there", err
		}
		return false, "content still there", err
	}); err != nil {
		e.describe(t, ctx, ns, "volumesnapshot", "snap")
		t.Fatal(err)
	}
	t.Logf("VolumeSnapshot and its content deleted in %s", time.Since(start).Round(100*time.Millisecond))
	// The restored volumes do not depend on the snapshot.
	if got := e.sh(t, ctx, ns, again, readScript); got != want {
		t.Errorf("restore reads after the snapshot was deleted\n%s\nwant\n%s", got, want)
	}
}
