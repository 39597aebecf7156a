package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node/loopdev"
	"golang.org/x/sys/unix"
)

// TestImageVolumesOnEveryPool: a pool whose backend cannot be a block
// device (btrfs, dir) serves a Block volume, and a Filesystem volume of a
// filesystem other than its own, as an image in the pool on a loop device
// (direct I/O, the disk's logical block size, NOCOW on btrfs), counted
// against the pool, through its whole life: stage/publish, data read
// back, stats, online expansion, a Manager restart, delete to the trash.
// The pool's own filesystem asked by name stays a native volume.
func TestImageVolumesOnEveryPool(t *testing.T) {
	testdisk.RequireRoot(t)
	cases := []struct {
		disk    string
		backend BackendKind
		foreign string // a filesystem other than the pool's
	}{
		{"btrfs", BackendBtrfs, "ext4"},
		{"xfs", BackendDir, "ext4"},
		{"ext4", BackendDir, "xfs"},
	}
	for _, tc := range cases {
		t.Run(tc.disk+"/"+string(tc.backend), func(t *testing.T) {
			testImageVolumes(t, tc.disk, tc.backend, tc.foreign)
		})
	}
}

func testImageVolumes(t *testing.T, disk string, kind BackendKind, foreign string) {
	ctx := context.Background()
	d := testdisk.New(t, disk, 1<<30)
	poolPath := filepath.Join(d.Dir, "dhpp")
	if err := os.Mkdir(poolPath, 0o755); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()}
	m := openManager(t, poolPath, kind, clock)
	t.Cleanup(func() { m.Close() }) // after the unstaging cleanup below
	fsSize := loopFsTypes[foreign].minSize + 16*mib

	blk, err := m.CreateVolume(ctx, CreateRequest{Name: "blk", RequiredBytes: 8 * mib, AccessType: AccessBlock})
	if err != nil {
		t.Fatalf("CreateVolume Block: %v", err)
	}
	fsv, err := m.CreateVolume(ctx, CreateRequest{Name: "fsv", RequiredBytes: fsSize, AccessType: AccessMount, FsType: foreign, Mode: 0o777})
	if err != nil {
		t.Fatalf("CreateVolume fsType %s: %v", foreign, err)
	}
	native, err := m.CreateVolume(ctx, CreateRequest{Name: "native", RequiredBytes: 8 * mib, AccessType: AccessMount, FsType: disk, Mode: 0o777})
	if err != nil {
		t.Fatalf("CreateVolume fsType %s (the pool's own): %v", disk, err)
	}
	if blk.Backend != BackendLoop || blk.FsType != "" || fsv.Backend != BackendLoop || fsv.FsType != foreign {
		t.Fatalf("image volumes recorded as %s/%q and %s/%q, want loop/\"\" and loop/%q", blk.Backend, blk.FsType, fsv.Backend, fsv.FsType, foreign)
	}
	if native.Backend != kind || native.FsType != "" {
		t.Fatalf("fsType %s on a %s pool made a %s/%q volume, want the native %s", disk, disk, native.Backend, native.FsType, kind)
	}
	for _, name := range []string{"blk", "fsv"} {
		checkImage(t, filepath.Join(poolPath, dirVolumes, name, imageName), disk == "btrfs")
	}
	c, err := m.Pools()[0].Capacity()
	if err != nil {
		t.Fatal(err)
	}
	if want := 16*mib + fsSize; c.Provisioned != want {
		t.Errorf("pool provisioned = %d, want %d (both images and the native volume)", c.Provisioned, want)
	}
	// The same name asked with another filesystem is another volume.
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "fsv", RequiredBytes: fsSize, FsType: disk, Mode: 0o777}); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("fsv again as %s = %v, want ErrAlreadyExists", disk, err)
	}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "native", RequiredBytes: 8 * mib, FsType: foreign, Mode: 0o777}); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("native again as %s = %v, want ErrAlreadyExists", foreign, err)
	}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "fsv", RequiredBytes: fsSize, FsType: foreign, Mode: 0o777}); err != nil {
		t.Errorf("fsv again, same request: %v", err)
	}

	work := t.TempDir()
	p := func(name string) string { return filepath.Join(work, name) }
	t.Cleanup(func() { // whatever a failure left staged
		for _, v := range []*Volume{blk, fsv} {
			m.UnpublishVolume(ctx, v.ID, p(v.Name+"-target"))
			m.UnstageVolume(ctx, v.ID, p(v.Name+"-staging"))
		}
	})
	stage := func(m *Manager) {
		t.Helper()
		if err := m.StageVolume(ctx, StageRequest{VolumeID: blk.ID, StagingPath: p("blk-staging"), AccessType: AccessBlock}); err != nil {
			t.Fatalf("StageVolume Block: %v", err)
		}
		if err := m.StageVolume(ctx, StageRequest{VolumeID: fsv.ID, StagingPath: p("fsv-staging"), AccessType: AccessMount, FsType: foreign}); err != nil {
			t.Fatalf("StageVolume %s: %v", foreign, err)
		}
		if err := m.PublishVolume(ctx, PublishRequest{VolumeID: blk.ID, StagingPath: p("blk-staging"), TargetPath: p("blk-target"), AccessType: AccessBlock}); err != nil {
			t.Fatalf("PublishVolume Block: %v", err)
		}
		if err := m.PublishVolume(ctx, PublishRequest{VolumeID: fsv.ID, StagingPath: p("fsv-staging"), TargetPath: p("fsv-target"), AccessType: AccessMount}); err != nil {
			t.Fatalf("PublishVolume %s: %v", foreign, err)
		}
	}
	unstage := func(m *Manager) {
		t.Helper()
		for _, v := range []*Volume{blk, fsv} {
			if err := m.UnpublishVolume(ctx, v.ID, p(v.Name+"-target")); err != nil {
				t.Fatalf("UnpublishVolume %s: %v", v.Name, err)
			}
			if err := m.UnstageVolume(ctx, v.ID, p(v.Name+"-staging")); err != nil {
				t.Fatalf("UnstageVolume %s: %v", v.Name, err)
			}
		}
	}
	stage(m)
	// The staged mount is the requested filesystem; another is refused.
	if got := fsMagicName(t, p("fsv-target")); got != foreign {
		t.Errorf("published %s volume shows filesystem %q", foreign, got)
	}
	if err := m.StageVolume(ctx, StageRequest{VolumeID: fsv.ID, StagingPath: p("fsv-staging"), AccessType: AccessMount, FsType: disk}); !errors.Is(err, ErrInvalid) {
		t.Errorf("staging the %s volume as %s = %v, want ErrInvalid", foreign, disk, err)
	}
	checkLoopDevice(t, filepath.Join(poolPath, dirVolumes, "blk", imageName), d.Device)
	writeAt(t, p("blk-target"), "block!", 4*mib)
	if err := os.WriteFile(filepath.Join(p("fsv-target"), "f"), []byte("file!"), 0o644); err != nil {
		t.Fatalf("write into the %s volume: %v", foreign, err)
	}

	// Stats and online expansion.
	_, u, err := m.VolumeStats(blk.ID, p("blk-target"), "")
	if err != nil || u.TotalBytes != 8*mib {
		t.Errorf("Block stats = %+v, %v; want %d bytes", u, err, 8*mib)
	}
	_, before, err := m.VolumeStats(fsv.ID, p("fsv-target"), "")
	if err != nil || before.TotalBytes <= 0 || before.TotalBytes > fsSize || !before.HasInodes {
		t.Errorf("%s stats = %+v, %v; want its own filesystem's figures, at most %d bytes", foreign, before, err, fsSize)
	}
	if _, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: blk.ID, RequiredBytes: 16 * mib}); err != nil {
		t.Fatalf("ExpandVolume Block: %v", err)
	}
	if got := blockSize(t, p("blk-target")); got != 16*mib {
		t.Errorf("Block device after expand = %d bytes, want %d", got, 16*mib)
	}

	// The filesystem volume is expanded while not staged (online ext4
	// growth needs CAP_SYS_RESOURCE, which a test runner may lack); it
	// grows at its next stage, after the restart. A restarted Manager
	// finds both in their image form, with their data and sizes.
	unstage(m)
	if _, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: fsv.ID, RequiredBytes: 2 * fsSize}); err != nil {
		t.Fatalf("ExpandVolume %s: %v", foreign, err)
	}
	if c, err := m.Pools()[0].Capacity(); err != nil || c.Provisioned != 24*mib+2*fsSize {
		t.Errorf("pool provisioned after expand = %d, %v; want %d", c.Provisioned, err, 24*mib+2*fsSize)
	}
	m.Close()
	m = openManager(t, poolPath, kind, clock)
	for _, want := range []*Volume{blk, fsv} {
		got, err := m.GetVolume(want.ID)
		if err != nil || got.Backend != BackendLoop || got.FsType != want.FsType {
			t.Fatalf("after restart %s = %+v, %v", want.Name, got, err)
		}
	}
	stage(m)
	readBack(t, p("blk-target"), "block!", 4*mib)
	if b, err := os.ReadFile(filepath.Join(p("fsv-target"), "f")); err != nil || string(b) != "file!" {
		t.Errorf("read back from the %s volume after restart = %q, %v", foreign, b, err)
	}
	if got := blockSize(t, p("blk-target")); got != 16*mib {
		t.Errorf("Block device after restart = %d bytes, want %d", got, 16*mib)
	}
	if _, after, err := m.VolumeStats(fsv.ID, p("fsv-target"), ""); err != nil || after.TotalBytes <= before.TotalBytes+fsSize/2 {
		t.Errorf("%s stats after expanding to %d = %+v, %v; before %d", foreign, 2*fsSize, after, err, before.TotalBytes)
	}
	if err := m.DeleteVolume(ctx, fsv.ID); !errors.Is(err, ErrInUse) {
		t.Errorf("DeleteVolume while published = %v, want ErrInUse", err)
	}
	unstage(m)

	// Delete moves them to the trash, detached.
	for _, v := range []*Volume{blk, fsv, native} {
		if err := m.DeleteVolume(ctx, v.ID); err != nil {
			t.Fatalf("DeleteVolume %s: %v", v.Name, err)
		}
	}
	trash, err := os.ReadDir(filepath.Join(poolPath, dirTrash))
	if err != nil || len(trash) != 3 {
		t.Fatalf("trash = %v, %v; want the 3 volumes", trash, err)
	}
	for _, e := range trash {
		img := filepath.Join(poolPath, dirTrash, e.Name(), imageName)
		if devs, _ := loopdev.Find(img); len(devs) != 0 {
			t.Errorf("trashed image %s still attached to %v", img, devs)
		}
	}
	clock.Add(time.Hour)
	if n, err := m.PurgeTrash(ctx, time.Minute); err != nil || n != 3 {
		t.Errorf("PurgeTrash = %d, %v; want 3", n, err)
	}
}

