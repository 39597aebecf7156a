//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/controller"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/orphans"
	"github.com/dhpp-io/dhpp/test/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// What deploy/kustomize/overlays/local gives dhpp-controller.
const (
	controllerSelector = "app.kubernetes.io/name=dhpp,app.kubernetes.io/component=controller"
	lossGrace          = 20 * time.Second // --grace-period
	fenceLimit         = 30 * time.Second // --fenced-pool-limit
	leaseDuration      = 15 * time.Second // --leader-election-lease-duration (default)
	// What the local overlay gives dhpp-driver.
	orphanGrace  = 30 * time.Second // --orphan-grace
	orphanPeriod = 5 * time.Second  // --orphan-check-period
	trashKeep    = 30 * time.Second // --trash-retention
	// recreateClass is hostpath-dynamic with nodeLossPolicy: recreate,
	// made by the tests (the driver must accept the parameter).
	recreateClass = "dhpp-e2e-recreate"
)

// replica is one StatefulSet replica as it was before a loss.
type replica struct {
	pod, podUID, node, claimUID, pv, volume, token string
}

// lossSTSYAML is a StatefulSet whose replicas (required anti-affinity)
// each write a token to a fresh volume once and keep it.
func lossSTSYAML(ns, name, class string, replicas int) string {
	return stsYAML(stsOpts{ns: ns, name: name, class: class, size: "64Mi", replicas: replicas,
		setup: `[ -f /data/token ] || echo "$HOSTNAME $(date +%s%N) $RANDOM" > /data/token`,
		ready: []string{"test", "-f", "/data/token"}})
}

// useRecreateClass creates recreateClass for one test.
func (e *env) useRecreateClass(t *testing.T, ctx context.Context) {
	t.Helper()
	base, err := e.cs.StorageV1().StorageClasses().Get(ctx, storageClass, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sc := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: recreateClass},
		Provisioner:          base.Provisioner,
		Parameters:           map[string]string{dhpp.ParamNodeLossPolicy: string(controller.PolicyRecreate)},
		ReclaimPolicy:        base.ReclaimPolicy,
		VolumeBindingMode:    base.VolumeBindingMode,
		AllowVolumeExpansion: base.AllowVolumeExpansion,
	}
	if _, err := e.cs.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.cs.StorageV1().StorageClasses().Delete(context.Background(), recreateClass, metav1.DeleteOptions{})
	})
}

// replicas waits for n replicas of a StatefulSet and records them.
func (e *env) replicas(t *testing.T, ctx context.Context, ns, name string, n int) []replica {
	t.Helper()
	var out []replica
	for i := range n {
		pod := e.waitPodReady(t, ctx, ns, fmt.Sprintf("%s-%d", name, i), "", 5*time.Minute)
		pvc, pv := e.waitPVCBound(t, ctx, ns, fmt.Sprintf("data-%s-%d", name, i), time.Minute)
		token, err := e.exec(ctx, ns, pod.Name, "cat", "/data/token")
		token = strings.TrimSpace(token)
		if err != nil || token == "" {
			t.Fatalf("token of %s: %q %v", pod.Name, token, err)
		}
		out = append(out, replica{pod: pod.Name, podUID: string(pod.UID), node: pod.Spec.NodeName,
			claimUID: string(pvc.UID), pv: pv.Name, volume: volumeName(pv), token: token})
	}
	return out
}

