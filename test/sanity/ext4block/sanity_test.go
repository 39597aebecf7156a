package ext4block

import (
	"testing"

	"github.com/dhpp-io/dhpp/internal/vmtest"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the ext4 (project quota)
// backend for block volumes: images in the pool on loop devices. Like
// test/sanity/ext4 it runs in a vmtest VM (this host's kernel has no ext4
// quota).
func TestSanity(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: []int64{1 << 30}, Timeout: sanitytest.VMTimeout}) {
		return
	}
	pool := sanitytest.PrepareVMDisk(t, "/dev/vda", "ext4", []string{"mkfs.ext4", "-q", "-F", "-O", "quota,project"}, "prjquota")
	sanitytest.RunOnPool(t, sanitytest.Case{
		FS: "ext4", Backend: node.BackendExt4, AccessType: "block", VolumeSize: 64 << 20,
		Skips: sanitytest.CommonSkips,
	}, pool)
}