// checkImage checks that an image volume's image is a sparse file, NOCOW
// on btrfs.
func checkImage(t *testing.T, img string, btrfs bool) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatalf("image: %v", err)
	}
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Fatalf("FS_IOC_GETFLAGS %s: %v", img, err)
	}
	if nocow := flags&fsNoCowFl != 0; nocow != btrfs {
		t.Errorf("%s: NOCOW = %v, want %v", img, nocow, btrfs)
	}
}

// checkLoopDevice checks the loop device of an image: direct I/O, and the
// logical block size of the disk under the pool.
func checkLoopDevice(t *testing.T, img, disk string) {
	t.Helper()
	devs, err := loopdev.Find(img)
	if err != nil || len(devs) != 1 {
		t.Fatalf("loop devices of %s = %v, %v; want one", img, devs, err)
	}
	sys := func(dev, file string) string {
		b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), file))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := sys(devs[0], "loop/dio"); got != "1" {
		t.Errorf("%s: direct I/O = %s, want 1", devs[0], got)
	}
	got, want := sys(devs[0], "queue/logical_block_size"), sys(disk, "queue/logical_block_size")
	if _, err := strconv.Atoi(got); err != nil || got != want {
		t.Errorf("%s: logical block size %s, the disk's (%s) is %s", devs[0], got, disk, want)
	}
}

// fsMagicName names the filesystem at path (see fsTypeOf).
func fsMagicName(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	name, err := fsTypeOf(f)
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// writeAt writes s at off into the device at path, synchronously.
func writeAt(t *testing.T, path, s string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_SYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(s), off); err != nil {
		t.Fatalf("write to %s: %v", path, err)
	}
}
