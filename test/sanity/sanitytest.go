// Package sanitytest runs the CSI conformance suite (csi-test's pkg/sanity)
// against the real dhpp driver on a real loop-backed disk. Ginkgo runs one
// suite per process, so each backend has its own small test package below
// this one, calling Run with its disk and backend.
package sanitytest

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
)

const (
	nodeID = "sanity-node"
	mib    = 1 << 20
)

// Case describes one run of the suite.
type Case struct {
	FS         string           // filesystem of the disk: btrfs, ext4, xfs
	Backend    node.BackendKind // the pool's backend
	AccessType string           // "mount" or "block"
	VolumeSize int64            // sanity's TestVolumeSize
	FsType     string           // pool's default loop filesystem
	// Parameters are the StorageClass parameters of every CreateVolume.
	Parameters map[string]string
	// Skips lists the specs expected to be skipped and why. The suite fails
	// if a spec is skipped that is not listed, or a listed one runs.
	Skips map[string]string
}

// idGen makes IDs dhpp considers well-formed but that name no volume, so
// sanity's "unknown volume" checks reach the NotFound paths rather than
// tripping over ID syntax.
type idGen struct{ n atomic.Int64 }

func (g *idGen) GenerateUniqueValidVolumeID() string {
	return fmt.Sprintf("%s/default/sanity-missing-%d", nodeID, g.n.Add(1))
}
func (g *idGen) GenerateInvalidVolumeID() string {
	// DeleteVolume must succeed on it: a well-formed ID of a volume that is
	// not there. (A malformed ID gets InvalidArgument from dhpp.)
	return fmt.Sprintf("%s/default/sanity-gone-%d", nodeID, g.n.Add(1))
}
func (g *idGen) GenerateUniqueValidNodeID() string { return nodeID }
func (g *idGen) GenerateInvalidNodeID() string     { return "not-this-node" }

// skipped collects the specs Ginkgo skipped, for Run to check.
var skipped = map[string]string{}

var _ = ginkgo.ReportAfterEach(func(r types.SpecReport) {
	if r.State == types.SpecStateSkipped {
		skipped[r.FullText()] = r.Failure.Message
	}
})

// Run makes a fresh loop-backed disk of c.FS and runs the whole sanity suite
// against dhpp serving a pool on it (see RunOnPool).
func Run(t *testing.T, c Case) {
	testdisk.RequireRoot(t)
	// The disk must hold the whole run's trash as well as its live volumes:
	// no purger runs here, so every volume the ~100 specs delete keeps its
	// data, as it would for --trash-retention on a node. An xfs image of
	// 300 MiB or more (the loop package's) is 64 MiB written at mkfs, its
	// log; about 40 of them in the trash took 2.6 GiB of a 4 GiB disk and
	// failed a later spec's creates, depending on Ginkgo's spec order. The
	// image is sparse: a larger one costs nothing it does not use.
	disk := testdisk.New(t, c.FS, 16<<30)
	poolPath := filepath.Join(disk.Dir, "dhpp")
	if err := os.Mkdir(poolPath, 0o755); err != nil {
		t.Fatal(err)
	}
	RunOnPool(t, c, poolPath)
}

func checkSkips(t *testing.T, want map[string]string) {
	t.Helper()
	var unexpected, ran []string
	for spec, msg := range skipped {
		if _, ok := want[spec]; !ok {
			unexpected = append(unexpected, fmt.Sprintf("%q (%s)", spec, strings.TrimSpace(msg)))
		}
	}
	for spec := range want {
		if _, ok := skipped[spec]; !ok {
			ran = append(ran, fmt.Sprintf("%q", spec))
		}
	}
	sort.Strings(unexpected)
	sort.Strings(ran)
	if len(unexpected) > 0 {
		t.Errorf("%d sanity specs were skipped without a listed reason:\n%s", len(unexpected), strings.Join(unexpected, "\n"))
	}
	if len(ran) > 0 {
		t.Errorf("%d specs listed as skipped now run; remove them from the list:\n%s", len(ran), strings.Join(ran, "\n"))
	}
	t.Logf("%d sanity specs skipped, each with a listed reason", len(skipped))
}

func checkPath(p string) (sanity.PathKind, error) {
	st, err := os.Lstat(p)
	switch {
	case os.IsNotExist(err):
		return sanity.PathIsNotFound, nil
	case err != nil:
		return "", err
	case st.IsDir():
		return sanity.PathIsDir, nil
	case st.Mode().IsRegular():
		return sanity.PathIsFile, nil
	}
	return sanity.PathIsOther, nil
}
