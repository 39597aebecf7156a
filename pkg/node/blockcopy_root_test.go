package node

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node/loopdev"
	"golang.org/x/sys/unix"
)

// TestCopyAttachedBlockVolume: on a pool that cannot reflink (ext4), a
// snapshot or clone of a Block volume whose device is attached is a copy of
// its image. It is made when the device is idle (the copy is then the
// device's content at an instant) and refused with ErrBusy, to be retried,
// while the device is being written (the copy would be torn).
func TestCopyAttachedBlockVolume(t *testing.T) {
	ctx := context.Background()
	m, v, poolPath := newBlockVolume(t)
	staging := filepath.Join(t.TempDir(), "staging")
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("StageVolume: %v", err)
	}
	t.Cleanup(func() { m.UnstageVolume(ctx, v.ID, staging) })
	devs, err := loopdev.Find(filepath.Join(poolPath, "volumes/blk/disk.img"))
	if err != nil || len(devs) != 1 {
		t.Fatalf("loop devices of the image: %v, %v", devs, err)
	}
	dev, err := os.OpenFile(devs[0], os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	block, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(block)
	copy(block, "written before the snapshot")
	if _, err := dev.WriteAt(block, 4096); err != nil {
		t.Fatal(err)
	}

	// Idle: the copy is made and holds what was written.
	_, err = m.CreateSnapshot(ctx, SnapshotRequest{Name: "idle", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatalf("CreateSnapshot of an idle attached Block volume: %v", err)
	}
	img, err := os.ReadFile(filepath.Join(poolPath, dirSnapshots, "idle", imageName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img[4096:8192], block) {
		t.Fatalf("snapshot lacks the block written before it")
	}

	// Written throughout: the copy is refused, to be retried.
	var stop atomic.Bool
	done := make(chan error, 1)
	before, err := deviceWrites(devs)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := int64(0); !stop.Load(); i++ {
			if _, err := dev.WriteAt(block, (i%1024)*4096); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for {
		now, err := deviceWrites(devs)
		if err != nil {
			t.Fatal(err)
		}
		if now.writes > before.writes+10 {
			break
		}
	}
	_, err = m.CreateVolume(ctx, CreateRequest{Name: "clone", AccessType: AccessBlock, RequiredBytes: v.CapacityBytes,
		Source: &ContentSource{VolumeID: v.ID}})
	stop.Store(true)
	if werr := <-done; werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("clone of a Block volume being written, on a pool that cannot reflink: %v, want ErrBusy", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(poolPath, dirTmp)); len(entries) != 0 {
		t.Errorf("the discarded copy left %d entries in %s", len(entries), dirTmp)
	}
	// Idle again: the retry succeeds.
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "clone", AccessType: AccessBlock, RequiredBytes: v.CapacityBytes,
		Source: &ContentSource{VolumeID: v.ID}}); err != nil {
		t.Fatalf("retried clone once the device is idle: %v", err)
	}
}
