// Package conformance runs the upstream Kubernetes storage e2e suite
// ("External Storage", the specs csi-driver-host-path and other CSI drivers
// run in their CI) against dhpp on the local cluster, for every supported
// Kubernetes version: e2e.test built from the module proxy, test images built
// locally, the test driver file testdriver.yaml, and the skip list below.
//
// The skip list is checked: a failure it does not list fails the run, an
// entry that matches no spec of the version fails the run (it is stale), and
// with DHPP_CONFORMANCE_RECHECK=1 the listed specs run too and those that
// pass are reported, so entries are re-enabled as soon as they can be.
package conformance

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Focus selects the External Storage specs of dhpp's driver.
const Focus = `External.Storage.*hostpath\.dhpp\.io`

// Skip is one entry of the skip list: specs whose full text matches Pattern
// (a Go/ginkgo regular expression) are not run, for Reason.
type Skip struct {
	Pattern string
	Reason  string
	// Issue marks an entry that waits for a dhpp change (the issue that
	// will re-enable it) rather than one the suite or this cluster imposes.
	Issue string
	// Minors, if set, are the Kubernetes minor versions ("v1.33") whose
	// suite has such specs; elsewhere the entry does not apply (and is not
	// stale).
	Minors []string
}

// For returns the entries that apply to Kubernetes version (e.g. v1.33.13).
func For(skips []Skip, version string) []Skip {
	var out []Skip
	for _, s := range skips {
		if len(s.Minors) == 0 || slices.ContainsFunc(s.Minors, func(m string) bool { return strings.HasPrefix(version, m+".") }) {
			out = append(out, s)
		}
	}
	return out
}

// Skips is the skip list. Keep each reason one that a reader can check.
var Skips = []Skip{
	{
		Pattern: `\[Disruptive\]`,
		Reason:  "disruptive specs restart the kubelet or the node; release-tools (prow.sh) runs them in a separate job, and this one-machine cluster shares its kubelets with every other spec",
	},
	{
		Pattern: `\[Flaky\]`,
		Reason:  "marked flaky upstream",
		Minors:  []string{"v1.33"},
	},
	{
		Pattern: `\[Feature:SELinux\]|\[FeatureGate:SELinux`,
		Reason:  "SELinux: not enabled on these machines (containerd runs with enable_selinux=false) and dhpp does not declare seLinuxMount",
	},
	{
		Pattern: `\[Feature:OffByDefault\]`,
		Reason:  "needs alpha/beta feature gates (VolumeAttributesClass v1beta1) that the cluster does not enable; dhpp implements no ModifyVolume",
		Minors:  []string{"v1.33"},
	},
	{
		Pattern: `provisioning should provision storage with any volume data source`,
		Reason:  "runs the hello-populator controller from registry.k8s.io/sig-storage/hello-populator, which this cluster cannot pull (nothing leaves the machine) and hack/images does not build: the pod stays in ImagePullBackOff and the spec times out after 5 minutes",
	},
	{
		Pattern: `volume-expand should resize volume when PVC is edited while pod is using it|ephemeral should support expansion of pvcs created for ephemeral pvcs|volume-expand should resize volume when PVC is edited and the pod is re-created on the same node after controller resize is finished`,
		Reason:  "online expansion of a loop volume (the ext4 node dhpp-node-3) needs an online resize2fs, which fails on these machines: they lack CAP_SYS_RESOURCE (NodeExpandVolume Internal \"grow filesystem on /dev/loopN\", seen on v1.33.13); it passes when the scheduler picks a btrfs node, so the spec would fail or pass by placement. The re-created-pod spec is the same case on v1.37.2: the second pod arrives while the volume is still staged, so the kubelet expands it mounted (seen on dhpp-node-3)",
	},
	{
		Pattern: `volume-expand Verify if offline PVC expansion works`,
		Reason:  "the spec's second pod can reach the node while the first pod's volume is still staged, so the kubelet expands the volume mounted (online) although the spec means offline; on the ext4 node (a loop volume) that needs the online resize2fs these machines cannot do (no CAP_SYS_RESOURCE, the online-expansion entry above): NodeExpandVolume Internal \"online ext4 growth needs CAP_SYS_RESOURCE\" on dhpp-node-3, the pod stuck in ContainerCreating. Seen on v1.37.2 and, in the CI run of 2026-11-29 14:31, on v1.33.13 (where it had passed in the two runs before); it passes when the scheduler picks a btrfs node",
	},
	{
		Pattern: `\[Testpattern: Dynamic PV \(xfs\)\].*multiVolume.*should concurrently access the volume and restored snapshot from pods on the same node`,
		Reason:  "the spec restores with the source's request, the suite's minimum (16Mi), but an xfs volume is at least 300 MiB (mkfs.xfs's minimum), so the snapshot's restoreSize is 300 MiB and csi-provisioner refuses the smaller claim before calling the driver: \"requested volume size 16777216 is less than the size 314572800 for the source snapshot\" (v1.37.2). A 300Mi minimum would cost every spec 300 MiB on the 4 GiB data disks; the xfs clone twin of this spec runs",
	},
	{
		Pattern: `provisioning should provision correct filesystem size when restoring snapshot to larger size pvc`,
		Reason:  "the spec compares the filesystem size a pod sees (statfs) before and after the restore; on a btrfs pool (dhpp-node-1, 2 and 4) a volume is a subvolume whose qgroup limit statfs does not show, so both report the pool's whole filesystem (4294967296 bytes on v1.37.2, restore placed on the source's node dhpp-node-4 by dhpp-controller); the larger limit itself is enforced (pkg/node TestSnapshotRestoreClone). It passes only when the snapshot is on the loop node dhpp-node-3 (README, Backends: statfs column)",
	},
	{
		Pattern: `should not mount / map unused volumes in a pod`,
		Reason:  "one-machine cluster artefact: the spec runs nsenter into PID 1's mount namespace (the host's, not the namespaced node's), where the node's /var/lib/kubelet is not visible",
	},
}

// Compile returns the skip list as one regular expression for ginkgo's
// --skip (nil entries: nothing skipped).
func Compile(skips []Skip) (*regexp.Regexp, error) {
	var parts []string
	for _, s := range skips {
		if _, err := regexp.Compile(s.Pattern); err != nil {
			return nil, fmt.Errorf("skip %q: %w", s.Pattern, err)
		}
		parts = append(parts, "(?:"+s.Pattern+")")
	}
	if len(parts) == 0 {
		return nil, nil
	}
	return regexp.Compile(strings.Join(parts, "|"))
}

// Match returns the first entry whose pattern matches the spec's full text.
func Match(skips []Skip, spec string) (Skip, bool) {
	for _, s := range skips {
		if regexp.MustCompile(s.Pattern).MatchString(spec) {
			return s, true
		}
	}
	return Skip{}, false
}
