//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/kubectl"
	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/test/e2e/cluster"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestRestoreFromTrash: a claim deleted by mistake comes back with its
// bytes through `kubectl dhpp trash` and `kubectl dhpp restore`, without
// SSH and without restarting the driver; a purged entry and a fenced pool
// are refused with exit code 1; the restored PV is csi-provisioner's to
// delete like any other.
func TestRestoreFromTrash(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 10*time.Minute)
	dhpp := kubectlDhpp(t, ctx, e)
	ns := e.namespace(t, "restore")
	node := nodeNames()[0]

	e.applyYAML(t, ctx, pvcYAML(ns, "data", "64Mi", false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, "writer", "data", podOpts{node: node}))
	e.waitPodReady(t, ctx, ns, "writer", "", 3*time.Minute)
	e.sh(t, ctx, ns, "writer", "head -c 4194304 /dev/urandom > /data/blob && sync")
	sum := strings.Fields(e.sh(t, ctx, ns, "writer", "md5sum /data/blob"))[0]
	_, pv := e.waitPVCBound(t, ctx, ns, "data", time.Minute)
	driverBefore, err := e.driverPod(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("claim %s/data on PV %s (%s), 4 MiB written, md5 %s", ns, pv.Name, pv.Spec.CSI.VolumeHandle, sum)

	// The mistake.
	if err := e.cs.CoreV1().Pods(ns).Delete(ctx, "writer", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitPodGone(t, ctx, ns, "writer", 2*time.Minute)
	if err := e.cs.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()

	// The trash lists it within seconds (the driver republishes on change,
	// rounds at least 2 s apart).
	var entry string
	if err := poll(ctx, 2*time.Minute, 2*time.Second, "the deleted volume in kubectl dhpp trash", func() (bool, string, error) {
		out, err := dhpp("trash", node, "-o", "json")
		if err != nil {
			return false, out, nil
		}
		var l struct{ Items []kubectl.TrashItem }
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			return false, "", fmt.Errorf("trash -o json: %w\n%s", err, out)
		}
		for _, it := range l.Items {
			if it.PV == pv.Name {
				entry = it.Entry
				return it.Namespace == ns && it.Claim == "data" && it.Kind == v1.TrashKindVolume, fmt.Sprintf("%+v", it), nil
			}
		}
		return false, fmt.Sprintf("%d entries, none of PV %s", len(l.Items), pv.Name), nil
	}); err != nil {
		t.Fatal(err)
	}
	out, _ := dhpp("trash", node)
	t.Logf("listed %s after %s; kubectl dhpp trash %s:\n%s", entry, time.Since(deleted).Round(time.Second), node, out)

	t.Run("refusals", func(t *testing.T) {
		out, err := dhpp("restore", "pvc-00000000-0000-0000-0000-000000000000@1700000000000000000", "--to", ns+"/data")
		t.Logf("kubectl dhpp restore <purged entry>: %v\n%s", err, out)
		if code := exitCode(err); code != 1 || !strings.Contains(out, "in no pool's trash: it was purged") {
			t.Errorf("purged entry: exit %d, output %q; want exit 1 naming the cause", code, out)
		}
		if out, err := dhpp("fence", node, defaultPool, "--reason", "e2e restore refusal"); err != nil {
			t.Fatalf("fence: %v\n%s", err, out)
		}
		out, err = dhpp("restore", entry, "--to", ns+"/data")
		t.Logf("kubectl dhpp restore on a fenced pool: %v\n%s", err, out)
		if code := exitCode(err); code != 1 || !strings.Contains(out, "is fenced") || !strings.Contains(out, "kubectl dhpp unfence "+node+" "+defaultPool) {
			t.Errorf("fenced pool: exit %d, output %q; want exit 1 naming the fence and the unfence command", code, out)
		}
		if out, err := dhpp("unfence", node, defaultPool); err != nil {
			t.Fatalf("unfence: %v\n%s", err, out)
		}
	})

	start := time.Now()
	out, err = dhpp("restore", entry, "--to", ns+"/data", "--timeout", "2m")
	t.Logf("kubectl dhpp restore %s --to %s/data (%s): %v\n%s", entry, ns, time.Since(start).Round(100*time.Millisecond), err, out)
	if err != nil {
		t.Fatal("restore failed")
	}
	claim, restored := e.waitPVCBound(t, ctx, ns, "data", time.Minute)
	if restored.Spec.CSI.VolumeHandle != pv.Spec.CSI.VolumeHandle || claim.Spec.VolumeName != restored.Name {
		t.Errorf("restored PV %s handle %s, want the deleted volume's %s", restored.Name, restored.Spec.CSI.VolumeHandle, pv.Spec.CSI.VolumeHandle)
	}
	e.applyYAML(t, ctx, podWithClaimYAML(ns, "reader", "data", podOpts{}))
	e.waitPodReady(t, ctx, ns, "reader", "", 3*time.Minute)
	if got := strings.Fields(e.sh(t, ctx, ns, "reader", "md5sum /data/blob"))[0]; got != sum {
		t.Errorf("restored data md5 %s, want %s", got, sum)
	}
	if p, err := e.driverPod(ctx, node); err != nil || p.UID != driverBefore.UID {
		t.Errorf("driver pod on %s changed during the restore (%v): it must not need a restart", node, err)
	}
	out, err = dhpp("volumes", "-n", ns, "-o", "wide")
	t.Logf("kubectl dhpp volumes -n %s -o wide:\n%s", ns, out)
	if err != nil || !strings.Contains(out, "data") || !strings.Contains(out, restored.Name) {
		t.Errorf("volumes does not show the restored claim: %v", err)
	}
	out, err = dhpp("restore", entry, "--to", ns+"/data")
	t.Logf("kubectl dhpp restore again: %v\n%s", err, out)
	if err != nil || !strings.Contains(out, "was restored already") {
		t.Errorf("a second restore: %v %q, want it reported done", err, out)
	}

	// Deleting the restored claim deletes its volume as for any other.
	if err := e.cs.CoreV1().Pods(ns).Delete(ctx, "reader", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitPodGone(t, ctx, ns, "reader", 2*time.Minute)
	if err := e.cs.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "data", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 2*time.Minute, 2*time.Second, "the restored PV deleted by csi-provisioner", func() (bool, string, error) {
		_, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, restored.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprintf("%v", err), nil
	}); err != nil {
		t.Error(err)
	}
}

