package btrfsblock

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the BackendBtrfs backend on
// btrfs (block volumes: NOCOW images in the pool on loop devices).
func TestSanity(t *testing.T) {
	sanitytest.Run(t, sanitytest.Case{
		FS: "btrfs", Backend: node.BackendBtrfs, AccessType: "block", VolumeSize: 64 << 20,
		Skips: sanitytest.CommonSkips,
	})
}
