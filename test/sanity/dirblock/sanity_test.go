package dirblock

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the BackendDir backend on xfs
// (block volumes: images in the pool on loop devices).
func TestSanity(t *testing.T) {
	sanitytest.Run(t, sanitytest.Case{
		FS: "xfs", Backend: node.BackendDir, AccessType: "block", VolumeSize: 64 << 20,
		Skips: sanitytest.CommonSkips,
	})
}
