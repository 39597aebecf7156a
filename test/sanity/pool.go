package sanitytest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/driver"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"golang.org/x/sys/unix"
)

// VMTimeout bounds a sanity run in a vmtest VM: the suite's ~100 specs run
// 5-10x slower under TCG emulation than on the host.
const VMTimeout = 8 * time.Minute

// PrepareVMDisk makes a filesystem on dev with the mkfs command line, mounts
// it with opts on a new directory under /mnt and returns a pool directory on
// it; everything is unmounted at cleanup. It is meant for the VM, where the
// virtio disks are the test's own.
func PrepareVMDisk(t *testing.T, dev, fsType string, mkfs []string, opts string) string {
	t.Helper()
	args := append(append([]string(nil), mkfs[1:]...), dev)
	if out, err := exec.Command(mkfs[0], args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", mkfs[0], strings.Join(args, " "), err, out)
	}
	mnt, err := os.MkdirTemp("/mnt", fsType)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, mnt, fsType, 0, opts); err != nil {
		t.Fatalf("mount %s on %s -o %q: %v", dev, mnt, opts, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount %s: %v", mnt, err)
		}
		os.Remove(mnt)
	})
	pool := filepath.Join(mnt, "dhpp")
	if err := os.Mkdir(pool, 0o755); err != nil {
		t.Fatal(err)
	}
	return pool
}

// RunOnPool runs the whole sanity suite against dhpp serving one pool at
// poolPath, a directory the caller prepared on a filesystem of its choice.
// It is for disks Run cannot make with testdisk, e.g. the virtio disks of a
// vmtest VM (no loop device needed), mounted with options such as prjquota.
func RunOnPool(t *testing.T, c Case, poolPath string) {
	mgr, err := node.New(node.Config{NodeID: nodeID, Pools: []node.PoolConfig{{Name: "default", Path: poolPath, Backend: c.Backend, FsType: c.FsType}}})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	if got := mgr.Pools()[0].Backend(); got != c.Backend && c.Backend != node.BackendAuto {
		t.Fatalf("pool backend = %s, want %s", got, c.Backend)
	}
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
	cfg.TestVolumeParameters = c.Parameters
	cfg.IDGen = &idGen{}
	cfg.TestInvalidListVolumesStartingToken = "not-a-token"
	cfg.IdempotentCount = 2
	if c.AccessType == "block" {
		cfg.CreateTargetDir = func(p string) (string, error) { return p, os.MkdirAll(filepath.Dir(p), 0o750) }
		cfg.RemoveTargetPath = func(p string) error { return os.RemoveAll(p) }
		cfg.CheckPath = checkPath
	}
	sanity.Test(t, cfg)
	checkSkips(t, c.Skips)
}
