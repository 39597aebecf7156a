//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/test/e2e/cluster"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestOperatorView runs the `kubectl dhpp` plugin, built from the repo and
// found by kubectl on PATH as a user installs it: `pools` shows every node
// with figures that match the node's disk (statfs in the node), `doctor`
// passes on the healthy install, and fence/unfence round-trips through
// the driver (Node label, published health).
func TestOperatorView(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 10*time.Minute)
	dhppCmd := kubectlDhpp(t, ctx, e)

	var pools v1.DhppPoolList
	t.Run("pools shows every node with its disk's figures", func(t *testing.T) {
		if err := poll(ctx, 2*time.Minute, 2*time.Second, "a published pool per node", func() (bool, string, error) {
			out, err := dhppCmd("pools", "-o", "json")
			if err != nil {
				return false, out, nil
			}
			pools = v1.DhppPoolList{}
			if err := json.Unmarshal([]byte(out), &pools); err != nil {
				return false, "", fmt.Errorf("pools -o json: %w\n%s", err, out)
			}
			seen := map[string]bool{}
			for _, p := range pools.Items {
				if p.Spec.Pool == defaultPool && p.Status.CapacityBytes > 0 {
					seen[p.Spec.Node] = true
				}
			}
			var missing []string
			for _, n := range nodeNames() {
				if !seen[n] {
					missing = append(missing, n)
				}
			}
			return len(missing) == 0, fmt.Sprintf("no figures yet for %v", missing), nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, p := range pools.Items {
			checkPoolAgainstDisk(t, ctx, e, p)
		}
		out, err := dhppCmd("pools")
		if err != nil {
			t.Fatalf("kubectl dhpp pools: %v\n%s", err, out)
		}
		t.Logf("kubectl dhpp pools:\n%s", out)
		for _, n := range nodeNames() {
			if !strings.Contains(out, n+" ") {
				t.Errorf("kubectl dhpp pools has no row for %s", n)
			}
		}
	})
	if t.Failed() {
		return
	}

	t.Run("doctor passes on the healthy install", func(t *testing.T) {
		out, err := dhppCmd("doctor")
		t.Logf("kubectl dhpp doctor:\n%s", out)
		if err != nil {
			t.Errorf("doctor failed on a healthy install: %v", err)
		}
	})

	t.Run("fence and unfence round trip", func(t *testing.T) {
		node := nodeNames()[1]
		start := time.Now()
		out, err := dhppCmd("fence", node, defaultPool, "--reason", "e2e planned maintenance")
		if err != nil {
			t.Fatalf("fence: %v\n%s", err, out)
		}
		t.Logf("fence in %s:\n%s", time.Since(start).Round(100*time.Millisecond), out)
		n, err := e.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The Fencer labels the Node right after the state change.
		if err := poll(ctx, 30*time.Second, time.Second, "the fenced label", func() (bool, string, error) {
			n, err = e.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			return n.Labels[kube.PoolLabelPrefix+defaultPool] == kube.PoolLabelFenced, fmt.Sprintf("labels %v", n.Labels), nil
		}); err != nil {
			t.Error(err)
		}
		out, _ = dhppCmd("pools", "--node", node, "-o", "wide")
		t.Logf("fenced:\n%s", out)
		if !strings.Contains(out, "Fenced") || !strings.Contains(out, "e2e planned maintenance") {
			t.Errorf("pools does not show the fence and its reason:\n%s", out)
		}
		start = time.Now()
		if out, err := dhppCmd("unfence", node, defaultPool); err != nil {
			t.Fatalf("unfence: %v\n%s", err, out)
		}
		t.Logf("unfence in %s", time.Since(start).Round(100*time.Millisecond))
		if err := poll(ctx, 30*time.Second, time.Second, "the fenced label gone", func() (bool, string, error) {
			n, err = e.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			_, has := n.Labels[kube.PoolLabelPrefix+defaultPool]
			return !has, fmt.Sprintf("labels %v", n.Labels), nil
		}); err != nil {
			t.Error(err)
		}
	})
}

// checkPoolAgainstDisk compares a published pool with statfs of the pool
// directory inside its node, and its owner with the Node.
func checkPoolAgainstDisk(t *testing.T, ctx context.Context, e *env, p v1.DhppPool) {
	t.Helper()
	out, err := cluster.NodeExec(ctx, e.cfg, p.Spec.Node, "stat", "-f", "-c", "%b %a %S", cluster.PoolDir)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) != 3 {
		t.Fatalf("stat -f on %s: %q", p.Spec.Node, out)
	}
	blocks, _ := strconv.ParseInt(f[0], 10, 64)
	avail, _ := strconv.ParseInt(f[1], 10, 64)
	bsize, _ := strconv.ParseInt(f[2], 10, 64)
	total, free := blocks*bsize, avail*bsize
	s := p.Status
	t.Logf("%s (%s): published capacity %s free %s used %s backend %s; statfs total %s free %s",
		p.Spec.Node, nodeFS(p.Spec.Node), mib(s.CapacityBytes), mib(s.FreeBytes), mib(s.UsedBytes), s.Backend, mib(total), mib(free))
	if s.CapacityBytes != total/(1<<20)*(1<<20) {
		t.Errorf("%s: capacity %d, statfs says %d", p.Spec.Node, s.CapacityBytes, total)
	}
	// Free space moves as other pods write; the status is at most 30 s old.
	if d := s.FreeBytes - free; d > 64<<20 || d < -64<<20 {
		t.Errorf("%s: free %s, statfs says %s", p.Spec.Node, mib(s.FreeBytes), mib(free))
	}
	if s.UsedBytes != s.CapacityBytes-s.FreeBytes && s.UsedBytes != s.CapacityBytes-s.FreeBytes-(1<<20) {
		t.Errorf("%s: used %d != capacity %d - free %d", p.Spec.Node, s.UsedBytes, s.CapacityBytes, s.FreeBytes)
	}
	if want := nodeFS(p.Spec.Node); want == "btrfs" && s.Backend != "btrfs" {
		t.Errorf("%s: backend %q on a btrfs disk", p.Spec.Node, s.Backend)
	}
	if s.Health.State != "Healthy" || s.DriverVersion == "" || s.Health.ProbeLatency == "" {
		t.Errorf("%s: health %+v version %q", p.Spec.Node, s.Health, s.DriverVersion)
	}
	n, err := e.cs.CoreV1().Nodes().Get(ctx, p.Spec.Node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if or := p.OwnerReferences; len(or) != 1 || or[0].Kind != "Node" || or[0].UID != n.UID {
		t.Errorf("%s: owner references %+v, want Node UID %s", p.Spec.Node, or, n.UID)
	}
}

// kubectlDhpp builds the plugin from the repo and returns a runner of
// `kubectl dhpp ARGS...` that finds it on PATH, as a user's kubectl does.
func kubectlDhpp(t *testing.T, ctx context.Context, e *env) func(args ...string) (string, error) {
	t.Helper()
	bin := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, "kubectl-dhpp"), "../../cmd/kubectl-dhpp")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kubectl-dhpp: %v\n%s", err, out)
	}
	return func(args ...string) (string, error) {
		c := exec.CommandContext(ctx, e.cfg.KubeBin("kubectl"), append([]string{"dhpp"}, args...)...)
		c.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "KUBECONFIG="+e.cfg.KubeconfigPath())
		out, err := c.CombinedOutput()
		return string(out), err
	}
}
