package cluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// requireRoot skips a test that needs root when run unprivileged on a
// developer machine, but fails it under CI=true: CI runs as root, so a skip
// there would hide a test that never ran.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (namespaces, mounts, loop devices, iptables) and CI=true: refusing to skip")
	}
	t.Skip("needs root: namespaces, mounts, loop devices, iptables")
}

// TestNodeBaseAndTeardown builds one real node without Kubernetes — host
// bridge and firewall, node netns, loop disk mounted shared inside the node's
// own mount namespace, containerd with the pause and busybox images — then
// tears it down and checks that nothing is left on the host.
func TestNodeBaseAndTeardown(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("starts containerd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := exec.LookPath("containerd"); err != nil {
		if err := EnsurePackages(ctx); err != nil {
			t.Fatalf("install packages: %v", err)
		}
	}
	// Hold the harness lock for the whole test: a cluster brought up
	// meanwhile (the e2e smoke test in a parallel package) would share
	// every name with this node.
	unlock, err := lock(ctx, testLog{t}, 4*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock) // registered first, so it runs after the teardown below
	if _, err := run(ctx, "ip", "link", "show", BridgeName); err == nil {
		t.Skip("a dhpp e2e cluster is running on this host; not touching it")
	}
	repo, err := FindRepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{RepoRoot: repo, OutputDir: t.TempDir(), CacheDir: t.TempDir(), Nodes: DefaultNodes()[:1]}
	os.MkdirAll(cfg.logDir(), 0o755)
	var innerLoop string
	t.Cleanup(func() {
		// down, not Down: this test already holds the lock.
		if err := down(context.Background(), cfg, testLog{t}); err != nil {
			t.Errorf("Down: %v", err)
		}
		assertNoLeftovers(t, cfg)
		if innerLoop == "" {
			return
		}
		if out, _ := run(context.Background(), "losetup", "--list", "--noheadings", innerLoop); strings.Contains(out, "inner.img") {
			t.Errorf("down left the inner loop device %s: %s", innerLoop, out)
			run(context.Background(), "losetup", "-d", innerLoop)
		}
	})

	images, err := BuildImages(ctx, cfg, "pause", "busybox")
	if err != nil {
		t.Fatal(err)
	}
	st := &State{path: cfg.statePath()}
	if err := ensureHostDirs(st); err != nil {
		t.Fatal(err)
	}
	if err := setupHostNetwork(ctx, st); err != nil {
		t.Fatal(err)
	}
	if err := st.save(); err != nil {
		t.Fatal(err)
	}
	// The hard rule: cluster ranges are blackholed, and forwarded traffic
	// may only go bridge to bridge.
	bh, err := run(ctx, "ip", "route", "show", "type", "blackhole")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{PodRange, ServiceCIDR, NodeRange} {
		if !strings.Contains(bh, "blackhole "+r) {
			t.Errorf("no blackhole route for %s:\n%s", r, bh)
		}
	}
	chain, err := run(ctx, "iptables", "-w", "-S", ForwardChain)
	if err != nil {
		t.Fatal(err)
	}
	wantChain := "-N " + ForwardChain + "\n" +
		"-A " + ForwardChain + " -i " + BridgeName + " -o " + BridgeName + " -j ACCEPT\n" +
		"-A " + ForwardChain + " -i " + BridgeName + " -j DROP\n" +
		"-A " + ForwardChain + " -o " + BridgeName + " -j DROP"
	if chain != wantChain {
		t.Errorf("%s =\n%s\nwant\n%s", ForwardChain, chain, wantChain)
	}
	if fwd, _ := run(ctx, "iptables", "-w", "-S", "FORWARD"); !strings.Contains(fwd, "-A FORWARD -j "+ForwardChain) {
		t.Errorf("FORWARD does not jump to %s:\n%s", ForwardChain, fwd)
	}

	n := cfg.Nodes[0]
	st.Nodes = append(st.Nodes, NodeState{Spec: n})
	if err := startNodeBase(ctx, cfg, st, 0, images); err != nil {
		t.Fatal(err)
	}
	ns := st.node(n.Name)

	// The data disk is mounted, shared, inside the node only.
	in := func(args ...string) string {
		t.Helper()
		out, err := run(ctx, "nsenter", append([]string{"--target", itoa(ns.Holder.PID), "--mount", "--net", "--"}, args...)...)
		if err != nil {
			t.Fatalf("in node: %v", err)
		}
		return out
	}
	if got := in("findmnt", "-n", "-o", "FSTYPE,PROPAGATION", DataMount); !strings.HasPrefix(got, "btrfs") || !strings.Contains(got, "shared") {
		t.Errorf("data disk in node: %q, want btrfs shared", got)
	}
	if got := in("stat", "-c", "%F", PoolDir); got != "directory" {
		t.Errorf("pool dir: %q", got)
	}
	if got := in("ip", "-4", "-br", "addr", "show", "eth0"); !strings.Contains(got, n.IP) {
		t.Errorf("node eth0: %q, want %s", got, n.IP)
	}
	if out, _ := run(ctx, "findmnt", "-n", DataMount); out != "" {
		t.Errorf("data disk visible on the host: %s", out)
	}
	// The node reaches the host over the bridge.
	if _, err := run(ctx, "nsenter", "--net=/run/netns/"+n.Name, "--", "ping", "-c1", "-W2", BridgeIP); err != nil {
		if _, lerr := exec.LookPath("ping"); lerr == nil {
			t.Errorf("node cannot reach the bridge: %v", err)
		}
	}
	// A loop device on a file inside the data disk, as the driver's loop
	// backend makes them (without autoclear): down must detach it, or the
	// data disk's own loop device stays busy.
	in("truncate", "-s", "64M", PoolDir+"/inner.img")
	inner := in("losetup", "--find", "--show", PoolDir+"/inner.img")
	innerLoop = inner

	imgs, err := run(ctx, "ctr", "--address", cfg.criSocket(n.Name), "-n", "k8s.io", "images", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"registry.k8s.io/pause:3.10", "dhpp.local/busybox:latest"} {
		if !strings.Contains(imgs, want) {
			t.Errorf("node images lack %s:\n%s", want, imgs)
		}
	}
	if cgs, _ := filepath.Glob("/sys/fs/cgroup/*/" + n.Name); len(cgs) == 0 {
		t.Error("no cgroup root for the node")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// assertNoLeftovers checks the host for anything of the cluster.
func assertNoLeftovers(t *testing.T, cfg Config) {
	t.Helper()
	ctx := context.Background()
	if out, _ := run(ctx, "ip", "netns", "list"); strings.Contains(out, "dhpp-node") {
		t.Errorf("netns left: %s", out)
	}
	if out, _ := run(ctx, "ip", "-br", "link"); strings.Contains(out, "dhpp-") {
		t.Errorf("links left: %s", out)
	}
	if out, _ := run(ctx, "losetup", "-a"); strings.Contains(out, cfg.OutputDir) {
		t.Errorf("loop devices left: %s", out)
	}
	if out, _ := run(ctx, "iptables-save"); strings.Contains(out, "DHPP") || strings.Contains(out, "KUBE") || strings.Contains(out, "CNI") {
		t.Errorf("iptables rules left:\n%s", out)
	}
	if out, _ := run(ctx, "ip", "route"); strings.Contains(out, "10.244.") || strings.Contains(out, "10.96.") || strings.Contains(out, "10.200.") {
		t.Errorf("routes left:\n%s", out)
	}
	// Other tests on this host mount things with dhpp in the name: look
	// only for this cluster's paths.
	if out, _ := run(ctx, "sh", "-c", "mount | grep -E '"+DataMount+"|/var/lib/kubelet|"+cfg.OutputDir+"|"+RunDir+"' || true"); out != "" {
		t.Errorf("mounts left:\n%s", out)
	}
	if cgs, _ := filepath.Glob("/sys/fs/cgroup/*/dhpp-node-*"); len(cgs) > 0 {
		t.Errorf("cgroups left: %v", cgs)
	}
	for _, d := range []string{RunDir, DataMount} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s left", d)
		}
	}
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
