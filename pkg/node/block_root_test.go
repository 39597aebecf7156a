package node

import (
	"context"
	"errors"
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
	m, v, poolPath := newBlockVolume(t)
	img := filepath.Join(poolPath, "volumes/blk/disk.img")
	work := t.TempDir()
	staging, target := filepath.Join(work, "staging"), filepath.Join(work, "dev", "target")
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
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
	if _, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: 16 * mib}); err != nil {
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
	if devs, _ := loopdev.Find(img); len(devs) != 0 {
		t.Fatalf("loop device still attached: %v", devs)
	}
	if err := m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
}

// TestBlockRestageWhileDeviceHeld: another process (udev, or this driver's
// own FindFile serving another volume) may have a Block volume's loop
// device open when it is unstaged; LOOP_CLR_FD then only marks the device
// autoclear, and it vanishes at that last close. A Stage right after must
// not take that dying device for staged, or the Publish that follows finds
// no device ("not staged"), or binds one that is gone.
func TestBlockRestageWhileDeviceHeld(t *testing.T) {
	ctx := context.Background()
	m, v, poolPath := newBlockVolume(t)
	img := filepath.Join(poolPath, "volumes/blk/disk.img")
	work := t.TempDir()
	staging, target := filepath.Join(work, "staging"), filepath.Join(work, "dev", "target")
	publish := func() {
		t.Helper()
		if err := m.PublishVolume(ctx, PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, AccessType: AccessBlock}); err != nil {
			t.Fatalf("PublishVolume: %v", err)
		}
	}
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("StageVolume: %v", err)
	}
	publish()
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("block!"), 4*mib); err != nil {
		t.Fatalf("write to the block device: %v", err)
	}
	f.Close()
	devs, err := loopdev.Find(img)
	if err != nil || len(devs) != 1 {
		t.Fatalf("loop devices of the image = %v, %v; want one", devs, err)
	}
	// Hold the device open across Unstage, as another reader would, and
	// let go of it a moment later.
	holder, err := os.Open(devs[0])
	if err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(500 * time.Millisecond)
		holder.Close()
		close(released)
	}()
	if err := m.UnpublishVolume(ctx, v.ID, target); err != nil {
		t.Fatalf("UnpublishVolume: %v", err)
	}
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatalf("UnstageVolume: %v", err)
	}
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("StageVolume again: %v", err)
	}
	<-released
	publish()
	defer func() {
		m.UnpublishVolume(ctx, v.ID, target)
		m.UnstageVolume(ctx, v.ID, staging)
	}()
	readBack(t, target, "block!", 4*mib)

	// A driver killed between LOOP_CLR_FD and the end of that wait leaves
	// such a dying device (autoclear, still open) for the next Stage.
	if err := m.UnpublishVolume(ctx, v.ID, target); err != nil {
		t.Fatalf("UnpublishVolume: %v", err)
	}
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatalf("UnstageVolume: %v", err)
	}
	dying, err := loopdev.AttachOpen(img, loopdev.Options{AutoClear: true})
	if err != nil {
		t.Fatal(err)
	}
	released = make(chan struct{})
	go func() {
		time.Sleep(500 * time.Millisecond)
		dying.Close()
		close(released)
	}()
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("StageVolume over a dying device: %v", err)
	}
	<-released
	publish()
	readBack(t, target, "block!", 4*mib)
}

// readBack checks that the device at path reads want at off.
func readBack(t *testing.T, path, want string, off int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open the published device: %v", err)
	}
	defer f.Close()
	buf := make([]byte, len(want))
	if _, err := f.ReadAt(buf, off); err != nil || string(buf) != want {
		t.Fatalf("read back from the restaged device = %q, %v; want %q", buf, err, want)
	}
}

// TestBlockUnstageDeviceHeldOpen: a Block volume's device that stays open
// in another process cannot be released; Unstage says so (ErrBusy, a
// retryable Aborted) instead of reporting success, and a retry after the
// holder let go succeeds.
func TestBlockUnstageDeviceHeldOpen(t *testing.T) {
	ctx := context.Background()
	defer func(d time.Duration) { loopReleaseTimeout = d }(loopReleaseTimeout)
	loopReleaseTimeout = 200 * time.Millisecond
	m, v, poolPath := newBlockVolume(t)
	img := filepath.Join(poolPath, "volumes/blk/disk.img")
	staging := filepath.Join(t.TempDir(), "staging")
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("StageVolume: %v", err)
	}
	devs, err := loopdev.Find(img)
	if err != nil || len(devs) != 1 {
		t.Fatalf("loop devices of the image = %v, %v; want one", devs, err)
	}
	holder, err := os.Open(devs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := m.UnstageVolume(ctx, v.ID, staging); !errors.Is(err, ErrBusy) {
		t.Fatalf("UnstageVolume with the device held open = %v, want ErrBusy", err)
	}
	holder.Close()
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatalf("UnstageVolume after the holder closed: %v", err)
	}
	if devs, _ := loopdev.Find(img); len(devs) != 0 {
		t.Fatalf("loop device still attached: %v", devs)
	}
}

// newBlockVolume makes an 8 MiB Block volume "blk" on a loop pool of its
// own (an ext4 disk); the manager is closed at cleanup.
func newBlockVolume(t *testing.T) (*Manager, *Volume, string) {
	t.Helper()
	poolPath := newPoolOnDisk(t, "ext4", 256*mib)
	m := openManager(t, poolPath, BackendLoop, &fakeClock{t: time.Now()})
	t.Cleanup(m.Close)
	v, err := m.CreateVolume(context.Background(), CreateRequest{Name: "blk", RequiredBytes: 8 * mib, AccessType: AccessBlock})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	return m, v, poolPath
}
