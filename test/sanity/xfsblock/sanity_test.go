package xfsblock

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the xfs (project quota)
// backend, in a vmtest VM. Block volumes are images in the pool on loop devices.
func TestSanity(t *testing.T) {
	sanitytest.RunProjQuotaVM(t, node.BackendXFS, "block")
}
