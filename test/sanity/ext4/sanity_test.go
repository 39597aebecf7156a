package ext4

import (
	"testing"

	"github.com/dhpp-io/dhpp/internal/vmtest"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the ext4 (project quota)
// backend. This host's kernel has no ext4 quota, so it runs in a vmtest VM on
// a virtio disk made ext4 (with the quota and project features) and mounted with prjquota.
func TestSanity(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: []int64{1 << 30}, Timeout: sanitytest.VMTimeout}) {
		return
	}
	pool := sanitytest.PrepareVMDisk(t, "/dev/vda", "ext4", []string{"mkfs.ext4", "-q", "-F", "-O", "quota,project"}, "prjquota")
	sanitytest.RunOnPool(t, sanitytest.Case{
		FS: "ext4", Backend: node.BackendExt4, AccessType: "mount", VolumeSize: 64 << 20,
		Skips: sanitytest.CommonSkips,
	}, pool)
}
