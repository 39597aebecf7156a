//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/test/e2e/cluster"
)

// TestClusterSmoke brings the local cluster up (or reuses a running one),
// checks that all its nodes are Ready, runs a busybox pod on every node
// that writes to and reads back an emptyDir, checks the host rules that keep
// cluster traffic off the uplink, and tears the cluster down if it made it.
// DHPP_E2E_KEEP=1 keeps a cluster this test made.
func TestClusterSmoke(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = cluster.Up(ctx, cfg, testWriter{t})
	switch {
	case errors.Is(err, cluster.ErrAlreadyRunning):
		t.Log("reusing the running cluster")
	case err != nil:
		t.Errorf("up: %v", err)
		if derr := cluster.Down(context.Background(), cfg, testWriter{t}); derr != nil {
			t.Errorf("down after failed up: %v", derr)
		}
		t.FailNow()
	default:
		t.Logf("cluster up in %s", time.Since(start).Round(time.Second))
		if os.Getenv("DHPP_E2E_KEEP") != "1" {
			t.Cleanup(func() {
				if err := cluster.Down(context.Background(), cfg, testWriter{t}); err != nil {
					t.Errorf("down: %v", err)
				}
				assertHostClean(t)
			})
		}
	}

	t.Run("all nodes Ready", func(t *testing.T) {
		out, err := cfg.Kubectl(ctx, "get", "nodes", "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			t.Fatal(err)
		}
		ready := map[string]bool{}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[1] == "True" {
				ready[f[0]] = true
			}
		}
		for _, n := range cluster.DefaultNodes() {
			if !ready[n.Name] {
				t.Errorf("node %s not Ready:\n%s", n.Name, out)
			}
		}
	})

	t.Run("host keeps cluster traffic local", func(t *testing.T) {
		// Addresses in the cluster ranges with no endpoint must resolve to a
		// local blackhole, never to the default route.
		for _, addr := range []string{"10.244.250.1", "10.96.250.250", "10.200.9.9"} {
			out, _ := exec.CommandContext(ctx, "ip", "route", "get", addr).CombinedOutput()
			if strings.Contains(string(out), " via ") && !strings.Contains(string(out), cluster.BridgeName) {
				t.Errorf("%s routes out: %s", addr, out)
			}
		}
		out, err := exec.CommandContext(ctx, "iptables", "-w", "-S", "FORWARD").Output()
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < 2 || lines[1] != "-A FORWARD -j "+cluster.ForwardChain {
			t.Errorf("first FORWARD rule is not the jump to %s:\n%s", cluster.ForwardChain, out)
		}
		out, err = exec.CommandContext(ctx, "iptables", "-w", "-t", "nat", "-S", "POSTROUTING").Output()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "MASQUERADE") {
			t.Errorf("host masquerades (cluster traffic could leave):\n%s", out)
		}
	})

	t.Run("busybox pod with emptyDir on every node", func(t *testing.T) {
		ns := fmt.Sprintf("smoke-%d", time.Now().Unix())
		if _, err := cfg.Kubectl(ctx, "create", "namespace", ns); err != nil {
			t.Fatal(err)
		}
		defer cfg.Kubectl(context.Background(), "delete", "namespace", ns, "--wait=false")
		for _, n := range cluster.DefaultNodes() {
			if err := apply(ctx, cfg, podManifest(ns, n.Name)); err != nil {
				t.Fatalf("create pod on %s: %v", n.Name, err)
			}
		}
		for _, n := range cluster.DefaultNodes() {
			pod := "smoke-" + n.Name
			if err := waitPhase(ctx, cfg, ns, pod, "Succeeded", 3*time.Minute); err != nil {
				desc, _ := cfg.Kubectl(ctx, "-n", ns, "describe", "pod", pod)
				t.Errorf("pod %s: %v\n%s", pod, err, desc)
				continue
			}
			node, _ := cfg.Kubectl(ctx, "-n", ns, "get", "pod", pod, "-o", "jsonpath={.spec.nodeName}")
			if node != n.Name {
				t.Errorf("pod %s ran on %q, want %s", pod, node, n.Name)
			}
			logs, err := cfg.Kubectl(ctx, "-n", ns, "logs", pod)
			if err != nil {
				t.Errorf("logs of %s: %v", pod, err)
			} else {
				// statfs magic numbers: btrfs 0x9123683e, ext4 0xef53.
				magic := map[string]string{"btrfs": "9123683e", "ext4": "ef53", "xfs": "58465342"}[n.FS]
				for _, want := range []string{"read back: written on " + n.Name, "service reachable",
					"disk magic " + magic + " pool directory"} {
					if !strings.Contains(logs, want) {
						t.Errorf("pod %s logs %q, want %q", pod, logs, want)
					}
				}
			}
		}
	})
}

