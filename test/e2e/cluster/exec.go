package cluster

import (
	"context"
	"fmt"
)

// NodeExec runs argv inside node's mount and network namespaces, the ones
// its containerd and kubelet run in, and returns the trimmed stdout. It is
// how tests look at a node's data disk (mounted at DataMount only there) and
// fault it, e.g. NodeExec(ctx, cfg, "dhpp-node-1", "mount", "-o",
// "remount,ro", DataMount).
func NodeExec(ctx context.Context, cfg Config, node string, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", fmt.Errorf("node exec on %s: no command", node)
	}
	ns, err := runningNode(cfg, node)
	if err != nil {
		return "", err
	}
	cmd := ns.nsenter(argv...)
	return run(ctx, cmd[0], cmd[1:]...)
}

// runningNode returns the state of node if the cluster's state names it and
// its namespace holder is still alive.
func runningNode(cfg Config, node string) (*NodeState, error) {
	st, err := loadState(cfg.statePath())
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, fmt.Errorf("node %s: no cluster state at %s (is the cluster up?)", node, cfg.statePath())
	}
	ns := st.node(node)
	if ns == nil {
		return nil, fmt.Errorf("node %s: not in the cluster state %s", node, cfg.statePath())
	}
	if !ns.Holder.Alive() {
		return nil, fmt.Errorf("node %s: its namespace holder (pid %d) is not running", node, ns.Holder.PID)
	}
	return ns, nil
}
