package loop

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the loop backend on an ext4
// disk; the volumes' own filesystem is xfs, because sanity grows a mounted
// volume and online ext4 growth needs CAP_SYS_RESOURCE, which CI machines may
// lack (pkg/node's lifecycle test covers ext4 loop volumes, growing offline).
func TestSanity(t *testing.T) {
	sanitytest.Run(t, sanitytest.Case{
		FS: "ext4", Backend: node.BackendLoop, AccessType: "mount", VolumeSize: 304 << 20, FsType: "xfs",
		Skips: sanitytest.CommonSkips,
	})
}