// podManifest is a pod pinned (through the scheduler) to node that writes a
// line into an emptyDir, reads it back, connects to the apiserver's Service
// address, and reports the filesystem of the node's data disk and its pool
// directory.
func podManifest(ns, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: smoke-%[2]s
  namespace: %[1]s
spec:
  restartPolicy: Never
  nodeSelector:
    kubernetes.io/hostname: %[2]s
  containers:
  - name: main
    image: dhpp.local/busybox:latest
    imagePullPolicy: Never
    # The emptyDir round trip, then the apiserver through the kubernetes
    # Service (kube-proxy DNAT in the node, routed to the host bridge): the
    # path every in-cluster client, csi-provisioner included, takes.
    command: ["sh", "-c", "echo \"written on %[2]s\" > /data/f && sync && echo \"read back: $(cat /data/f)\" && nc -w 10 %[3]s 443 </dev/null && echo service reachable && echo \"disk magic $(stat -f -c %%t /disk) pool $(stat -c %%F /disk/dhpp)\""]
    volumeMounts:
    - {name: data, mountPath: /data}
    # The node's data disk as a pod sees it (HostToContainer needs the
    # node's mount to be shared, which up arranges).
    - {name: disk, mountPath: /disk, mountPropagation: HostToContainer, readOnly: true}
  volumes:
  - name: data
    emptyDir: {}
  - name: disk
    hostPath: {path: %[4]s, type: Directory}
`, ns, node, cluster.KubernetesServiceIP, cluster.DataMount)
}

func apply(ctx context.Context, cfg cluster.Config, manifest string) error {
	cmd := exec.CommandContext(ctx, cfg.KubeBin("kubectl"), "--kubeconfig="+cfg.KubeconfigPath(), "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl apply: %w: %s", err, out)
	}
	return nil
}

func waitPhase(ctx context.Context, cfg cluster.Config, ns, pod, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var phase string
	for time.Now().Before(deadline) {
		phase, _ = cfg.Kubectl(ctx, "-n", ns, "get", "pod", pod, "-o", "jsonpath={.status.phase}")
		if phase == want {
			return nil
		}
		if phase == "Failed" {
			return fmt.Errorf("phase Failed")
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("phase %q after %s, want %s", phase, timeout, want)
}

// assertHostClean checks that down left nothing of the cluster behind.
func assertHostClean(t *testing.T) {
	t.Helper()
	checks := []struct {
		name string
		cmd  []string
		bad  func(string) bool
	}{
		{"network namespaces", []string{"ip", "netns", "list"}, func(s string) bool { return strings.Contains(s, "dhpp-node") }},
		{"loop devices", []string{"losetup", "-a"}, func(s string) bool { return strings.Contains(s, "_output/cluster") }},
		{"mounts", []string{"sh", "-c", "mount | grep -E '/mnt/dhpp-data|/var/lib/kubelet|_output/cluster|/run/dhpp-e2e' || true"}, func(s string) bool { return strings.TrimSpace(s) != "" }},
		{"iptables", []string{"sh", "-c", "iptables-save | grep -E 'KUBE|CNI|DHPP' || true"}, func(s string) bool { return strings.TrimSpace(s) != "" }},
		{"links", []string{"ip", "-br", "link"}, func(s string) bool { return strings.Contains(s, "dhpp-") }},
		{"routes", []string{"ip", "route"}, func(s string) bool {
			return strings.Contains(s, "10.244.") || strings.Contains(s, "10.96.") || strings.Contains(s, "10.200.")
		}},
		{"cgroups", []string{"sh", "-c", "ls -d /sys/fs/cgroup/*/dhpp-node-* 2>/dev/null || true"}, func(s string) bool { return strings.TrimSpace(s) != "" }},
	}
	for _, c := range checks {
		out, err := exec.Command(c.cmd[0], c.cmd[1:]...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if c.bad(string(out)) {
			t.Errorf("down left %s behind:\n%s", c.name, out)
		}
	}
}

// testWriter sends Up/Down progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