// TestDoctorBrokenInstall: with the DaemonSet kept off one node, `kubectl
// dhpp doctor` exits 1 and names the node and the missing driver pod;
// healed, it passes again.
func TestDoctorBrokenInstall(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 15*time.Minute)
	dhpp := kubectlDhpp(t, ctx, e)
	node := nodeNames()[len(nodeNames())-1]
	dss := e.cs.AppsV1().DaemonSets(dhppNamespace)
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/hostname","operator":"NotIn","values":[%q]}]}]}}}}}}}`, node)
	if _, err := dss.Patch(ctx, "dhpp-node", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	healed := false
	heal := func() {
		if healed {
			return
		}
		healed = true
		if _, err := dss.Patch(ctx, "dhpp-node", types.JSONPatchType, []byte(`[{"op":"remove","path":"/spec/template/spec/affinity"}]`), metav1.PatchOptions{}); err != nil {
			t.Errorf("heal the DaemonSet: %v", err)
		}
	}
	t.Cleanup(heal)
	if err := poll(ctx, 5*time.Minute, 2*time.Second, "no driver pod on "+node, func() (bool, string, error) {
		_, err := e.driverPod(ctx, node)
		return err != nil, fmt.Sprintf("%v", err), nil
	}); err != nil {
		t.Fatal(err)
	}
	out, err := dhpp("doctor")
	t.Logf("kubectl dhpp doctor with the DaemonSet off %s: %v\n%s", node, err, out)
	if code := exitCode(err); code != 1 || !strings.Contains(out, "node "+node) || !strings.Contains(out, "no dhpp driver pod") {
		t.Errorf("doctor: exit %d; want 1 and a FAIL naming node %s's missing driver pod", code, node)
	}

	heal()
	if err := poll(ctx, 8*time.Minute, 3*time.Second, "doctor passing after the heal", func() (bool, string, error) {
		out, err := dhpp("doctor")
		return err == nil, out, nil
	}); err != nil {
		t.Fatal(err)
	}
	out, _ = dhpp("doctor")
	t.Logf("kubectl dhpp doctor healed:\n%s", out)
	// Every pool published again (the driver pods restarted with the roll).
	if err := poll(ctx, 2*time.Minute, 2*time.Second, "every node's pool Healthy", func() (bool, string, error) {
		out, err := dhpp("pools", "-o", "json")
		if err != nil {
			return false, out, nil
		}
		var l v1.DhppPoolList
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			return false, "", err
		}
		healthy := 0
		for _, p := range l.Items {
			if p.Status.Health.State == "Healthy" {
				healthy++
			}
		}
		return healthy >= len(nodeNames()), fmt.Sprintf("%d healthy", healthy), nil
	}); err != nil {
		t.Error(err)
	}
}

