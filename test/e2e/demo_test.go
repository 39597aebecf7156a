//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// demoManifest is the StatefulSet the README's first command applies.
const demoManifest = "../../deploy/examples/statefulset.yaml"

// TestDemoManifest applies the demo StatefulSet, moved into a namespace of
// its own (so a user's demo on the same cluster is left alone), and checks
// what the README promises: 3 Bound PVCs whose PVs are pinned to the nodes
// their pods run on, one per node.
func TestDemoManifest(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 10*time.Minute)
	ns := e.namespace(t, "demo")
	b, err := os.ReadFile(filepath.FromSlash(demoManifest))
	if err != nil {
		t.Fatal(err)
	}
	var docs []string
	for _, d := range strings.Split(string(b), "\n---\n") {
		if strings.Contains(d, "\nkind: Namespace\n") {
			continue
		}
		docs = append(docs, strings.ReplaceAll(d, "namespace: dhpp-demo", "namespace: "+ns))
	}
	if len(docs) != 2 {
		t.Fatalf("%s: want a Namespace, a Service and a StatefulSet, found %d other documents", demoManifest, len(docs))
	}
	e.applyYAML(t, ctx, strings.Join(docs, "\n---\n"))

	nodes := map[string]bool{}
	for i := 0; i < 3; i++ {
		pod := e.waitPodReady(t, ctx, ns, fmt.Sprintf("demo-%d", i), "", 5*time.Minute)
		pvc, pv := e.waitPVCBound(t, ctx, ns, fmt.Sprintf("data-demo-%d", i), time.Minute)
		n, err := pvNode(pv)
		if err != nil {
			t.Fatal(err)
		}
		if n != pod.Spec.NodeName {
			t.Errorf("PV %s pinned to %s, pod demo-%d on %s", pv.Name, n, i, pod.Spec.NodeName)
		}
		if got := pvc.Status.Capacity.Storage().String(); got != "1Gi" {
			t.Errorf("claim %s capacity %s, want 1Gi", pvc.Name, got)
		}
		nodes[n] = true
		logs, _ := e.cfg.Kubectl(ctx, "-n", ns, "logs", pod.Name)
		if !strings.Contains(logs, "first started on "+n) {
			t.Errorf("demo-%d logs %q, want it to name its node %s", i, logs, n)
		}
	}
	if len(nodes) != 3 {
		t.Errorf("volumes on %v, want one on each of the 3 nodes", nodes)
	}
	out, _ := e.cfg.Kubectl(ctx, "-n", ns, "get", "pvc", "-o", "wide")
	t.Logf("kubectl get pvc:\n%s", out)
}