// leader is the dhpp-controller pod that holds the Lease.
func (e *env) leader(t *testing.T, ctx context.Context) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := poll(ctx, 2*time.Minute, time.Second, "dhpp-controller leader", func() (bool, string, error) {
		l, err := e.cs.CoordinationV1().Leases(dhppNamespace).Get(ctx, controller.LeaseName, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return false, fmt.Sprintf("lease: %v", err), nil
		}
		name, _, _ := strings.Cut(*l.Spec.HolderIdentity, "_")
		p, err := e.cs.CoreV1().Pods(dhppNamespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Sprintf("holder %s: %v", *l.Spec.HolderIdentity, err), nil
		}
		pod = p
		return podReady(p), podStatus(p), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// victim picks the node of a replica to lose: a btrfs node (its volumes'
// files can be read on the disk) that does not run the controller leader,
// so the measured times are the controller's, not a leader election's.
func (e *env) victim(t *testing.T, ctx context.Context, reps []replica) int {
	t.Helper()
	leaderNode := e.leader(t, ctx).Spec.NodeName
	for i, r := range reps {
		if nodeFS(r.node) == "btrfs" && r.node != leaderNode {
			return i
		}
	}
	t.Fatalf("no replica on a btrfs node without the controller leader (%s): %+v", leaderNode, reps)
	return 0
}

// loseNode loses node (cluster.LoseNode) and brings it back, with the same
// disk, when the test ends, whatever state it is in: the out-of-service
// taint is removed, and a deleted Node re-registers.
func (e *env) loseNode(t *testing.T, ctx context.Context, node string) {
	t.Helper()
	if err := cluster.LoseNode(ctx, e.cfg, node, os.Stderr); err != nil {
		t.Fatalf("lose %s: %v", node, err)
	}
	t.Cleanup(func() { e.restoreNode(t, node) })
}

func (e *env) restoreNode(t *testing.T, node string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := e.cfg.Kubectl(ctx, "taint", "node", node, controller.TaintOutOfService+"-"); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Logf("remove taint: %v", err)
	}
	if err := cluster.RestoreNode(ctx, e.cfg, node, os.Stderr); err != nil {
		if strings.Contains(err.Error(), "is not lost") {
			return
		}
		t.Errorf("restore %s: %v", node, err)
		return
	}
	err := poll(ctx, 4*time.Minute, 2*time.Second, node+" Ready with its dhpp driver", func() (bool, string, error) {
		n, err := e.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				return false, "node not Ready", nil
			}
		}
		p, err := e.driverPod(ctx, node)
		if err != nil {
			return false, err.Error(), nil
		}
		return podReady(p), podStatus(p), nil
	})
	if err != nil {
		t.Errorf("after restore: %v", err)
	}
}

// claimEvents lists the Events with reason on the claim with uid.
func (e *env) claimEvents(ctx context.Context, ns, uid, reason string) ([]corev1.Event, error) {
	evs, err := e.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
		"involvedObject.uid": uid, "reason": reason}.String()})
	if err != nil {
		return nil, err
	}
	return evs.Items, nil
}

// waitReplaced waits until replica r runs again as a new pod with a new,
// Bound claim on another node than lost, and returns it.
func (e *env) waitReplaced(t *testing.T, ctx context.Context, ns string, r replica, lost string, timeout time.Duration) (*corev1.Pod, *corev1.PersistentVolume) {
	t.Helper()
	var pod *corev1.Pod
	var pv *corev1.PersistentVolume
	claim := "data-" + r.pod
	err := poll(ctx, timeout, time.Second, r.pod+" running elsewhere on a new volume", func() (bool, string, error) {
		c, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return false, "claim deleted, not recreated yet", nil
		case err != nil:
			return false, "", err
		case string(c.UID) == r.claimUID:
			return false, fmt.Sprintf("old claim (%s, deleting %v)", c.Status.Phase, c.DeletionTimestamp != nil), nil
		case c.Status.Phase != corev1.ClaimBound:
			return false, "new claim " + string(c.Status.Phase), nil
		}
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, r.pod, metav1.GetOptions{})
		if err != nil {
			return false, "pod: " + err.Error(), nil
		}
		if string(p.UID) == r.podUID || !podReady(p) {
			return false, "new claim Bound; pod " + podStatus(p), nil
		}
		v, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		pod, pv = p, v
		return true, "", nil
	})
	if err != nil {
		e.describe(t, ctx, ns, "pod", r.pod)
		t.Fatal(err)
	}
	n, err := pvNode(pv)
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.NodeName == lost || n == lost || n != pod.Spec.NodeName {
		t.Errorf("%s runs on %s with its new volume on %s; want both on one node other than %s", r.pod, pod.Spec.NodeName, n, lost)
	}
	return pod, pv
}