// exitCode is a command's exit code (0 for no error, -1 if it did not run).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// TestDoctorDataDirNotShared: a node whose data directory is a private
// mount (made so inside the node's mount namespace) gets no driver once
// its driver pod restarts: the container runtime refuses the Bidirectional
// mount. `kubectl dhpp doctor` names the node, the directory and the fix,
// and exits 1; made shared again and the pod restarted, doctor passes and
// reports each pool's data directory shared as the driver sees it.
func TestDoctorDataDirNotShared(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 15*time.Minute)
	dhpp := kubectlDhpp(t, ctx, e)
	node := nodeNames()[len(nodeNames())-1]
	sharedOK := fmt.Sprintf("OK    data directory %s/%s: %s is a shared mount in the driver's container", node, defaultPool, cluster.DataMount)

	out, err := dhpp("doctor")
	t.Logf("kubectl dhpp doctor before: %v\n%s", err, out)
	if err != nil || !strings.Contains(out, sharedOK) {
		t.Fatalf("doctor on the healthy install: %v; want a pass with %q", err, sharedOK)
	}

	restart := func() {
		t.Helper()
		p, err := e.driverPod(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.cs.CoreV1().Pods(dhppNamespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		if err := poll(ctx, 3*time.Minute, time.Second, "a new driver pod on "+node, func() (bool, string, error) {
			n, err := e.driverPod(ctx, node)
			return err == nil && n.UID != p.UID, fmt.Sprintf("%v", err), nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	shared := false
	heal := func() {
		if shared {
			return
		}
		shared = true
		if _, err := cluster.NodeExec(ctx, e.cfg, node, "mount", "--make-shared", cluster.DataMount); err != nil {
			t.Errorf("make %s shared again on %s: %v", cluster.DataMount, node, err)
		}
	}
	t.Cleanup(func() {
		if !shared {
			heal()
			restart()
		}
	})
	e.nodeExec(t, ctx, node, "mount", "--make-private", cluster.DataMount)
	t.Logf("on %s: %s", node, e.nodeExec(t, ctx, node, "findmnt", "-n", "-o", "TARGET,PROPAGATION", cluster.DataMount))
	restart()

	fix := "fix: on node " + node + ", as root: mount --make-rshared " + cluster.DataMount
	if err := poll(ctx, 4*time.Minute, 3*time.Second, "doctor naming "+node+"'s data directory", func() (bool, string, error) {
		out, err = dhpp("doctor")
		return exitCode(err) == 1 && strings.Contains(out, "FAIL  node "+node+": pod ") &&
			strings.Contains(out, "not a shared mount") && strings.Contains(out, fix), out, nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl dhpp doctor with %s private on %s: exit 1\n%s", cluster.DataMount, node, out)

	heal()
	restart()
	if err := poll(ctx, 5*time.Minute, 3*time.Second, "doctor passing with the data directory shared again", func() (bool, string, error) {
		out, err = dhpp("doctor")
		return err == nil && strings.Contains(out, sharedOK), out, nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl dhpp doctor healed:\n%s", out)
}

// TestTrashListsDeletedSnapshot: a deleted VolumeSnapshot's data waits in
// the trash like a volume's; `kubectl dhpp trash` lists it as a Snapshot
// named by its VolumeSnapshot (csi-snapshotter's --extra-create-metadata),
// content and source volume, and `kubectl dhpp restore` refuses it with
// exit 1, saying what it is and what to do instead.
func TestTrashListsDeletedSnapshot(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 10*time.Minute)
	dhpp := kubectlDhpp(t, ctx, e)
	sc := e.snapshots(t)
	ns := e.namespace(t, "snaptrash")
	node := nodeNames()[0]

	e.applyYAML(t, ctx, pvcYAML(ns, "data", "64Mi", false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, "writer", "data", podOpts{node: node}))
	e.waitPodReady(t, ctx, ns, "writer", "", 3*time.Minute)
	_, pv := e.waitPVCBound(t, ctx, ns, "data", time.Minute)
	e.applyYAML(t, ctx, volumeSnapshotYAML(ns, "nightly", "data"))
	_, content := waitSnapshotReady(t, ctx, sc, e, ns, "nightly")
	if err := sc.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "nightly", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()

	// The local cluster purges after 30 s: the entry is looked for at once.
	var item kubectl.TrashItem
	if err := poll(ctx, 25*time.Second, time.Second, "the deleted snapshot in kubectl dhpp trash", func() (bool, string, error) {
		out, err := dhpp("trash", node, "-o", "json")
		if err != nil {
			return false, out, nil
		}
		var l struct{ Items []kubectl.TrashItem }
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			return false, "", fmt.Errorf("trash -o json: %w\n%s", err, out)
		}
		for _, it := range l.Items {
			if it.Kind == v1.TrashKindSnapshot && it.SnapshotContent == content.Name {
				item = it
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%d entries, no snapshot of content %s", len(l.Items), content.Name), nil
	}); err != nil {
		t.Fatal(err)
	}
	out, _ := dhpp("trash", node, "-o", "wide")
	t.Logf("listed %s after %s; kubectl dhpp trash %s -o wide:\n%s", item.Entry, time.Since(deleted).Round(time.Second), node, out)
	if item.Namespace != ns || item.VolumeSnapshot != "nightly" || item.SourceVolumeID != pv.Spec.CSI.VolumeHandle || item.SizeBytes != 64<<20 {
		t.Errorf("trash item %+v: want VolumeSnapshot %s/nightly of volume %s, 64Mi", item, ns, pv.Spec.CSI.VolumeHandle)
	}

	out, err := dhpp("restore", item.Entry, "--to", ns+"/from-snapshot")
	t.Logf("kubectl dhpp restore %s: %v\n%s", item.Entry, err, out)
	want := fmt.Sprintf("is a deleted snapshot (VolumeSnapshot %s/nightly, taken of volume %s), not a volume", ns, pv.Spec.CSI.VolumeHandle)
	if code := exitCode(err); code != 1 || !strings.Contains(out, want) || !strings.Contains(out, "take a new VolumeSnapshot") {
		t.Errorf("restore of a snapshot entry: exit %d; want 1 and %q with what to do instead", code, want)
	}
	if _, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "from-snapshot", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the refused restore left a claim behind: %v", err)
	}
}
