// Package dhpp holds the names every part of dhpp must agree on: the CSI driver
// name, the topology key, label and annotation keys, and on-disk layout names.
// Keeping them in one leaf package (no imports) lets pkg/driver, pkg/node,
// pkg/health, deploy/ generators and test/e2e share them without cycles.
package dhpp

// DriverName is the CSI driver name registered with the kubelet and written
// into every PV's spec.csi.driver.
const DriverName = "hostpath.dhpp.io"

// TopologyKey is the single topology segment dhpp reports: a volume lives on
// exactly one node's disk, so its PV's nodeAffinity names that node.
const TopologyKey = "topology.dhpp.io/node"

// Version is the build version, set with
// -ldflags "-X github.com/dhpp-io/dhpp/pkg/dhpp.Version=v0.1.0".
var Version = "dev"

// Keys of StorageClass parameters accepted by CreateVolume and GetCapacity.
const (
	// ParamPool selects the pool by name; the first --pool is the default.
	ParamPool = "pool"
	// ParamMode is the octal permission of the volume's root directory, e.g. "0750".
	ParamMode = "mode"
	// ParamPreallocate ("true" or "false", the default) writes an image
	// volume through at creation and expansion, so its first writes do not
	// allocate in the pool's filesystem; see node.Volume.Preallocated.
	ParamPreallocate = "preallocate"
	// ParamPrefixCSI is the prefix of parameters that Kubernetes sidecars add
	// (csi.storage.k8s.io/pvc/name and friends, with --extra-create-metadata);
	// dhpp accepts them and records the claim's and snapshot's names.
	ParamPrefixCSI = "csi.storage.k8s.io/"
	// ParamNodeLossPolicy is read by dhpp-controller, not by the driver:
	// what to do with a claim whose volume's node or disk is lost
	// ("keep", the default, or "recreate"). The driver accepts and ignores it.
	ParamNodeLossPolicy = "nodeLossPolicy"
)

// AnnotationNodeLossPolicy on a PVC overrides its class's
// ParamNodeLossPolicy for that claim.
const AnnotationNodeLossPolicy = "dhpp.io/node-loss-policy"

// Keys dhpp puts into a volume's volume_context (shown on the PV).
const (
	ContextPool    = "dhpp.io/pool"
	ContextBackend = "dhpp.io/backend"
)