// checkUntouched: the replicas not on the lost node kept their pod, claim
// and data.
func (e *env) checkUntouched(t *testing.T, ctx context.Context, ns string, reps []replica, lost int) {
	t.Helper()
	for i, r := range reps {
		if i == lost {
			continue
		}
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, r.pod, metav1.GetOptions{})
		if err != nil || string(p.UID) != r.podUID {
			t.Errorf("%s was replaced (%v)", r.pod, err)
			continue
		}
		c, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data-"+r.pod, metav1.GetOptions{})
		if err != nil || string(c.UID) != r.claimUID || c.DeletionTimestamp != nil {
			t.Errorf("claim of %s changed (%v)", r.pod, err)
		}
		if tok, err := e.exec(ctx, ns, r.pod, "cat", "/data/token"); err != nil || strings.TrimSpace(tok) != r.token {
			t.Errorf("%s reads %q (%v), want its own %q", r.pod, tok, err, r.token)
		}
	}
}

// diskToken reads a volume's token straight from node's disk: from the
// volume's directory or, once DeleteVolume moved it, from the pool's
// trash. where says which.
func (e *env) diskToken(ctx context.Context, node, volume string) (token, where string, err error) {
	out, err := cluster.NodeExec(ctx, e.cfg, node, "sh", "-c", fmt.Sprintf(
		"for f in %[1]s/volumes/%[2]s/data/token %[1]s/.dhpp/trash/%[2]s@*/data/token; do [ -f \"$f\" ] && echo \"$f\" && cat \"$f\" && exit 0; done; exit 1",
		cluster.PoolDir, volume))
	if err != nil {
		return "", "", fmt.Errorf("token of volume %s on %s: %w", volume, node, err)
	}
	where, token, _ = strings.Cut(out, "\n")
	return token, where, nil
}

