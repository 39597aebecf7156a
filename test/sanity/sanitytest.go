// Package sanitytest runs the CSI conformance suite (csi-test's pkg/sanity)
// against the real dhpp driver on a real loop-backed disk. Ginkgo runs one
// suite per process, so each backend has its own small test package below
// this one, calling Run with its disk and backend.
package sanitytest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/driver"
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

// Run starts dhpp on a fresh disk and runs the whole sanity suite against it.
func Run(t *testing.T, c Case) {
	testdisk.RequireRoot(t)
	disk := testdisk.New(t, c.FS, 4<<30)
	poolPath := filepath.Join(disk.Dir, "dhpp")
	if err := os.Mkdir(poolPath, 0o755); err != nil {
		t.Fatal(err)
	}
	mgr, err := node.New(node.Config{NodeID: nodeID, Pools: []node.PoolConfig{{Name: "default", Path: poolPath, Backend: c.Backend, FsType: c.FsType}}})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	drv, err := driver.New(driver.Config{Manager: mgr})
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	sock := filepath.Join(work, "csi.sock")
	l, err := driver.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- drv.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	cfg.TargetPath = filepath.Join(work, "target")
	cfg.StagingPath = filepath.Join(work, "staging")
	cfg.TestVolumeSize = c.VolumeSize
	cfg.TestVolumeExpandSize = 2 * c.VolumeSize
	cfg.TestVolumeAccessType = c.AccessType
	cfg.IDGen = &idGen{}
	cfg.TestInvalidListVolumesStartingToken = "not-a-token"
	cfg.IdempotentCount = 2
	if c.AccessType == "block" {
		// A block target is a file the driver creates, as the kubelet
		// leaves it; sanity would otherwise make a directory there.
		cfg.CreateTargetDir = func(p string) (string, error) { return p, os.MkdirAll(filepath.Dir(p), 0o750) }
		cfg.RemoveTargetPath = func(p string) error { return os.RemoveAll(p) }
		cfg.CheckPath = checkPath
	}
	sanity.Test(t, cfg)
	checkSkips(t, c.Skips)
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
