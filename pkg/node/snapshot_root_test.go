package node

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// snapTree is the content every snapshot test writes and checks: a file
// with holes, owners, modes, an xattr and a fixed mtime, a directory of
// another owner, a symlink and a hard link.
var snapMtime = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)

func writeSnapTree(t *testing.T, root string) {
	t.Helper()
	f, err := os.Create(filepath.Join(root, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{0x5a}, mib)
	for _, off := range []int64{0, 8 * mib} {
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(16 * mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	must(t, os.Chown(filepath.Join(root, "sparse"), 1234, 5678))
	must(t, os.Chmod(filepath.Join(root, "sparse"), 0o640))
	must(t, unix.Setxattr(filepath.Join(root, "sparse"), "user.dhpp", []byte("snap"), 0))
	must(t, os.Mkdir(filepath.Join(root, "sub"), 0o750))
	must(t, os.Symlink("../sparse", filepath.Join(root, "sub", "link")))
	must(t, os.Link(filepath.Join(root, "sparse"), filepath.Join(root, "sub", "hard")))
	must(t, os.Chown(filepath.Join(root, "sub"), 42, 43))
	must(t, os.Chtimes(filepath.Join(root, "sparse"), snapMtime, snapMtime))
	must(t, unix.Sync)
}

func must(t *testing.T, v any) {
	t.Helper()
	var err error
	switch f := v.(type) {
	case error:
		err = f
	case func():
		f()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// checkSnapTree checks root holds what writeSnapTree wrote.
func checkSnapTree(t *testing.T, root string) {
	t.Helper()
	p := filepath.Join(root, "sparse")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 16*mib)
	copy(want, bytes.Repeat([]byte{0x5a}, mib))
	copy(want[8*mib:], bytes.Repeat([]byte{0x5a}, mib))
	if !bytes.Equal(data, want) {
		t.Errorf("%s: content differs from the snapshot's", p)
	}
	var st unix.Stat_t
	must(t, unix.Stat(p, &st))
	if st.Uid != 1234 || st.Gid != 5678 || st.Mode&0o7777 != 0o640 {
		t.Errorf("%s: owner %d:%d mode %#o, want 1234:5678 0640", p, st.Uid, st.Gid, st.Mode&0o7777)
	}
	if alloc := st.Blocks * 512; alloc > 4*mib {
		t.Errorf("%s: %d bytes allocated for 2 MiB of data in 16 MiB: the holes were filled", p, alloc)
	}
	if time.Unix(st.Mtim.Unix()).UTC() != snapMtime {
		t.Errorf("%s: mtime %v, want %v", p, time.Unix(st.Mtim.Unix()).UTC(), snapMtime)
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(p, "user.dhpp", buf); err != nil || string(buf[:n]) != "snap" {
		t.Errorf("%s: xattr user.dhpp = %q, %v; want \"snap\"", p, buf[:max(n, 0)], err)
	}
	var sub unix.Stat_t
	must(t, unix.Stat(filepath.Join(root, "sub"), &sub))
	if sub.Uid != 42 || sub.Gid != 43 || sub.Mode&0o7777 != 0o750 {
		t.Errorf("sub: owner %d:%d mode %#o, want 42:43 0750", sub.Uid, sub.Gid, sub.Mode&0o7777)
	}
	if target, err := os.Readlink(filepath.Join(root, "sub", "link")); err != nil || target != "../sparse" {
		t.Errorf("sub/link -> %q, %v; want ../sparse", target, err)
	}
	var hard unix.Stat_t
	must(t, unix.Stat(filepath.Join(root, "sub", "hard"), &hard))
	if hard.Ino != st.Ino {
		t.Errorf("sub/hard is inode %d, sparse %d: the hard link became a copy", hard.Ino, st.Ino)
	}
}

// TestSnapshotRestoreClone takes a snapshot of a volume with real content
// on each host backend, changes the source, restores the snapshot into a
// larger volume and clones the source, and checks content, holes,
// ownership, xattrs, times, the restored volume's enforced (larger) limit,
// that the snapshot outlives its source and a restart, counts against the
// pool's capacity and goes to the trash when deleted.
func TestSnapshotRestoreClone(t *testing.T) {
	for _, tc := range []struct {
		name, disk string
		kind       BackendKind
		method     string
	}{
		{"btrfs", "btrfs", BackendBtrfs, MethodBtrfs},
		{"dir on xfs", "xfs", BackendDir, MethodReflink},
		{"dir on ext4", "ext4", BackendDir, MethodCopy},
		{"loop on btrfs", "btrfs", BackendLoop, MethodReflink},
		{"loop on xfs", "xfs", BackendLoop, MethodCopy}, // see canReflink
		{"loop on ext4", "ext4", BackendLoop, MethodCopy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testSnapshotRestoreClone(t, newPoolOnDisk(t, tc.disk, 1<<30), tc.kind, tc.method, fillAsRoot)
		})
	}
}

// fillAsRoot writes into dir until a write fails (at most 200 MiB) and
// reports how much it wrote and whether a quota or full disk stopped it.
func fillAsRoot(t *testing.T, dir string) (int64, bool, error) {
	n, err := writeUntilError(t, filepath.Join(dir, "fill"), 200*mib)
	return n, isQuotaErr(err), err
}

func testSnapshotRestoreClone(t *testing.T, poolPath string, kind BackendKind, method string, fill func(*testing.T, string) (int64, bool, error)) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Now()}
	m := openManager(t, poolPath, kind, clock)
	defer func() { m.Close() }()
	work := t.TempDir()
	var staged []*Volume
	// root returns where a volume's files are: its data directory, or its
	// staging mount (a loop volume is staged for it).
	root := func(v *Volume) string {
		t.Helper()
		if v.Backend != BackendLoop {
			return filepath.Join(poolPath, dirVolumes, v.Name, dataName)
		}
		sp := filepath.Join(work, v.Name)
		if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: sp, AccessType: AccessMount}); err != nil {
			t.Fatalf("stage %s: %v", v.Name, err)
		}
		staged = append(staged, v)
		return sp
	}
	unstage := func(v *Volume) {
		if v.Backend == BackendLoop {
			if err := m.UnstageVolume(ctx, v.ID, filepath.Join(work, v.Name)); err != nil {
				t.Errorf("unstage %s: %v", v.Name, err)
			}
		}
	}
	t.Cleanup(func() {
		for _, v := range staged {
			_ = m.UnstageVolume(ctx, v.ID, filepath.Join(work, v.Name))
		}
	})

	src, err := m.CreateVolume(ctx, CreateRequest{Name: "src", RequiredBytes: 64 * mib, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	srcRoot := root(src)
	writeSnapTree(t, srcRoot)

	// The snapshot is taken while the source is in use (a loop volume is
	// staged: it is frozen for the capture).
	labels := map[string]string{SnapshotLabelName: "db-snap", SnapshotLabelNamespace: "prod", SnapshotLabelContent: "snapcontent-1"}
	snap, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap-1", SourceVolumeID: src.ID, Labels: labels})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	if snap.Method != method || snap.SizeBytes != src.CapacityBytes || snap.ID != "node-a/default/snapshots/snap-1" {
		t.Errorf("snapshot %s: method %q size %d, want %q and %d", snap.ID, snap.Method, snap.SizeBytes, method, src.CapacityBytes)
	}
	if again, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap-1", SourceVolumeID: src.ID}); err != nil || again.ID != snap.ID || !again.CreatedAt.Equal(snap.CreatedAt) || !maps.Equal(again.Labels, labels) {
		t.Errorf("CreateSnapshot again = %v, %v; want the same snapshot, labels %v", again, err, labels)
	}
	other, err := m.CreateVolume(ctx, CreateRequest{Name: "other", RequiredBytes: 64 * mib})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap-1", SourceVolumeID: other.ID}); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("snap-1 of another volume = %v, want ErrAlreadyExists", err)
	}
	// The source changes after the snapshot.
	must(t, os.WriteFile(filepath.Join(srcRoot, "sparse"), []byte("changed"), 0o644))
	must(t, os.Remove(filepath.Join(srcRoot, "sub", "link")))
	must(t, unix.Sync)

	snapSrc := &ContentSource{SnapshotID: snap.ID}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "small", RequiredBytes: 8 * mib, LimitBytes: 8 * mib, Source: snapSrc}); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("restore smaller than the snapshot = %v, want ErrOutOfRange", err)
	}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "elsewhere", Pool: "fast", RequiredBytes: 64 * mib, Source: snapSrc}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "within the source's pool") {
		t.Errorf("restore into another pool = %v, want ErrInvalid (dhpp restores within the source's pool)", err)
	}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "asblock", AccessType: AccessBlock, RequiredBytes: 64 * mib, Source: snapSrc}); !errors.Is(err, ErrInvalid) {
		t.Errorf("restore of a filesystem snapshot as Block = %v, want ErrInvalid", err)
	}
	other2 := &ContentSource{SnapshotID: "node-b/default/snapshots/snap-1"}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "remote", RequiredBytes: 64 * mib, Source: other2}); !errors.Is(err, ErrElsewhere) {
		t.Errorf("restore of another node's snapshot = %v, want ErrElsewhere", err)
	}
	restored, err := m.CreateVolume(ctx, CreateRequest{Name: "restored", RequiredBytes: 96 * mib, Source: snapSrc})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if restored.CapacityBytes != 96*mib || restored.Backend != src.Backend || !sameSource(restored.ContentSource, snapSrc) {
		t.Errorf("restored %+v", restored)
	}
	if again, err := m.CreateVolume(ctx, CreateRequest{Name: "restored", RequiredBytes: 96 * mib, Source: snapSrc}); err != nil || again.ID != restored.ID {
		t.Errorf("restore again = %v, %v; want the same volume", again, err)
	}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "restored", RequiredBytes: 96 * mib}); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("restored again without a source = %v, want ErrAlreadyExists", err)
	}
	rRoot := root(restored)
	checkSnapTree(t, rRoot)
	// The restored volume's limit is its own, larger, size.
	n, quota, err := fill(t, rRoot)
	if kind == BackendDir {
		if err != nil {
			t.Errorf("dir volume: writing 200 MiB: %v (sizes are not enforced)", err)
		}
	} else if !quota || n <= 64*mib-16*mib || n > 96*mib {
		t.Errorf("restored volume of 96 MiB took %d bytes before %v; want a quota error between the source's 64 MiB and 96 MiB", n, err)
	}
	must(t, os.Remove(filepath.Join(rRoot, "fill")))
	unstage(restored)

	clone, err := m.CreateVolume(ctx, CreateRequest{Name: "clone", RequiredBytes: 64 * mib, Source: &ContentSource{VolumeID: src.ID}})
	if err != nil {
		t.Fatalf("clone: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(root(clone), "sparse")); err != nil || string(got) != "changed" {
		t.Errorf("clone's sparse = %q, %v; want the source as it is now", got, err)
	}
	unstage(clone)

	// The source goes; the snapshot stays restorable.
	unstage(src)
	must(t, m.DeleteVolume(ctx, src.ID))
	again, err := m.CreateVolume(ctx, CreateRequest{Name: "after-delete", RequiredBytes: 64 * mib, Source: snapSrc})
	if err != nil {
		t.Fatalf("restore after the source was deleted: %v", err)
	}
	checkSnapTree(t, root(again))
	unstage(again)

	// A restart finds the snapshot; it counts against the pool.
	m.Close()
	m = openManager(t, poolPath, kind, clock)
	got, err := m.GetSnapshot(snap.ID)
	if err != nil || got.StoredBytes != snap.StoredBytes || got.Method != method || !maps.Equal(got.Labels, labels) {
		t.Fatalf("after restart: GetSnapshot = %+v, %v; want labels %v from the record", got, err, labels)
	}
	c, err := m.Pools()[0].Capacity()
	must(t, err)
	wantProv := restored.CapacityBytes + clone.CapacityBytes + again.CapacityBytes + other.CapacityBytes + snap.StoredBytes
	if c.Provisioned != wantProv || snap.StoredBytes < 2*mib {
		t.Errorf("provisioned %d, want %d (volumes and the snapshot's %d stored bytes)", c.Provisioned, wantProv, snap.StoredBytes)
	}

	// Delete: to the trash, idempotent; restored volumes are independent.
	must(t, m.DeleteSnapshot(ctx, snap.ID))
	must(t, m.DeleteSnapshot(ctx, snap.ID))
	// A retried restore whose answer was lost still gets its volume (the
	// crash loop found this); a new one from the deleted snapshot is NotFound.
	if again, err := m.CreateVolume(ctx, CreateRequest{Name: "restored", RequiredBytes: 96 * mib, Source: snapSrc}); err != nil || again.ID != restored.ID {
		t.Errorf("repeated restore after the snapshot was deleted = %v, %v; want the volume", again, err)
	}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "late", RequiredBytes: 96 * mib, Source: snapSrc}); !errors.Is(err, ErrNotFound) {
		t.Errorf("restore of a deleted snapshot = %v, want ErrNotFound", err)
	}
	if _, err := m.GetSnapshot(snap.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetSnapshot after delete = %v, want ErrNotFound", err)
	}
	trash, err := m.Pools()[0].Trash()
	must(t, err)
	found := false
	for _, e := range trash {
		found = found || strings.HasPrefix(e.Entry, snapTrashPrefix+"snap-1@") && e.Snapshot != nil && e.Snapshot.ID == snap.ID && e.Volume == nil && maps.Equal(e.Snapshot.Labels, labels)
	}
	if !found {
		t.Errorf("trash %v has no entry for the deleted snapshot with its labels", trash)
	}
	checkSnapTree(t, root(restored))
	unstage(restored)
	clock.Add(48 * time.Hour)
	if _, err := m.PurgeTrash(ctx, time.Hour); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(poolPath, dirTrash)); len(entries) != 0 {
		t.Errorf("trash not purged: %v", entries)
	}
}
