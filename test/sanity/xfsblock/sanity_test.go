package xfsblock

import (
	"testing"

	"github.com/dhpp-io/dhpp/internal/vmtest"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the xfs (project quota)
// backend for block volumes: images in the pool on loop devices. Like
// test/sanity/xfs it runs in a vmtest VM (this host's kernel has no XFS
// quota).
func TestSanity(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: []int64{1 << 30}, Timeout: sanitytest.VMTimeout}) {
		return
	}
	pool := sanitytest.PrepareVMDisk(t, "/dev/vda", "xfs", []string{"mkfs.xfs", "-q", "-f"}, "prjquota")
	sanitytest.RunOnPool(t, sanitytest.Case{
		FS: "xfs", Backend: node.BackendXFS, AccessType: "block", VolumeSize: 64 << 20,
		Skips: sanitytest.CommonSkips,
	}, pool)
}
