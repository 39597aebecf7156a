package node

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPreallocatedImage: a volume made with Preallocate is an image with
// every block written once (no hole, no unwritten extent) after creation,
// after an expansion and as a restore, on each filesystem a pool may be on,
// for both inner filesystems and for Block; its filesystem is intact (the
// write-through after mkfs fills only what reads as zeros) and mounts; an
// ext4 inside has no inode table left for the kernel's lazy init to zero
// (which the loop device would turn into punched holes). A volume made
// without it stays sparse, and a retry that differs in preallocate is
// refused.
func TestPreallocatedImage(t *testing.T) {
	kinds := []struct {
		name   string
		access AccessType
		fsType string
		size   int64
	}{
		{"ext4", AccessMount, "ext4", 64 * mib},
		{"xfs", AccessMount, "xfs", 304 * mib},
		{"block", AccessBlock, "", 64 * mib},
	}
	for _, disk := range []string{"xfs", "ext4", "btrfs"} {
		t.Run(disk, func(t *testing.T) {
			m := openManager(t, newPoolOnDisk(t, disk, 3<<30), BackendLoop, &fakeClock{t: time.Now()})
			t.Cleanup(m.Close)
			p := m.Pools()[0]
			for _, k := range kinds {
				t.Run(k.name, func(t *testing.T) {
					ctx := context.Background()
					req := CreateRequest{Name: "pre-" + k.name, RequiredBytes: k.size, AccessType: k.access, FsType: k.fsType, Mode: 0o777, Preallocate: true}
					v, err := m.CreateVolume(ctx, req)
					if err != nil {
						t.Fatalf("CreateVolume: %v", err)
					}
					if !v.Preallocated {
						t.Fatalf("record says preallocated=false")
					}
					img := filepath.Join(p.Path, dirVolumes, v.Name, imageName)
					requireWrittenThrough(t, img, k.size)
					checkImageFs(t, img, k.fsType)

					retry := req
					retry.Preallocate = false
					if _, err := m.CreateVolume(ctx, retry); !errors.Is(err, ErrAlreadyExists) {
						t.Errorf("retry with preallocate=false: %v, want ErrAlreadyExists", err)
					}
					if again, err := m.CreateVolume(ctx, req); err != nil || again.ID != v.ID {
						t.Errorf("identical retry: %v, %v; want the same volume", again, err)
					}

					if k.access == AccessMount {
						staging := filepath.Join(t.TempDir(), "staging")
						if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: k.access}); err != nil {
							t.Fatalf("StageVolume: %v", err)
						}
						if err := os.WriteFile(filepath.Join(staging, "f"), []byte("kept"), 0o644); err != nil {
							t.Fatal(err)
						}
						if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
							t.Fatalf("UnstageVolume: %v", err)
						}
					}

					grown := k.size + 64*mib
					if _, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: grown}); err != nil {
						t.Fatalf("ExpandVolume: %v", err)
					}
					requireWrittenThrough(t, img, grown)

					snap, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap-" + k.name, SourceVolumeID: v.ID})
					if err != nil {
						t.Fatalf("CreateSnapshot: %v", err)
					}
					restored, err := m.CreateVolume(ctx, CreateRequest{Name: "restored-" + k.name, RequiredBytes: grown + 64*mib, AccessType: k.access, Mode: 0o777,
						Preallocate: true, Source: &ContentSource{SnapshotID: snap.ID}})
					if err != nil {
						t.Fatalf("restore: %v", err)
					}
					requireWrittenThrough(t, filepath.Join(p.Path, dirVolumes, restored.Name, imageName), grown+64*mib)

					thin, err := m.CreateVolume(ctx, CreateRequest{Name: "thin-" + k.name, RequiredBytes: k.size, AccessType: k.access, FsType: k.fsType, Mode: 0o777})
					if err != nil {
						t.Fatalf("CreateVolume without preallocate: %v", err)
					}
					if thin.Preallocated {
						t.Errorf("volume made without preallocate has preallocated=true")
					}
					if n := allocatedBytes(t, filepath.Join(p.Path, dirVolumes, thin.Name, imageName)); n > k.size/2 {
						t.Errorf("volume made without preallocate has %d of %d bytes allocated: no longer thin", n, k.size)
					}
				})
			}
		})
	}
}

