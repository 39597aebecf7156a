package loopblock

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the BackendLoop backend on
// ext4 (block volumes), from a class with preallocate: "true", so the
// parameter's path through the CSI calls (parsing, idempotent retries,
// restores and clones, expansion) is checked by the suite too. Thin
// images are what every other image run (btrfsblock, dirblock, loop) uses.
// 16 MiB volumes: each is written through, about 40 times in a run.
func TestSanity(t *testing.T) {
	sanitytest.Run(t, sanitytest.Case{
		FS: "ext4", Backend: node.BackendLoop, AccessType: "block", VolumeSize: 16 << 20,
		Parameters: map[string]string{"preallocate": "true"},
		Skips:      sanitytest.CommonSkips,
	})
}
