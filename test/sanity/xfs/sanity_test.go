package xfs

import (
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/test/sanity"
)

// TestSanity runs csi-sanity against dhpp with the xfs (project quota)
// backend, in a vmtest VM. The volumes are directories with their own project id.
func TestSanity(t *testing.T) {
	sanitytest.RunProjQuotaVM(t, node.BackendXFS, "mount")
}
