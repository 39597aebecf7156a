package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/node/loopdev"
)

// TestSymlinkedImage plants a symlink in place of a loop volume's disk.img,
// pointing out of the pool or at another volume's image: stage, expand,
// unstage, delete and purge never follow it. The image it points at is
// never attached and keeps every byte and its size.
func TestSymlinkedImage(t *testing.T) {
	ctx := context.Background()
	poolPath := newPoolOnDisk(t, "ext4", 256*mib)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := openManager(t, poolPath, BackendLoop, clock)
	defer m.Close()
	victim, err := m.CreateVolume(ctx, CreateRequest{Name: "victim", RequiredBytes: 16 * mib, AccessType: AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	victimImg := filepath.Join(poolPath, "volumes", victim.Name, imageName)
	// A valid ext4 image outside the pool: attaching it would succeed.
	outside := filepath.Join(t.TempDir(), "outside.img")
	copyFile(t, victimImg, outside)

	for _, tc := range []struct {
		name   string
		access AccessType
		target string
	}{
		{"mount-outside", AccessMount, outside},
		{"mount-other-volume", AccessMount, victimImg},
		{"block-outside", AccessBlock, outside},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := m.CreateVolume(ctx, CreateRequest{Name: tc.name, RequiredBytes: 16 * mib, AccessType: tc.access})
			if err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(poolPath, "volumes", v.Name, imageName)
			if err := os.Remove(img); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target, img); err != nil {
				t.Fatal(err)
			}
			sum, size := fileSum(t, tc.target)
			staging := filepath.Join(t.TempDir(), "staging")

			if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); !errors.Is(err, ErrWrongPath) {
				t.Errorf("StageVolume through a symlinked image = %v, want ErrWrongPath", err)
			}
			if _, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: 32 * mib}); !errors.Is(err, ErrWrongPath) {
				t.Errorf("ExpandVolume through a symlinked image = %v, want ErrWrongPath", err)
			}
			if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
				t.Errorf("UnstageVolume = %v, want nil (nothing of dhpp's is attached)", err)
			}
			if err := m.DeleteVolume(ctx, v.ID); err != nil {
				t.Fatalf("DeleteVolume: %v", err)
			}
			clock.Add(time.Hour)
			if _, err := m.PurgeTrash(ctx, time.Minute); err != nil {
				t.Fatalf("PurgeTrash: %v", err)
			}
			if devs, err := loopdev.Find(tc.target); err != nil || len(devs) != 0 {
				t.Errorf("the symlink's target is attached to %v (%v)", devs, err)
			}
			if gotSum, gotSize := fileSum(t, tc.target); gotSum != sum || gotSize != size {
				t.Errorf("the symlink's target changed: size %d -> %d, content changed: %v", size, gotSize, gotSum != sum)
			}
		})
	}
	if _, err := m.GetVolume(victim.ID); err != nil {
		t.Errorf("the volume whose image was the target is gone: %v", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, p string) ([32]byte, int64) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b), int64(len(b))
}