// TestPreallocateDirectoryVolume: a volume that is a directory has nothing
// to preallocate; the request is met and the record says it is not an
// image written through, and a retry that differs only in preallocate gets
// the same volume.
func TestPreallocateDirectoryVolume(t *testing.T) {
	m := dirManager(t, t.TempDir(), &fakeClock{t: time.Now()})
	req := CreateRequest{Name: "d", RequiredBytes: mib, Mode: 0o777, Preallocate: true}
	v, err := m.CreateVolume(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if v.Preallocated {
		t.Fatalf("directory volume recorded as preallocated")
	}
	req.Preallocate = false
	if _, err := m.CreateVolume(context.Background(), req); err != nil {
		t.Fatalf("retry with preallocate=false of a directory volume: %v", err)
	}
}

func allocatedBytes(t *testing.T, img string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// requireWrittenThrough fails unless img is size bytes, all allocated, with
// no unwritten extent (filefrag marks them; they read as zeros but their
// first write is a transaction of the pool's filesystem, as a hole's is).
func requireWrittenThrough(t *testing.T, img string, size int64) {
	t.Helper()
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size {
		t.Fatalf("image is %d bytes, want %d", st.Size(), size)
	}
	if n := allocatedBytes(t, img); n < size {
		t.Errorf("%d of %d bytes allocated: the image has holes", n, size)
	}
	out, err := exec.Command("filefrag", "-v", img).CombinedOutput()
	if err != nil {
		t.Fatalf("filefrag -v %s: %v: %s", img, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "unwritten") {
			t.Errorf("image has an unwritten extent: %s", strings.TrimSpace(line))
		}
	}
}

// groupLine is how dumpe2fs starts a block group's paragraph.
var groupLine = regexp.MustCompile(`^Group [0-9]+: `)

// checkImageFs checks the filesystem in img read-only, and for ext4 that
// every block group's inode table is marked zeroed.
func checkImageFs(t *testing.T, img, fsType string) {
	t.Helper()
	var cmd *exec.Cmd
	switch fsType {
	case "":
		return
	case "ext4":
		cmd = exec.Command("e2fsck", "-fn", img)
	case "xfs":
		cmd = exec.Command("xfs_repair", "-n", "-f", img)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	if fsType != "ext4" {
		return
	}
	out, err := exec.Command("dumpe2fs", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v: %s", err, out)
	}
	groups := 0
	for _, line := range strings.Split(string(out), "\n") {
		if groupLine.MatchString(line) {
			groups++
			if !strings.Contains(line, "ITABLE_ZEROED") {
				t.Errorf("inode table not marked zeroed, left to lazy init: %s", line)
			}
		}
	}
	if groups == 0 {
		t.Fatalf("dumpe2fs lists no block group:\n%s", out)
	}
}

// TestPreallocateOutlastsCancel: writing an image through takes about a
// second per GiB, longer than csi-provisioner's 10 s timeout for large
// volumes. A cancelled call must not throw the work away (every retry
// would start again and none would finish): the volume is completed and
// returned, and a retry gets it.
func TestPreallocateOutlastsCancel(t *testing.T) {
	m := openManager(t, newPoolOnDisk(t, "xfs", 2<<30), BackendLoop, &fakeClock{t: time.Now()})
	t.Cleanup(m.Close)
	const size = 512 * mib
	req := CreateRequest{Name: "big", RequiredBytes: size, AccessType: AccessBlock, Preallocate: true}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	v, err := m.CreateVolume(ctx, req)
	took := time.Since(start)
	if ctx.Err() == nil {
		t.Fatalf("the call took %s, less than its 20 ms timeout: nothing was cancelled, the test proves nothing", took)
	}
	if err != nil {
		t.Fatalf("CreateVolume cancelled after 20 ms (took %s): %v; want the volume completed", took, err)
	}
	requireWrittenThrough(t, filepath.Join(m.Pools()[0].Path, dirVolumes, v.Name, imageName), size)
	if again, err := m.CreateVolume(context.Background(), req); err != nil || again.ID != v.ID {
		t.Fatalf("retry: %v, %v; want the volume", again, err)
	}
}
