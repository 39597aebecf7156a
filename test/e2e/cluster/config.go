// Package cluster brings up and tears down dhpp's local multi-node Kubernetes
// cluster (one of KubernetesVersions): etcd and the control plane on the
// host, and four nodes, each in its own network and mount namespace with its
// own containerd, kubelet, kube-proxy and loop-backed data disk. Everything it creates stays on
// bridges and veths it owns; nothing is routed to the host's uplink.
//
// The recipe and its settings follow the measured facts in the project's
// shared notes (local-cluster.md); the reasons are repeated where they apply.
package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Network layout. All ranges are blackholed on the host so that an address
// without an endpoint is dropped locally instead of leaving via the uplink.
const (
	BridgeName = "dhpp-br0"
	// A fixed MAC: a Linux bridge otherwise takes the lowest MAC of its
	// ports, so adding a node changes it and stalls API traffic for ~60 s.
	BridgeMAC   = "02:64:68:70:70:01"
	BridgeIP    = "10.200.0.1"
	NodeSubnet  = "10.200.0.0/24"
	NodeRange   = "10.200.0.0/16"
	PodRange    = "10.244.0.0/16"
	ServiceCIDR = "10.96.0.0/16"
	// KubernetesServiceIP is the first address of ServiceCIDR; it must be in
	// the apiserver certificate.
	KubernetesServiceIP = "10.96.0.1"
	APIServerPort       = 6443
	// Unusual ports so that another etcd on this machine does not clash.
	EtcdClientPort = 23790
	EtcdPeerPort   = 23800
	// ForwardChain is the host iptables chain that keeps cluster traffic off
	// the uplink.
	ForwardChain = "DHPP-E2E-FORWARD"

	// DataMount is where every node's data disk is mounted inside the node's
	// mount namespace; PoolDir is the dhpp pool directory on it.
	DataMount = "/mnt/dhpp-data"
	PoolDir   = DataMount + "/dhpp"
	// DiskSize is the sparse size of each node's loop-backed data disk.
	DiskSize = 4 << 30

	// RunDir holds short paths (unix sockets must fit in 108 bytes) shared
	// by the host and the node namespaces.
	RunDir = "/run/dhpp-e2e"
)

// KubernetesVersions are the Kubernetes releases the cluster can run, oldest
// first. This list is the one place that names them: the Makefile asks
// `dhpp-cluster versions` for it. Each has its build module
// hack/tools/kubernetes-v<major>.<minor> (server binaries, kubectl and the
// upstream e2e suite). v1.37.2 is the newest release the module proxy
// serves; v1.32 and older cannot be built from it (staging modules refused).
var KubernetesVersions = []string{"v1.33.13", "v1.37.2"}

// DefaultKubernetesVersion is what the cluster runs without
// DHPP_K8S_VERSION: the newest supported release. The scenario e2e (make
// e2e) and the demo run it; make conformance runs every version.
var DefaultKubernetesVersion = KubernetesVersions[len(KubernetesVersions)-1]

// KubernetesVersionFromEnv is $DHPP_K8S_VERSION (one of KubernetesVersions), else
// the default.
func KubernetesVersionFromEnv() (string, error) {
	v := os.Getenv("DHPP_K8S_VERSION")
	if v == "" {
		return DefaultKubernetesVersion, nil
	}
	for _, s := range KubernetesVersions {
		if v == s {
			return v, nil
		}
	}
	return "", fmt.Errorf("DHPP_K8S_VERSION=%q: supported versions are %s", v, strings.Join(KubernetesVersions, ", "))
}

// minorOf is "v1.33" for "v1.33.13".
func minorOf(version string) string {
	if i := strings.LastIndex(version, "."); i > 0 {
		return version[:i]
	}
	return version
}

// Versions of the other tools the cluster runs; also the cache keys of their
// builds. The sidecars work with every KubernetesVersions entry.
const (
	ProvisionerVersion = "v6.3.0"
	ResizerVersion     = "v2.3.0"
	// SnapshotterVersion is external-snapshotter's release (csi-snapshotter
	// and snapshot-controller); deploy/ ships its CRDs.
	SnapshotterVersion = "v8.7.0"
	CRIToolVersion     = "v0.33.13"
)

// NodeSpec describes one node of the cluster.
type NodeSpec struct {
	Name string
	// IP is the node's address on the host bridge.
	IP string
	// FS is the data disk's filesystem: btrfs, ext4 or xfs.
	FS string
	// Index numbers nodes from 1; it names the host-side veth.
	Index int
}

// DefaultNodeCount is the number of nodes unless DHPP_E2E_NODES says
// otherwise: four, so that when the node-loss scenarios lose one, a
// 3-replica StatefulSet with required anti-affinity still has a node to go.
const DefaultNodeCount = 4

// MaxNodes bounds DHPP_E2E_NODES: each node is a containerd, a kubelet and
// a kube-proxy on this one machine.
const MaxNodes = 9

// NodeSpecs returns n nodes dhpp-node-1..n: the data disk is ext4 (the loop
// backend, since this kernel has no ext4 project quota) on dhpp-node-3 and
// btrfs (subvolume + qgroup backend) on every other node.
func NodeSpecs(n int) []NodeSpec {
	var nodes []NodeSpec
	for i := 1; i <= n; i++ {
		fs := "btrfs"
		if i == 3 {
			fs = "ext4"
		}
		nodes = append(nodes, NodeSpec{Name: fmt.Sprintf("dhpp-node-%d", i), IP: fmt.Sprintf("10.200.0.%d", 10+i), FS: fs, Index: i})
	}
	return nodes
}

