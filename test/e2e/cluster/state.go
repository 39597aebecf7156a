package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"
)

// State records what `up` created, so that `down` removes exactly that, even
// from a different process. It is saved after every step: a failed `up`
// leaves a state that `down` can clean.
type State struct {
	StartedAt time.Time `json:"startedAt"`
	// KubernetesVersion is the release the cluster runs.
	KubernetesVersion string `json:"kubernetesVersion"`
	// ControlPlane holds etcd, kube-apiserver, controller-manager, scheduler.
	ControlPlane []Proc      `json:"controlPlane"`
	Nodes        []NodeState `json:"nodes"`
	// HostDirs are mount-point directories up created on the host; down
	// removes them (only if empty).
	HostDirs        []string `json:"hostDirs"`
	IPForwardBefore string   `json:"ipForwardBefore"`
	Uplink          string   `json:"uplink"`
	Ready           bool     `json:"ready"`
	path            string
	// mu serialises updates and saves while nodes start concurrently.
	mu sync.Mutex
}

// NodeState is one node's record.
type NodeState struct {
	Spec NodeSpec `json:"spec"`
	// Holder keeps the node's mount namespace alive; every node daemon is
	// started with nsenter into the holder's namespaces.
	Holder     Proc   `json:"holder"`
	Containerd Proc   `json:"containerd"`
	Kubelet    Proc   `json:"kubelet"`
	KubeProxy  Proc   `json:"kubeProxy"`
	Loop       string `json:"loop"`
	DiskImage  string `json:"diskImage"`
	PodCIDR    string `json:"podCIDR"`
}

func loadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	st := &State{path: path}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("parse state %s: %w", path, err)
	}
	return st, nil
}

// save writes the state atomically.
func (st *State) save() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp := st.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return os.Rename(tmp, st.path)
}

func (st *State) node(name string) *NodeState {
	for i := range st.Nodes {
		if st.Nodes[i].Spec.Name == name {
			return &st.Nodes[i]
		}
	}
	return nil
}

// procs lists every daemon the state knows, nodes first (they depend on the
// control plane being there to shut down cleanly... and on nothing else).
func (st *State) procs() []Proc {
	var ps []Proc
	for _, n := range st.Nodes {
		ps = append(ps, n.KubeProxy, n.Kubelet, n.Containerd, n.Holder)
	}
	for i := len(st.ControlPlane) - 1; i >= 0; i-- {
		ps = append(ps, st.ControlPlane[i])
	}
	return ps
}
