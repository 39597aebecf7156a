package cluster

import (
	"context"
	"fmt"
	"os"
	"strings"

	"k8s.io/klog/v2"
)

// uplink returns the interface of the host's default route (eth0 here): the
// one interface cluster traffic must never leave through.
func uplink(ctx context.Context) (string, error) {
	out, err := run(ctx, "ip", "-4", "route", "show", "default")
	if err != nil {
		return "", err
	}
	f := strings.Fields(out)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "dev" {
			return f[i+1], nil
		}
	}
	return "", nil // no default route: nothing can leave anyway
}

// blackholes are host routes that drop cluster-range traffic locally. The
// node subnet (connected on the bridge) and per-node pod routes are more
// specific and win; anything else in these ranges has no endpoint.
var blackholes = []string{PodRange, ServiceCIDR, NodeRange}

// setupHostNetwork creates the bridge, enables forwarding, and installs the
// rules that keep cluster traffic on the bridge. It records the previous
// ip_forward value in st so that teardown can restore it.
func setupHostNetwork(ctx context.Context, st *State) error {
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return fmt.Errorf("read ip_forward: %w", err)
	}
	st.IPForwardBefore = strings.TrimSpace(string(fwd))
	up, err := uplink(ctx)
	if err != nil {
		return err
	}
	st.Uplink = up

	steps := [][]string{
		{"ip", "link", "add", BridgeName, "address", BridgeMAC, "type", "bridge"},
		{"ip", "addr", "add", BridgeIP + "/24", "dev", BridgeName},
		{"ip", "link", "set", BridgeName, "up"},
		{"sysctl", "-qw", "net.ipv6.conf." + BridgeName + ".disable_ipv6=1"},
	}
	for _, r := range blackholes {
		steps = append(steps, []string{"ip", "route", "replace", "blackhole", r})
	}
	// Host firewall: cluster traffic may only go bridge → bridge (node to
	// node, pod to pod across nodes) or to the host itself (INPUT, e.g. the
	// apiserver). Everything forwarded between the bridge and any other
	// interface — the uplink above all — is dropped. The chain is jumped to
	// first so that no later ACCEPT can let it through.
	steps = append(steps,
		[]string{"iptables", "-w", "-N", ForwardChain},
		[]string{"iptables", "-w", "-A", ForwardChain, "-i", BridgeName, "-o", BridgeName, "-j", "ACCEPT"},
		[]string{"iptables", "-w", "-A", ForwardChain, "-i", BridgeName, "-j", "DROP"},
		[]string{"iptables", "-w", "-A", ForwardChain, "-o", BridgeName, "-j", "DROP"},
		[]string{"iptables", "-w", "-I", "FORWARD", "1", "-j", ForwardChain},
	)
	for _, s := range steps {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return fmt.Errorf("host network: %w", err)
		}
	}
	// Forwarding is needed to route between the nodes' subnets; it is
	// enabled only after the drop rules are in place.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip_forward: %w", err)
	}
	return nil
}

// teardownHostNetwork removes what setupHostNetwork created; it tolerates
// pieces that are already gone so that it can clean up after a failed up.
func teardownHostNetwork(ctx context.Context, st *State) []error {
	var errs []error
	if _, err := run(ctx, "ip", "link", "show", BridgeName); err == nil {
		if _, err := run(ctx, "ip", "link", "del", BridgeName); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range blackholes {
		if out, _ := run(ctx, "ip", "route", "show", "type", "blackhole", r); out != "" {
			if _, err := run(ctx, "ip", "route", "del", "blackhole", r); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Remove every jump to the chain (a crashed earlier up may have added
	// more than one), then the chain.
	for i := 0; i < 10; i++ {
		if _, err := run(ctx, "iptables", "-w", "-D", "FORWARD", "-j", ForwardChain); err != nil {
			break
		}
	}
	if _, err := run(ctx, "iptables", "-w", "-S", ForwardChain); err == nil {
		if _, err := run(ctx, "iptables", "-w", "-F", ForwardChain); err != nil {
			errs = append(errs, err)
		}
		if _, err := run(ctx, "iptables", "-w", "-X", ForwardChain); err != nil {
			errs = append(errs, err)
		}
	}
	if st != nil && st.IPForwardBefore != "" {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(st.IPForwardBefore), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore ip_forward: %w", err))
		}
	}
	return errs
}

// setupNodeNetwork creates node n's network namespace, joined to the host
// bridge by a veth, with a default route via the bridge (which the host
// firewall confines to the cluster).
func setupNodeNetwork(ctx context.Context, n NodeSpec) error {
	veth := vethName(n.Index)
	steps := [][]string{
		{"ip", "netns", "add", n.Name},
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.Name},
		{"ip", "link", "set", veth, "master", BridgeName},
		{"ip", "link", "set", veth, "up"},
		{"ip", "-n", n.Name, "addr", "add", n.IP + "/24", "dev", "eth0"},
		{"ip", "-n", n.Name, "link", "set", "lo", "up"},
		{"ip", "-n", n.Name, "link", "set", "eth0", "up"},
		{"ip", "-n", n.Name, "route", "add", "default", "via", BridgeIP},
		// nsenter --net, not `ip netns exec`: the latter remounts /sys and
		// the cgroup mounts kubelet needs disappear.
		{"nsenter", "--net=/run/netns/" + n.Name, "--", "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"},
	}
	for _, s := range steps {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return fmt.Errorf("network of %s: %w", n.Name, err)
		}
	}
	return nil
}

// addPodRoute routes node n's pod subnet via the node, so pods on different
// nodes reach each other without masquerading.
func addPodRoute(ctx context.Context, n NodeSpec, podCIDR string) error {
	if _, err := run(ctx, "ip", "route", "replace", podCIDR, "via", n.IP, "dev", BridgeName); err != nil {
		return fmt.Errorf("pod route for %s: %w", n.Name, err)
	}
	return nil
}

// teardownNodeNetwork deletes the namespace (its veth end and every pod
// interface in it go with it).
func teardownNodeNetwork(ctx context.Context, name string) error {
	if _, err := os.Stat("/run/netns/" + name); err != nil {
		return nil
	}
	if _, err := run(ctx, "ip", "netns", "del", name); err != nil {
		return err
	}
	klog.V(2).InfoS("deleted netns", "node", name)
	return nil
}

// netnsPIDs lists the processes whose network namespace is the node's:
// every process the node ever ran (containerd, shims, containers, kubelet).
func netnsPIDs(ctx context.Context, name string) []int {
	out, err := run(ctx, "ip", "netns", "pids", name)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}