// NodeCount is $DHPP_E2E_NODES (1..MaxNodes), else DefaultNodeCount.
func NodeCount() (int, error) {
	v := os.Getenv("DHPP_E2E_NODES")
	if v == "" {
		return DefaultNodeCount, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxNodes {
		return 0, fmt.Errorf("DHPP_E2E_NODES=%q: want a number of nodes from 1 to %d", v, MaxNodes)
	}
	return n, nil
}

// DefaultNodes are the cluster's nodes: NodeCount() of them (a bad
// DHPP_E2E_NODES falls back to the default here; DefaultConfig reports it).
func DefaultNodes() []NodeSpec {
	n, err := NodeCount()
	if err != nil {
		n = DefaultNodeCount
	}
	return NodeSpecs(n)
}

// Config says where the cluster lives and what it consists of.
type Config struct {
	// RepoRoot is the dhpp repository (the directory with go.mod).
	RepoRoot string
	// OutputDir holds state, PKI, logs and node directories.
	OutputDir string
	// CacheDir holds built tools, keyed by version, under bin/.
	CacheDir string
	Nodes    []NodeSpec
	// KubernetesVersion is the release the cluster runs (one of
	// KubernetesVersions).
	KubernetesVersion string
	// InstallDHPP applies Overlay after bring-up.
	InstallDHPP bool
	// Overlay is the kustomization InstallDHPP applies: a directory
	// relative to RepoRoot, or absolute; "" is LocalOverlay.
	Overlay string
	// SkipPackages skips the apt-get step (the packages are known present).
	SkipPackages bool
	// Audit turns on the apiserver's audit log (Metadata level, at
	// AuditLogPath) for counting requests per client; $DHPP_E2E_AUDIT=1.
	Audit bool
}

// DefaultConfig finds the repository from the working directory and applies
// the defaults: _output/cluster in the repo, ${DHPP_CACHE:-$HOME/.cache/dhpp},
// ${DHPP_K8S_VERSION:-DefaultKubernetesVersion}.
func DefaultConfig() (Config, error) {
	wd, err := os.Getwd()
	if err != nil {
		return Config{}, fmt.Errorf("working directory: %w", err)
	}
	root, err := FindRepoRoot(wd)
	if err != nil {
		return Config{}, err
	}
	cache := os.Getenv("DHPP_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return Config{}, fmt.Errorf("home directory for the cache (set DHPP_CACHE): %w", err)
		}
		cache = filepath.Join(home, ".cache", "dhpp")
	}
	if _, err := NodeCount(); err != nil {
		return Config{}, err
	}
	version, err := KubernetesVersionFromEnv()
	if err != nil {
		return Config{}, err
	}
	return Config{
		RepoRoot:          root,
		OutputDir:         filepath.Join(root, "_output", "cluster"),
		CacheDir:          cache,
		Nodes:             DefaultNodes(),
		KubernetesVersion: version,
		Audit:             os.Getenv("DHPP_E2E_AUDIT") == "1",
	}, nil
}

// FindRepoRoot walks up from dir to the directory whose go.mod declares the
// dhpp module (nested tool modules under hack/tools are skipped).
func FindRepoRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("absolute path of %s: %w", dir, err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/dhpp-io/dhpp\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no dhpp go.mod above %s", dir)
		}
	}
}

// Paths derived from the config.
func (c Config) KubeconfigPath() string    { return filepath.Join(c.OutputDir, "kubeconfig") }
func (c Config) statePath() string         { return filepath.Join(c.OutputDir, "state.json") }
func (c Config) pkiDir() string            { return filepath.Join(c.OutputDir, "pki") }
func (c Config) logDir() string            { return filepath.Join(c.OutputDir, "logs") }
func (c Config) imagesDir() string         { return filepath.Join(c.OutputDir, "images") }
func (c Config) nodeDir(n string) string   { return filepath.Join(c.OutputDir, "nodes", n) }
func (c Config) nodeRun(n string) string   { return filepath.Join(RunDir, n) }
func (c Config) criSocket(n string) string { return filepath.Join(c.nodeRun(n), "containerd.sock") }
func (c Config) binDir() string            { return filepath.Join(c.CacheDir, "bin") }

// KubeBin is the path of a Kubernetes binary (kubectl, kubelet, ...) in the cache.
func (c Config) KubeBin(name string) string {
	return filepath.Join(c.binDir(), "kubernetes-"+c.KubernetesVersion, name)
}

// E2EBin is the path of a binary of the upstream e2e suite (e2e.test,
// ginkgo, agnhost) built for the cluster's Kubernetes version.
func (c Config) E2EBin(name string) string {
	return filepath.Join(c.binDir(), "kubernetes-e2e-"+c.KubernetesVersion, name)
}

func (c Config) provisionerBin() string {
	return filepath.Join(c.binDir(), "csi-provisioner-"+ProvisionerVersion, "csi-provisioner")
}
func (c Config) resizerBin() string {
	return filepath.Join(c.binDir(), "csi-resizer-"+ResizerVersion, "csi-resizer")
}
func (c Config) snapshotterBin(name string) string {
	return filepath.Join(c.binDir(), "external-snapshotter-"+SnapshotterVersion, name)
}
func (c Config) criBin() string {
	return filepath.Join(c.binDir(), "dhpp-cri-"+CRIToolVersion, "dhpp-cri")
}

// vethName is the host side of node i's veth pair (IFNAMSIZ is 16).
func vethName(i int) string { return fmt.Sprintf("dhpp-veth%d", i) }
