package sanitytest

import (
	"fmt"
	"testing"

	"github.com/dhpp-io/dhpp/internal/vmtest"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// projQuotaMkfs makes a filesystem that can carry project quotas.
var projQuotaMkfs = map[node.BackendKind][]string{
	node.BackendXFS:  {"mkfs.xfs", "-q", "-f"},
	node.BackendExt4: {"mkfs.ext4", "-q", "-F", "-O", "quota,project"},
}

// RunProjQuotaVM runs the whole suite against a pool with an XFS or ext4
// project-quota backend, for volumes of accessType ("mount" or "block").
// This host's kernel has neither quota, so it runs in a vmtest VM on a
// virtio disk made with the quota features and mounted with prjquota.
func RunProjQuotaVM(t *testing.T, kind node.BackendKind, accessType string) {
	mkfs, ok := projQuotaMkfs[kind]
	if !ok {
		panic(fmt.Sprintf("RunProjQuotaVM: %s is not a project-quota backend", kind))
	}
	if !vmtest.Run(t, vmtest.Config{Disks: []int64{1 << 30}, Timeout: VMTimeout}) {
		return
	}
	fs := string(kind)
	pool := PrepareVMDisk(t, "/dev/vda", fs, mkfs, "prjquota")
	RunOnPool(t, Case{FS: fs, Backend: kind, AccessType: accessType, VolumeSize: 64 << 20, Skips: CommonSkips}, pool)
}
