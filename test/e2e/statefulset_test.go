//go:build e2e

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/test/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStatefulSet is the seed scenario: a 3-replica StatefulSet with one
// replica per node gets one dhpp volume per replica on that replica's node,
// pinned there by the PV's node affinity; the data survives pod deletion and
// scaling; a deleted claim's data goes to the node's trash and is purged
// after the retention.
func TestStatefulSet(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 20*time.Minute)
	ns := e.namespace(t, "sts")
	const name = "es"
	const replicas = 3
	e.applyYAML(t, ctx, statefulSetYAML(ns, name, replicas, "200Mi"))

	podName := func(i int) string { return fmt.Sprintf("%s-%d", name, i) }
	claimName := func(i int) string { return fmt.Sprintf("data-%s-%d", name, i) }

	// Where each replica landed, and its data.
	nodeOf := map[int]string{}
	token := map[int]string{}
	uid := map[int]string{}

	t.Run("PVCs Bound, PVs pinned to their pods' nodes", func(t *testing.T) {
		start := time.Now()
		seen := map[string]bool{}
		for i := 0; i < replicas; i++ {
			pod := e.waitPodReady(t, ctx, ns, podName(i), "", 5*time.Minute)
			_, pv := e.waitPVCBound(t, ctx, ns, claimName(i), time.Minute)
			n, err := pvNode(pv)
			if err != nil {
				t.Fatal(err)
			}
			if n != pod.Spec.NodeName {
				t.Errorf("PV %s of %s is pinned to %s, but the pod runs on %s", pv.Name, podName(i), n, pod.Spec.NodeName)
			}
			if !strings.HasPrefix(pv.Spec.CSI.VolumeHandle, n+"/"+defaultPool+"/") {
				t.Errorf("PV %s volume handle %q does not name node %s and pool %s", pv.Name, pv.Spec.CSI.VolumeHandle, n, defaultPool)
			}
			if seen[n] {
				t.Errorf("two replicas on node %s despite the anti-affinity", n)
			}
			seen[n] = true
			nodeOf[i], uid[i] = n, string(pod.UID)
		}
		t.Logf("3 replicas Ready with Bound volumes in %s: %v", time.Since(start).Round(time.Second), nodeOf)
		out, _ := e.cfg.Kubectl(ctx, "get", "pv", "-o", "custom-columns=PV:.metadata.name,CLAIM:.spec.claimRef.name,NODE:.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]")
		t.Logf("kubectl get pv:\n%s", out)
	})
	if t.Failed() {
		return
	}

	t.Run("each pod writes its own data", func(t *testing.T) {
		for i := 0; i < replicas; i++ {
			token[i] = podName(i) + "@" + nodeOf[i] + "#" + randomHex(t)
			got := e.sh(t, ctx, ns, podName(i), fmt.Sprintf("echo %s > /data/id && sync && cat /data/id", token[i]))
			if got != token[i] {
				t.Fatalf("%s read back %q, want %q", podName(i), got, token[i])
			}
		}
	})
	if t.Failed() {
		return
	}

	// checkData waits for every listed replica to be a new, Ready pod on its
	// original node that reads its own data.
	checkData := func(t *testing.T, which []int) {
		t.Helper()
		for _, i := range which {
			pod := e.waitPodReady(t, ctx, ns, podName(i), uid[i], 5*time.Minute)
			if pod.Spec.NodeName != nodeOf[i] {
				t.Errorf("%s came back on %s, want %s (its volume's node)", podName(i), pod.Spec.NodeName, nodeOf[i])
			}
			if got := e.sh(t, ctx, ns, podName(i), "cat /data/id"); got != token[i] {
				t.Errorf("%s reads %q after coming back, want its own %q", podName(i), got, token[i])
			}
			uid[i] = string(pod.UID)
		}
	}

	t.Run("delete every pod: each comes back on its node with its data", func(t *testing.T) {
		start := time.Now()
		for i := 0; i < replicas; i++ {
			if err := e.cs.CoreV1().Pods(ns).Delete(ctx, podName(i), metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		checkData(t, []int{0, 1, 2})
		t.Logf("all pods back with their data in %s", time.Since(start).Round(time.Second))
	})

	scale := func(t *testing.T, n int) {
		t.Helper()
		if _, err := e.cfg.Kubectl(ctx, "-n", ns, "scale", "statefulset", name, "--replicas="+strconv.Itoa(n)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("scale 3 to 1 to 3 keeps data", func(t *testing.T) {
		scale(t, 1)
		e.waitPodGone(t, ctx, ns, podName(1), 2*time.Minute)
		e.waitPodGone(t, ctx, ns, podName(2), 2*time.Minute)
		for i := 1; i < replicas; i++ {
			c, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claimName(i), metav1.GetOptions{})
			if err != nil {
				t.Errorf("claim %s after scale-down: %v (StatefulSets keep claims)", claimName(i), err)
			} else if c.Status.Phase != corev1.ClaimBound {
				t.Errorf("claim %s after scale-down is %s, want Bound", claimName(i), c.Status.Phase)
			}
		}
		scale(t, 3)
		checkData(t, []int{1, 2})
		if got := e.sh(t, ctx, ns, podName(0), "cat /data/id"); got != token[0] {
			t.Errorf("%s reads %q, want %q", podName(0), got, token[0])
		}
	})
	if t.Failed() {
		return
	}

	t.Run("delete a claim: PV gone, data in the node's trash, purged after retention", func(t *testing.T) {
		const victim = 2
		scale(t, 2)
		e.waitPodGone(t, ctx, ns, podName(victim), 2*time.Minute)
		_, pv := e.waitPVCBound(t, ctx, ns, claimName(victim), time.Minute)
		node, vol := nodeOf[victim], volumeName(pv)
		trash := path.Join(cluster.PoolDir, ".dhpp", "trash")
		deleted := time.Now()
		if err := e.cs.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, claimName(victim), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := poll(ctx, 2*time.Minute, 500*time.Millisecond, "PV "+pv.Name+" deleted", func() (bool, string, error) {
			_, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, "", nil
			}
			return false, "still there", err
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("PV %s gone %s after the claim was deleted", pv.Name, time.Since(deleted).Round(100*time.Millisecond))

		// The trash entry is <name>@<unix nanos of the delete>, and it holds
		// the replica's data (in data/ on btrfs, inside disk.img on the loop
		// backend: grep -a finds the token in either).
		list := e.nodeExec(t, ctx, node, "ls", "-1", trash)
		var entry string
		var trashedAt time.Time
		for _, l := range strings.Fields(list) {
			n, ts, ok := strings.Cut(l, "@")
			if ok && n == vol {
				entry = l
				nanos, err := strconv.ParseInt(ts, 10, 64)
				if err != nil {
					t.Fatalf("trash entry %q: bad timestamp: %v", l, err)
				}
				trashedAt = time.Unix(0, nanos)
			}
		}
		if entry == "" {
			t.Fatalf("no trash entry %s@... on %s in %s:\n%s", vol, node, trash, list)
		}
		if got := e.nodeExec(t, ctx, node, "grep", "-r", "-a", "-l", "-F", token[victim], path.Join(trash, entry)); got == "" {
			t.Errorf("trash entry %s on %s does not hold %s's data", entry, node, podName(victim))
		}
		t.Logf("data of %s is in %s:%s", podName(victim), node, path.Join(trash, entry))

		// Purged after the retention, not before.
		var lastSeen time.Time
		err := poll(ctx, trashRetention+2*time.Minute, time.Second, "trash entry "+entry+" purged", func() (bool, string, error) {
			out, err := cluster.NodeExec(ctx, e.cfg, node, "ls", "-1", trash)
			if err != nil {
				return false, "", err
			}
			if strings.Contains("\n"+out+"\n", "\n"+entry+"\n") {
				lastSeen = time.Now()
				return false, "still in the trash", nil
			}
			return true, "", nil
		})
		if err != nil {
			t.Fatal(err)
		}
		purgedBy := time.Since(trashedAt)
		t.Logf("trash entry purged between %s and %s after the delete (retention %s)",
			lastSeen.Sub(trashedAt).Round(100*time.Millisecond), purgedBy.Round(100*time.Millisecond), trashRetention)
		if lastSeen.Sub(trashedAt) < trashRetention-2*time.Second {
			t.Errorf("trash entry was purged %s after the delete, before the %s retention", lastSeen.Sub(trashedAt), trashRetention)
		}
		// The replicas still running are untouched.
		for i := 0; i < victim; i++ {
			if got := e.sh(t, ctx, ns, podName(i), "cat /data/id"); got != token[i] {
				t.Errorf("%s reads %q, want %q", podName(i), got, token[i])
			}
		}
	})
}

func randomHex(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
