package btrfs

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the BackendBtrfs backend on btrfs (mount volumes).
func TestSanity(t *testing.T) {
	sanitytest.Run(t, sanitytest.Case{
		FS: "btrfs", Backend: node.BackendBtrfs, AccessType: "mount", VolumeSize: 64 << 20,
		Skips: sanitytest.CommonSkips,
	})
}
