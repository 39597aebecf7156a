package cluster

import (
	"context"
	"fmt"
	"io"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// LoseNode makes node name fail the way a machine that loses power does, as
// far as the rest of the cluster can tell: its kubelet, kube-proxy,
// containerd, container shims and every container process are killed with
// SIGKILL at once. Nothing is drained, stopped through CRI or unmounted: the
// node's mount namespace (held by its holder process) keeps its data disk
// and every volume mount exactly as they were, so RestoreNode can bring the
// same node back with the same disk.
func LoseNode(ctx context.Context, cfg Config, name string, out io.Writer) error {
	return locked(ctx, cfg, out, func(ctx context.Context, cfg Config, out io.Writer) error {
		st, ns, err := nodeState(cfg, name)
		if err != nil {
			return err
		}
		// All at once, daemons first: nothing gets a chance to clean up.
		victims := []Proc{ns.Kubelet, ns.KubeProxy, ns.Containerd}
		for _, pid := range append(netnsPIDs(ctx, name), cgroupPIDs(name)...) {
			if pid == ns.Holder.PID {
				continue
			}
			if _, start, err := procStat(pid); err == nil {
				victims = append(victims, Proc{Name: name + " process", PID: pid, StartTime: start})
			}
		}
		for _, p := range victims {
			if p.Alive() {
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
			}
		}
		// Shims and containers that were starting during the kill: repeat
		// until the node runs nothing but its holder.
		if err := poll(ctx, 30*time.Second, 200*time.Millisecond, name+" processes gone", func() (bool, error) {
			left := 0
			for _, pid := range append(netnsPIDs(ctx, name), cgroupPIDs(name)...) {
				if pid == ns.Holder.PID {
					continue
				}
				if state, _, err := procStat(pid); err == nil && state != 'Z' {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					left++
				}
			}
			return left == 0, nil
		}); err != nil {
			return err
		}
		if !ns.Holder.Alive() {
			return fmt.Errorf("%s: the mount namespace holder died with the node", name)
		}
		fmt.Fprintf(out, "node %s lost: kubelet, kube-proxy, containerd and all pods killed; disk and mounts kept\n", name)
		return st.save()
	})
}

// RestoreNode brings a node lost by LoseNode back with the same disk:
// containerd, kubelet and kube-proxy start again in its namespaces. If its
// Node object was deleted the kubelet registers it anew; the node's pod
// CIDR (maybe a new one) is routed and written to its CNI config again.
func RestoreNode(ctx context.Context, cfg Config, name string, out io.Writer) error {
	return locked(ctx, cfg, out, func(ctx context.Context, cfg Config, out io.Writer) error {
		st, ns, err := nodeState(cfg, name)
		if err != nil {
			return err
		}
		if ns.Kubelet.Alive() || ns.Containerd.Alive() {
			return fmt.Errorf("node %s is not lost (kubelet or containerd running)", name)
		}
		// A Node that was deleted registers anew and may get another pod
		// CIDR: the CNI bridge, which kept the old gateway address, goes
		// (the bridge plugin makes it again; no pod of this node survived)
		// and the host route of the old range with it.
		oldCIDR := ns.PodCIDR
		if _, err := run(ctx, "ip", "-n", name, "link", "del", "cni0"); err != nil {
			klog.V(2).InfoS("no CNI bridge to remove", "node", name, "err", err)
		}
		save := func() error { return st.save() }
		if err := launchContainerd(ctx, cfg, ns, save); err != nil {
			return err
		}
		if err := launchKubelet(cfg, st, ns); err != nil {
			return err
		}
		if err := waitPodCIDR(ctx, cfg, st, ns); err != nil {
			return err
		}
		if oldCIDR != "" && oldCIDR != ns.PodCIDR {
			if _, err := run(ctx, "ip", "route", "del", oldCIDR, "via", ns.Spec.IP); err != nil {
				klog.InfoS("removing the old pod route", "node", name, "cidr", oldCIDR, "err", err)
			}
		}
		if err := launchKubeProxy(cfg, st, ns); err != nil {
			return err
		}
		fmt.Fprintf(out, "node %s restored: containerd, kubelet and kube-proxy running again (pod CIDR %s)\n", name, ns.PodCIDR)
		return nil
	})
}

// nodeState loads the state and finds node name in it, with its mount
// namespace still held.
func nodeState(cfg Config, name string) (*State, *NodeState, error) {
	st, err := loadState(cfg.statePath())
	if err != nil {
		return nil, nil, err
	}
	if st == nil || !st.Ready {
		return nil, nil, fmt.Errorf("no running cluster in %s", cfg.OutputDir)
	}
	ns := st.node(name)
	if ns == nil {
		return nil, nil, fmt.Errorf("node %s is not in the cluster state", name)
	}
	if !ns.Holder.Alive() {
		return nil, nil, fmt.Errorf("node %s: its namespace holder is gone", name)
	}
	return st, ns, nil
}
