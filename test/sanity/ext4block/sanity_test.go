package ext4block

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the ext4 (project quota)
// backend, in a vmtest VM. Block volumes are images in the pool on loop devices.
func TestSanity(t *testing.T) {
	sanitytest.RunProjQuotaVM(t, node.BackendExt4, "block")
}