// diskListing lists node's data disk for "nothing else changed": every
// file with its type, size, mode, mtime and ctime, and every directory by
// name (a directory's times change when an entry moves out of it). Left
// out: the pool's trash and tmp, the probe's file (rewritten every
// --health-period) and the volume skip, which is expected to move.
func (e *env) diskListing(ctx context.Context, node, skip string) ([]string, error) {
	out, err := cluster.NodeExec(ctx, e.cfg, node, "sh", "-c", fmt.Sprintf(
		`cd %s && find . \( -path ./dhpp/.dhpp/trash -o -path ./dhpp/.dhpp/tmp -o -path ./dhpp/volumes/%s \) -prune -o -path ./dhpp/.dhpp/health -o -type d -printf 'd %%p %%m\n' -o -printf '%%y %%p %%s %%m %%T@ %%C@\n'`,
		cluster.DataMount, skip))
	if err != nil {
		return nil, fmt.Errorf("list the disk of %s: %w", node, err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	slices.Sort(lines)
	return lines, nil
}

// neighbour is a claim of the default policy (keep) with a pod on node,
// which wrote a file: a volume with a PV that must survive everything the
// node-loss machinery does to the volumes around it.
func (e *env) neighbour(t *testing.T, ctx context.Context, ns, node string) (claim, pvName, volume string) {
	t.Helper()
	claim = "keep-" + node
	e.applyYAML(t, ctx, pvcYAML(ns, claim, "16Mi", false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, claim, claim, podOpts{node: node,
		command: "echo neighbour > /data/file; sync; trap 'exit 0' TERM; while true; do sleep 1; done"}))
	e.waitPodReady(t, ctx, ns, claim, "", 3*time.Minute)
	_, pv := e.waitPVCBound(t, ctx, ns, claim, time.Minute)
	if out := e.sh(t, ctx, ns, claim, "cat /data/file"); strings.TrimSpace(out) != "neighbour" {
		t.Fatalf("neighbour wrote %q", out)
	}
	return claim, pv.Name, volumeName(pv)
}

// TestNodeLossRecreate: under policy recreate, a replica whose node is lost
// (kubelet, containerd and pods killed, then the Node deleted) runs again
// on another node with a new, empty volume within the grace period + 60 s;
// the other replicas are untouched; no PV remains for the lost node. When
// the node returns with its disk, the released volume is an orphan: it is
// reported (Event, metric) and moved to the pool's trash with its data,
// and nothing else on the disk changes (a keep-policy neighbour included).
func TestNodeLossRecreate(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 20*time.Minute)
	ns := e.namespace(t, "loss-recreate")
	e.useRecreateClass(t, ctx)
	e.applyYAML(t, ctx, lossSTSYAML(ns, "db", recreateClass, 3))
	reps := e.replicas(t, ctx, ns, "db", 3)
	k := e.victim(t, ctx, reps)
	lost, r := reps[k].node, reps[k]
	nbClaim, nbPV, nbVolume := e.neighbour(t, ctx, ns, lost)
	t.Logf("losing %s, which holds %s (volume %s) and the keep-policy claim %s (volume %s)", lost, r.pod, r.volume, nbClaim, nbVolume)

	e.loseNode(t, ctx, lost)
	if err := e.cs.CoreV1().Nodes().Delete(ctx, lost, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	signal := time.Now()

	pod, pv := e.waitReplaced(t, ctx, ns, r, lost, lossGrace+3*time.Minute)
	took := time.Since(signal)
	t.Logf("Node deleted -> %s Running on %s with new volume %s: %s (bound: grace %s + 60s)", r.pod, pod.Spec.NodeName, pv.Name, took.Round(100*time.Millisecond), lossGrace)
	if took > lossGrace+60*time.Second {
		t.Errorf("replica back after %s, want within grace %s + 60s", took, lossGrace)
	}
	if tok, err := e.exec(ctx, ns, r.pod, "cat", "/data/token"); err != nil || strings.TrimSpace(tok) == r.token {
		t.Errorf("new volume holds %q (%v): want a fresh token, not the old %q", tok, err, r.token)
	}
	e.checkUntouched(t, ctx, ns, reps, k)

	t.Run("no PV left for the lost node but the keep-policy neighbour's", func(t *testing.T) {
		err := poll(ctx, time.Minute, time.Second, "old PV gone", func() (bool, string, error) {
			pvs, err := e.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, "", err
			}
			var left []string
			kept := false
			for _, p := range pvs.Items {
				if n, _ := pvNode(&p); n == lost && p.Name != nbPV {
					left = append(left, p.Name)
				}
				kept = kept || p.Name == nbPV
			}
			if !kept {
				return false, "", fmt.Errorf("the keep-policy neighbour's PV %s is gone", nbPV)
			}
			return len(left) == 0, "PVs on " + lost + ": " + strings.Join(left, " "), nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("Events on the claim and the Node", func(t *testing.T) {
		for _, reason := range []string{controller.ReasonClaimReleased, controller.ReasonVolumeRemoved} {
			evs, err := e.claimEvents(ctx, ns, r.claimUID, reason)
			if err != nil || len(evs) != 1 {
				t.Errorf("%d %s Events on the old claim (%v), want 1", len(evs), reason, err)
			} else {
				t.Logf("claim event: %s: %s", reason, evs[0].Message)
			}
			if ev := e.nodeEvent(t, ctx, lost, reason, signal); ev == nil {
				t.Errorf("no %s Event on Node %s", reason, lost)
			}
		}
	})

	t.Run("the node returns: the orphan is reported and trashed, nothing else changes", func(t *testing.T) {
		e.nodeReturns(t, ctx, ns, lost, r, nbClaim)
	})
}

// nodeReturns restores node lost, whose replica r was released, and checks
// what its driver does with the orphaned volume: an OrphanVolume Event and
// the trashed counter, the volume in the pool's trash with its data, and
// the rest of the disk (the claim nb's volume among it) unchanged.
func (e *env) nodeReturns(t *testing.T, ctx context.Context, ns, lost string, r replica, nb string) {
	t.Helper()
	before, err := e.diskListing(ctx, lost, r.volume)
	if err != nil {
		t.Fatal(err)
	}
	if tok, where, err := e.diskToken(ctx, lost, r.volume); err != nil || tok != r.token || strings.Contains(where, "/.dhpp/trash/") {
		t.Fatalf("before the return: %q at %s (%v), want %q in volumes/", tok, where, err, r.token)
	}
	restoring := time.Now()
	e.restoreNode(t, lost)
	back := time.Now()
	t.Logf("%s restored, its driver Ready, in %s", lost, back.Sub(restoring).Round(100*time.Millisecond))

	// Reported: the Event names the volume; then it is in the trash, with
	// its data, before --trash-retention purges it.
	id := lost + "/" + defaultPool + "/" + r.volume
	var event time.Time
	if err := poll(ctx, orphanGrace+3*time.Minute, time.Second, "OrphanVolume Event for "+id, func() (bool, string, error) {
		evs, err := e.cs.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
			"involvedObject.kind": "Node", "involvedObject.name": lost, "reason": orphans.ReasonOrphanVolume}.String()})
		if err != nil {
			return false, "", err
		}
		for _, ev := range evs.Items {
			if strings.Contains(ev.Message, "volume "+id+" ") && ev.Type == corev1.EventTypeWarning {
				event = time.Now()
				t.Logf("event: %s", ev.Message)
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%d OrphanVolume Events, none for %s", len(evs.Items), id), nil
	}); err != nil {
		t.Fatal(err)
	}
	var trashed time.Time
	var where string
	if err := poll(ctx, 3*time.Minute, 500*time.Millisecond, r.volume+" in the trash", func() (bool, string, error) {
		tok, w, err := e.diskToken(ctx, lost, r.volume)
		if err != nil {
			return false, err.Error(), nil
		}
		if tok != r.token {
			return false, "", fmt.Errorf("%s holds %q, want %q", w, tok, r.token)
		}
		where, trashed = w, time.Now()
		return strings.Contains(w, "/.dhpp/trash/"), w, nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("node back -> OrphanVolume Event %s, -> in the trash %s (grace %s, period %s); at %s with its data",
		event.Sub(back).Round(100*time.Millisecond), trashed.Sub(back).Round(100*time.Millisecond), orphanGrace, orphanPeriod, where)
	if took := trashed.Sub(back); took > orphanGrace+2*orphanPeriod+time.Minute {
		t.Errorf("trashed %s after the driver was back, want within grace %s + 2 periods + 60s", took, orphanGrace)
	}

	text, err := e.scrape(ctx, lost)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		name string
		want float64
	}{{"dhpp_orphan_volumes_trashed_total", 1}, {"dhpp_orphan_volumes", 0}, {"dhpp_missing_volumes", 0}, {"dhpp_pv_list_failures_total", 0}} {
		if v, found, err := sampleSum(text, m.name, ""); err != nil || !found || v != m.want {
			t.Errorf("%s on %s = %v (found %v, %v), want %v", m.name, lost, v, found, err, m.want)
		}
	}

	after, err := e.diskListing(ctx, lost, r.volume)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, after) {
		t.Errorf("the disk of %s changed besides the orphan:\n%s", lost, lineDiff(before, after))
	}
	t.Logf("the rest of the disk, unchanged (type path size mode mtime ctime):\n%s", strings.Join(after, "\n"))
	if c, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, nb, metav1.GetOptions{}); err != nil || c.Status.Phase != corev1.ClaimBound {
		t.Errorf("neighbour claim %s: %v", nb, err)
	} else if _, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{}); err != nil {
		t.Errorf("neighbour PV: %v", err)
	}
}

// lineDiff lists the lines only in a ("-") or only in b ("+").
func lineDiff(a, b []string) string {
	var out []string
	for _, l := range a {
		if !slices.Contains(b, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range b {
		if !slices.Contains(a, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// TestNodeLossKeep: under the default policy keep, a lost node (tainted
// out-of-service) costs nothing: claim and PV stay, the pod waits
// (Pending), an Event on the claim and the Node says why and how to
// release it; when the node comes back the replica runs there with its data.
func TestNodeLossKeep(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 20*time.Minute)
	ns := e.namespace(t, "loss-keep")
	e.applyYAML(t, ctx, lossSTSYAML(ns, "kp", storageClass, 3))
	reps := e.replicas(t, ctx, ns, "kp", 3)
	k := e.victim(t, ctx, reps)
	lost, r := reps[k].node, reps[k]
	t.Logf("losing %s, which holds %s", lost, r.pod)

	e.loseNode(t, ctx, lost)
	if _, err := e.cfg.Kubectl(ctx, "taint", "node", lost, controller.TaintOutOfService+"=nodeshutdown:NoExecute"); err != nil {
		t.Fatal(err)
	}
	signal := time.Now()

	var ev corev1.Event
	err := poll(ctx, lossGrace+2*time.Minute, time.Second, "LostVolumeKept Event on the claim", func() (bool, string, error) {
		evs, err := e.claimEvents(ctx, ns, r.claimUID, controller.ReasonClaimKept)
		if err != nil || len(evs) == 0 {
			return false, fmt.Sprint(err), nil
		}
		ev = evs[0]
		return true, "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("taint -> Event after %s: %s", time.Since(signal).Round(100*time.Millisecond), ev.Message)
	if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, "Nothing was done") ||
		!strings.Contains(ev.Message, fmt.Sprintf("kubectl delete pvc -n %s data-%s", ns, r.pod)) {
		t.Errorf("Event %s %q does not say why nothing happened and how to release by hand", ev.Type, ev.Message)
	}
	if e.nodeEvent(t, ctx, lost, controller.ReasonClaimKept, signal) == nil {
		t.Errorf("no %s Event on Node %s", controller.ReasonClaimKept, lost)
	}

	// Give the controller time to do something wrong after its decision.
	time.Sleep(10 * time.Second)
	c, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data-"+r.pod, metav1.GetOptions{})
	if err != nil || string(c.UID) != r.claimUID || c.DeletionTimestamp != nil {
		t.Errorf("claim of %s changed under policy keep (%v)", r.pod, err)
	}
	if _, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, r.pv, metav1.GetOptions{}); err != nil {
		t.Errorf("PV %s: %v", r.pv, err)
	}
	if p, err := e.cs.CoreV1().Pods(ns).Get(ctx, r.pod, metav1.GetOptions{}); err == nil && podReady(p) {
		t.Errorf("%s is Ready (%s on %s) while its node is lost", r.pod, podStatus(p), p.Spec.NodeName)
	} else if err == nil {
		t.Logf("%s: %s", r.pod, podStatus(p))
	}
	e.checkUntouched(t, ctx, ns, reps, k)

	t.Run("the node returns and the replica runs there with its data", func(t *testing.T) {
		e.restoreNode(t, lost)
		p := e.waitPodReady(t, ctx, ns, r.pod, r.podUID, 3*time.Minute)
		if p.Spec.NodeName != lost {
			t.Errorf("%s on %s, want back on %s", r.pod, p.Spec.NodeName, lost)
		}
		if tok, err := e.exec(ctx, ns, r.pod, "cat", "/data/token"); err != nil || strings.TrimSpace(tok) != r.token {
			t.Errorf("%s reads %q (%v), want its old %q", r.pod, tok, err, r.token)
		}
	})
}

// TestFencedPoolRecreateLeaderKilled: under policy recreate, a replica on
// a pool fenced longer than the limit (its disk remounted read-only, as
// TestFencing does) is evicted and runs on another node with a new volume;
// its old data stays on the fenced disk byte for byte (in the pool's trash
// once the disk is repaired). The controller's leader is killed after it
// recorded the loss and before it acted: the other replica takes over,
// keeps the recorded deadline and acts once.
func TestFencedPoolRecreateLeaderKilled(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 20*time.Minute)
	ns := e.namespace(t, "loss-fenced")
	e.useRecreateClass(t, ctx)
	e.applyYAML(t, ctx, lossSTSYAML(ns, "fz", recreateClass, 3))
	reps := e.replicas(t, ctx, ns, "fz", 3)
	k := e.victim(t, ctx, reps)
	node, r := reps[k].node, reps[k]
	annotation := kube.UnfenceAnnotationPrefix + defaultPool
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := cluster.NodeExec(cctx, e.cfg, node, "findmnt", "-n", "-o", "OPTIONS", cluster.DataMount); err == nil && strings.HasPrefix(out, "ro") {
			if _, err := cluster.NodeExec(cctx, e.cfg, node, "mount", "-o", "remount,rw", cluster.DataMount); err != nil {
				t.Errorf("cleanup: remount rw: %v", err)
			}
		}
		if st := e.fenceState(cctx, node); st.labelled {
			if _, err := e.cfg.Kubectl(cctx, "annotate", "--overwrite", "node", node, annotation+"=now"); err != nil {
				t.Errorf("cleanup: unfence: %v", err)
			}
		}
	})

	e.remount(t, ctx, node, "ro")
	var fenced time.Time
	if err := poll(ctx, 2*time.Minute, 500*time.Millisecond, node+" fenced", func() (bool, string, error) {
		st := e.fenceState(ctx, node)
		fenced = time.Now()
		return st.labelled, st.String(), nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s fenced; %s on it holds volume %s", node, r.pod, r.volume)

	// Kill the leader once it has recorded the loss on the PV.
	if err := poll(ctx, time.Minute, 500*time.Millisecond, "loss recorded on the PV", func() (bool, string, error) {
		pv, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, r.pv, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		_, ok := pv.Annotations[controller.AnnotationLostSince]
		return ok, fmt.Sprint(pv.Annotations), nil
	}); err != nil {
		t.Fatal(err)
	}
	old := e.leader(t, ctx)
	zero := int64(0)
	if err := e.cs.CoreV1().Pods(dhppNamespace).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed leader %s %s after fencing", old.Name, time.Since(fenced).Round(100*time.Millisecond))

	pod, pv := e.waitReplaced(t, ctx, ns, r, node, fenceLimit+4*time.Minute)
	took := time.Since(fenced)
	t.Logf("fenced -> %s Running on %s with new volume %s: %s (limit %s, leader takeover <= lease %s)", r.pod, pod.Spec.NodeName, pv.Name, took.Round(100*time.Millisecond), fenceLimit, leaseDuration)
	if took > fenceLimit+leaseDuration+60*time.Second {
		t.Errorf("replica back after %s, want within limit %s + lease %s + 60s", took, fenceLimit, leaseDuration)
	}
	e.checkUntouched(t, ctx, ns, reps, k)

	t.Run("the new leader acted once", func(t *testing.T) {
		nl := e.leader(t, ctx)
		if nl.Name == old.Name {
			t.Fatalf("leader still %s", nl.Name)
		}
		text, err := e.scrapePod(ctx, nl)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []string{controller.ActionDeleteClaim, controller.ActionEvictPod} {
			v, _, err := sampleSum(text, "dhpp_controller_actions_total", fmt.Sprintf(`action=%q,result="success"`, a))
			if err != nil || v != 1 {
				t.Errorf("new leader %s: %s success = %v (%v), want 1", nl.Name, a, v, err)
			}
		}
		// The new claim is not deleted again, however often it is looked at.
		c, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data-"+r.pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		c2, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data-"+r.pod, metav1.GetOptions{})
		if err != nil || c2.UID != c.UID || c2.DeletionTimestamp != nil {
			t.Errorf("the new claim was touched (%v)", err)
		}
		evs, err := e.claimEvents(ctx, ns, r.claimUID, controller.ReasonClaimReleased)
		if err != nil || len(evs) != 1 {
			t.Errorf("%d LostVolumeReleased Events on the old claim (%v), want 1", len(evs), err)
		}
		evs, err = e.claimEvents(ctx, ns, r.claimUID, controller.ReasonPodEvicted)
		if err != nil || len(evs) != 1 {
			t.Errorf("%d LostVolumePodEvicted Events on the old claim (%v), want 1", len(evs), err)
		}
	})

	t.Run("old data on the fenced disk, byte for byte", func(t *testing.T) {
		tok, where, err := e.diskToken(ctx, node, r.volume)
		if err != nil || tok != r.token {
			t.Fatalf("old volume on %s: %q at %s (%v), want %q", node, tok, where, err, r.token)
		}
		t.Logf("while fenced: %s", where)
		// Repair and unfence: the node's provisioner deletes the released
		// PV, DeleteVolume moves the data to the trash.
		e.remount(t, ctx, node, "rw")
		if _, err := e.cfg.Kubectl(ctx, "annotate", "--overwrite", "node", node, annotation+"=now"); err != nil {
			t.Fatal(err)
		}
		if err := poll(ctx, 6*time.Minute, 2*time.Second, "old PV deleted by its node", func() (bool, string, error) {
			_, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, r.pv, metav1.GetOptions{})
			return apierrors.IsNotFound(err), fmt.Sprint(err), nil
		}); err != nil {
			t.Fatal(err)
		}
		tok, where, err = e.diskToken(ctx, node, r.volume)
		if err != nil || tok != r.token || !strings.Contains(where, "/.dhpp/trash/") {
			t.Errorf("after unfencing: %q at %s (%v), want %q in the trash", tok, where, err, r.token)
		}
		t.Logf("after unfencing: %s", where)
	})
}

// scrapePod fetches a pod's /metrics on metricsPort.
func (e *env) scrapePod(ctx context.Context, pod *corev1.Pod) (string, error) {
	if pod.Status.PodIP == "" {
		return "", fmt.Errorf("pod %s has no IP", pod.Name)
	}
	return httpGet(ctx, fmt.Sprintf("http://%s:%d/metrics", pod.Status.PodIP, metricsPort))
}
