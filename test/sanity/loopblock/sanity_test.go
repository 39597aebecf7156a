package loopblock

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the BackendLoop backend on ext4 (block volumes).
func TestSanity(t *testing.T) {
	sanitytest.Run(t, sanitytest.Case{
		FS: "ext4", Backend: node.BackendLoop, AccessType: "block", VolumeSize: 64 << 20,
		Skips: sanitytest.CommonSkips,
	})
}
