package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/node/loopdev"
	"golang.org/x/sys/unix"
)

func blockSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafePointer(&n))); errno != 0 {
		t.Fatalf("BLKGETSIZE64 %s: %v", path, errno)
	}
	return int64(n)
}

// TestBlockVolume: a volumeMode Block volume on the loop backend is the
// loop device itself, bind-mounted onto the target file, and grows online.
func TestBlockVolume(t *testing.T) {
	ctx := context.Background()
	poolPath := newPoolOnDisk(t, "ext4", 256*mib)
	m := openManager(t, poolPath, BackendLoop, &fakeClock{t: time.Now()})
	defer m.Close()
	v, err := m.CreateVolume(ctx, CreateRequest{Name: "blk", RequiredBytes: 8 * mib, AccessType: AccessBlock})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	work := t.TempDir()
	staging, target := filepath.Join(work, "staging"), filepath.Join(work, "dev", "target")
	if err := m.StageVolume(ctx, v.ID, staging, nil); err != nil {
		t.Fatalf("StageVolume: %v", err)
	}
	if err := m.PublishVolume(ctx, PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, AccessType: AccessBlock}); err != nil {
		t.Fatalf("PublishVolume: %v", err)
	}
	if got := blockSize(t, target); got != 8*mib {
		t.Fatalf("block device size = %d, want %d", got, 8*mib)
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("block!"), 4*mib); err != nil {
		t.Fatalf("write to the block device: %v", err)
	}
	f.Close()
	if _, err := m.ExpandVolume(ctx, v.ID, 16*mib, 0); err != nil {
		t.Fatalf("ExpandVolume: %v", err)
	}
	if got := blockSize(t, target); got != 16*mib {
		t.Fatalf("block device size after expand = %d, want %d", got, 16*mib)
	}
	if err := m.PublishVolume(ctx, PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: filepath.Join(work, "t2"), AccessType: AccessMount}); err == nil {
		t.Fatalf("publishing a block volume as a filesystem succeeded")
	}
	if err := m.UnpublishVolume(ctx, v.ID, target); err != nil {
		t.Fatalf("UnpublishVolume: %v", err)
	}
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatalf("UnstageVolume: %v", err)
	}
	if devs, _ := loopdev.Find(filepath.Join(poolPath, "volumes/blk/disk.img")); len(devs) != 0 {
		t.Fatalf("loop device still attached: %v", devs)
	}
	if err := m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
}
