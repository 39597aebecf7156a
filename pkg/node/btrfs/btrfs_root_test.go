package btrfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

const diskSize = 512 << 20

func open(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func syncfs(t testing.TB, f *os.File) {
	t.Helper()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatalf("syncfs: %v", err)
	}
}

// waitRescan waits until no quota rescan runs on f's filesystem, as the
// backend tells it: from the quota status.
func waitRescan(t testing.TB, f *os.File) {
	t.Helper()
	testdisk.WaitFor(t, "the quota rescan", func() bool {
		st, err := Status(f)
		if err != nil {
			t.Fatal(err)
		}
		return !st.Rescanning
	})
}

// fill writes 1 MiB chunks into path until total bytes are written or a
// write fails, syncing the filesystem after each chunk so that qgroup
// accounting (done at transaction commit) sees every chunk. It returns how
// many bytes were written and the first error.
func fill(t testing.TB, fs *os.File, path string, total int) (int, error) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + 1) // not zeros: no chance of holes or compression
	}
	written := 0
	for written < total {
		n, err := f.Write(chunk)
		written += n
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			return written, err
		}
		syncfs(t, fs)
	}
	return written, nil
}

func TestIsBtrfs(t *testing.T) {
	b := testdisk.New(t, "btrfs", diskSize)
	e := testdisk.New(t, "ext4", 32<<20)
	tests := []struct {
		path string
		want bool
	}{
		{b.Dir, true},
		{e.Dir, false},
	}
	for _, tc := range tests {
		got, err := IsBtrfs(tc.path)
		if err != nil || got != tc.want {
			t.Errorf("IsBtrfs(%s) = %v, %v; want %v", tc.path, got, err, tc.want)
		}
	}
	if _, err := IsBtrfs(filepath.Join(b.Dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("IsBtrfs(missing) err = %v, want not-exist", err)
	}
	// Quota operations on a non-btrfs file say so.
	if _, err := QuotaEnabled(open(t, e.Dir)); !errors.Is(err, ErrNotBtrfs) {
		t.Errorf("QuotaEnabled on ext4: %v, want ErrNotBtrfs", err)
	}
	if _, err := SubvolumeID(open(t, e.Dir)); !errors.Is(err, ErrNotBtrfs) {
		t.Errorf("SubvolumeID on ext4: %v, want ErrNotBtrfs", err)
	}
	if ok, err := IsSubvolume(open(t, e.Dir)); ok || err != nil {
		t.Errorf("IsSubvolume on ext4 = %v, %v; want false, nil", ok, err)
	}
}

func TestSubvolumeLifecycle(t *testing.T) {
	d := testdisk.New(t, "btrfs", diskSize)
	root := open(t, d.Dir)

	if id, err := SubvolumeID(root); err != nil || id != fsTreeObjectID {
		t.Errorf("SubvolumeID(top level) = %d, %v; want 5", id, err)
	}

	tests := []struct {
		name     string
		populate func(t *testing.T, dir string)
	}{
		{"empty", func(t *testing.T, dir string) {}},
		{"with files", func(t *testing.T, dir string) {
			if err := os.MkdirAll(filepath.Join(dir, "a/b/c"), 0o755); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i++ {
				if err := os.WriteFile(filepath.Join(dir, "a/b/c", fmt.Sprint(i)), make([]byte, 64<<10), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	var lastID uint64 = fsTreeObjectID
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := "vol-" + tc.name[:4]
			path := filepath.Join(d.Dir, name)
			if err := CreateSubvolume(root, name); err != nil {
				t.Fatal(err)
			}
			if err := CreateSubvolume(root, name); !errors.Is(err, unix.EEXIST) {
				t.Errorf("second CreateSubvolume = %v, want EEXIST", err)
			}
			sv := open(t, path)
			if ok, err := IsSubvolume(sv); !ok || err != nil {
				t.Errorf("IsSubvolume(new) = %v, %v", ok, err)
			}
			id, err := SubvolumeID(sv)
			if err != nil {
				t.Fatal(err)
			}
			if id < 256 || id <= lastID {
				t.Errorf("SubvolumeID = %d, want >= 256 and > previous %d", id, lastID)
			}
			lastID = id
			tc.populate(t, path)
			// A file inside reports the subvolume's ID too.
			if err := os.WriteFile(filepath.Join(path, "f"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if fid, err := SubvolumeID(open(t, filepath.Join(path, "f"))); err != nil || fid != id {
				t.Errorf("SubvolumeID(file inside) = %d, %v; want %d", fid, err, id)
			}
			// A plain directory is not a subvolume.
			if err := os.Mkdir(filepath.Join(path, "plain"), 0o755); err != nil {
				t.Fatal(err)
			}
			if ok, err := IsSubvolume(open(t, filepath.Join(path, "plain"))); ok || err != nil {
				t.Errorf("IsSubvolume(plain dir) = %v, %v; want false", ok, err)
			}
			if err := DeleteSubvolume(root, "plain-missing"); err == nil {
				t.Errorf("DeleteSubvolume of a missing name succeeded")
			}
			if err := DeleteSubvolume(root, name); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("after delete, %s: %v, want not-exist", path, err)
			}
		})
	}

	// A plain directory must not be deletable as a subvolume.
	if err := os.Mkdir(filepath.Join(d.Dir, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := DeleteSubvolume(root, "dir"); err == nil {
		t.Errorf("DeleteSubvolume(plain dir) succeeded")
	}
	if _, err := os.Stat(filepath.Join(d.Dir, "dir")); err != nil {
		t.Errorf("plain dir gone after refused delete: %v", err)
	}
	// Invalid names never reach the kernel.
	for _, n := range []string{"", ".", "..", "a/b"} {
		if err := CreateSubvolume(root, n); err == nil {
			t.Errorf("CreateSubvolume(%q) succeeded", n)
		}
		if err := DeleteSubvolume(root, n); err == nil {
			t.Errorf("DeleteSubvolume(%q) succeeded", n)
		}
	}
}

func TestQuotaEnable(t *testing.T) {
	d := testdisk.New(t, "btrfs", diskSize)
	root := open(t, d.Dir)
	// A subvolume made before quota is on gets its qgroup at enable time.
	if err := CreateSubvolume(root, "before"); err != nil {
		t.Fatal(err)
	}
	if on, err := QuotaEnabled(root); on || err != nil {
		t.Fatalf("QuotaEnabled on fresh fs = %v, %v; want false", on, err)
	}
	if _, err := QgroupUsage(root, 256); !errors.Is(err, ErrQgroupNotFound) {
		t.Errorf("QgroupUsage with quota off: %v, want ErrQgroupNotFound", err)
	}
	for i := 0; i < 3; i++ {
		if err := EnableQuota(root); err != nil {
			t.Fatalf("EnableQuota #%d: %v", i+1, err)
		}
		if on, err := QuotaEnabled(root); !on || err != nil {
			t.Fatalf("QuotaEnabled after enable #%d = %v, %v", i+1, on, err)
		}
	}
	waitRescan(t, root)
	id, err := SubvolumeID(open(t, filepath.Join(d.Dir, "before")))
	if err != nil {
		t.Fatal(err)
	}
	if u, err := QgroupUsage(root, id); err != nil || u.MaxReferenced != 0 {
		t.Errorf("QgroupUsage(pre-existing subvolume) = %+v, %v; want a qgroup without limit", u, err)
	}
	if _, err := QgroupUsage(root, 99999); !errors.Is(err, ErrQgroupNotFound) {
		t.Errorf("QgroupUsage(unknown id) err = %v, want ErrQgroupNotFound", err)
	}
}

// quotaDisk returns a btrfs disk with quota on and one subvolume "vol".
func quotaDisk(t *testing.T) (d *testdisk.Disk, root, vol *os.File, id uint64) {
	t.Helper()
	d = testdisk.New(t, "btrfs", diskSize)
	root = open(t, d.Dir)
	if err := EnableQuota(root); err != nil {
		t.Fatal(err)
	}
	if err := CreateSubvolume(root, "vol"); err != nil {
		t.Fatal(err)
	}
	vol = open(t, filepath.Join(d.Dir, "vol"))
	id, err := SubvolumeID(vol)
	if err != nil {
		t.Fatal(err)
	}
	return d, root, vol, id
}

func TestLimitEnforced(t *testing.T) {
	d, root, vol, id := quotaDisk(t)
	const limit = 8 << 20
	if err := SetLimit(vol, limit); err != nil {
		t.Fatal(err)
	}
	u, err := QgroupUsage(root, id)
	if err != nil {
		t.Fatal(err)
	}
	if u.MaxReferenced != limit {
		t.Errorf("MaxReferenced = %d, want %d", u.MaxReferenced, limit)
	}

	file := filepath.Join(d.Dir, "vol", "data")
	written, err := fill(t, root, file, 16<<20)
	if !errors.Is(err, unix.EDQUOT) {
		t.Fatalf("writing 16 MiB under an 8 MiB limit: wrote %d bytes, err %v; want EDQUOT", written, err)
	}
	if written > limit+(1<<20) {
		t.Errorf("wrote %d bytes before EDQUOT, want at most limit+1 MiB (%d)", written, limit+(1<<20))
	}
	if written < limit/2 {
		t.Errorf("EDQUOT after only %d bytes under an %d-byte limit", written, limit)
	}
	t.Logf("limit %d: %d bytes written before EDQUOT", limit, written)

	// Raising the limit lets more data in.
	if err := SetLimit(vol, 64<<20); err != nil {
		t.Fatal(err)
	}
	if n, err := fill(t, root, file, 8<<20); err != nil {
		t.Errorf("after raising the limit to 64 MiB, wrote %d bytes then: %v", n, err)
	}
	// Removing the limit reports 0 and lets data past the old limits.
	if err := SetLimit(vol, 0); err != nil {
		t.Fatal(err)
	}
	if u, err := QgroupUsage(root, id); err != nil || u.MaxReferenced != 0 {
		t.Errorf("after SetLimit(0): %+v, %v; want MaxReferenced 0", u, err)
	}
	if n, err := fill(t, root, file, 64<<20); err != nil {
		t.Errorf("without limit, wrote %d bytes then: %v", n, err)
	}
}

func TestUsageGrows(t *testing.T) {
	d, root, _, id := quotaDisk(t)
	syncfs(t, root)
	before, err := QgroupUsage(root, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fill(t, root, filepath.Join(d.Dir, "vol", "data"), 4<<20); err != nil {
		t.Fatal(err)
	}
	after, err := QgroupUsage(root, id)
	if err != nil {
		t.Fatal(err)
	}
	if after.Referenced < before.Referenced+4<<20 {
		t.Errorf("Referenced %d -> %d after writing 4 MiB; want growth >= 4 MiB", before.Referenced, after.Referenced)
	}
	if after.Exclusive < before.Exclusive+4<<20 {
		t.Errorf("Exclusive %d -> %d after writing 4 MiB; want growth >= 4 MiB", before.Exclusive, after.Exclusive)
	}
	if after.Referenced > before.Referenced+6<<20 {
		t.Errorf("Referenced grew by %d for 4 MiB of data", after.Referenced-before.Referenced)
	}
}

// Several subvolumes with different limits: each lookup must return its own
// qgroup's items, not a neighbour's.
func TestUsagePerSubvolume(t *testing.T) {
	d := testdisk.New(t, "btrfs", diskSize)
	root := open(t, d.Dir)
	if err := EnableQuota(root); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		limit uint64
		data  int
	}{
		{"a", 10 << 20, 1 << 20},
		{"b", 0, 3 << 20},
		{"c", 30 << 20, 2 << 20},
		{"d", 40 << 20, 0},
	}
	ids := map[string]uint64{}
	for _, tc := range tests {
		if err := CreateSubvolume(root, tc.name); err != nil {
			t.Fatal(err)
		}
		sv := open(t, filepath.Join(d.Dir, tc.name))
		id, err := SubvolumeID(sv)
		if err != nil {
			t.Fatal(err)
		}
		ids[tc.name] = id
		if tc.limit != 0 {
			if err := SetLimit(sv, tc.limit); err != nil {
				t.Fatal(err)
			}
		}
		if tc.data > 0 {
			if _, err := fill(t, root, filepath.Join(d.Dir, tc.name, "data"), tc.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	syncfs(t, root)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, err := QgroupUsage(root, ids[tc.name])
			if err != nil {
				t.Fatal(err)
			}
			if u.MaxReferenced != tc.limit {
				t.Errorf("MaxReferenced = %d, want %d", u.MaxReferenced, tc.limit)
			}
			if u.Referenced < uint64(tc.data) || u.Referenced > uint64(tc.data)+1<<20 {
				t.Errorf("Referenced = %d, want about %d", u.Referenced, tc.data)
			}
		})
	}
}

func BenchmarkQgroupUsage(b *testing.B) {
	d := testdisk.New(b, "btrfs", diskSize)
	root := open(b, d.Dir)
	if err := EnableQuota(root); err != nil {
		b.Fatal(err)
	}
	// Many qgroups, so the benchmark shows the lookup does not scan them.
	var id uint64
	for i := 0; i < 200; i++ {
		name := fmt.Sprintf("v%03d", i)
		if err := CreateSubvolume(root, name); err != nil {
			b.Fatal(err)
		}
		if i == 100 {
			var err error
			sv := open(b, filepath.Join(d.Dir, name))
			if id, err = SubvolumeID(sv); err != nil {
				b.Fatal(err)
			}
			if err := SetLimit(sv, 1<<30); err != nil {
				b.Fatal(err)
			}
		}
	}
	syncfs(b, root)
	b.ResetTimer()
	for b.Loop() {
		u, err := QgroupUsage(root, id)
		if err != nil || u.MaxReferenced != 1<<30 {
			b.Fatalf("QgroupUsage = %+v, %v", u, err)
		}
	}
}

func BenchmarkCreateDeleteSubvolume(b *testing.B) {
	d := testdisk.New(b, "btrfs", diskSize)
	root := open(b, d.Dir)
	if err := EnableQuota(root); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := CreateSubvolume(root, "bench"); err != nil {
			b.Fatal(err)
		}
		if err := DeleteSubvolume(root, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestQuotaStatusAndRescan: a freshly enabled quota is consistent, and a
// rescan can be started (and waited for) at any time.
func TestQuotaStatusAndRescan(t *testing.T) {
	d := testdisk.New(t, "btrfs", 256<<20)
	f, err := os.Open(d.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := EnableQuota(f); err != nil {
		t.Fatal(err)
	}
	waitRescan(t, f)
	syncfs(t, f)
	st, err := Status(f)
	if err != nil || st.Inconsistent {
		t.Fatalf("Status after enable = %+v, %v; want consistent", st, err)
	}
	if err := StartRescan(f); err != nil {
		t.Fatalf("StartRescan: %v", err)
	}
	if err := StartRescan(f); err != nil {
		t.Fatalf("StartRescan while one may run: %v", err)
	}
	waitRescan(t, f)
}

// TestQuotaModes: EnableSimpleQuota turns simple quotas on where quotas are
// off, and keeps full qgroups found on; Mode agrees with the kernel's own
// account of the mode (/sys/fs/btrfs/<fsid>/qgroups/mode).
func TestQuotaModes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before func(*os.File) error
		want   QuotaMode
		sysfs  string
	}{
		{"off: simple quotas enabled", nil, QuotaSimple, "squota"},
		{"full qgroups on: kept", EnableQuota, QuotaQgroup, "qgroup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testdisk.New(t, "btrfs", diskSize)
			root := open(t, d.Dir)
			if m, err := Mode(root); m != QuotaOff || err != nil {
				t.Fatalf("Mode of a fresh filesystem = %q, %v; want off", m, err)
			}
			if tc.before != nil {
				if err := tc.before(root); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 2 { // idempotent
				if m, err := EnableSimpleQuota(root); m != tc.want || err != nil {
					t.Fatalf("EnableSimpleQuota #%d = %q, %v; want %q", i+1, m, err, tc.want)
				}
			}
			if m, err := Mode(root); m != tc.want || err != nil {
				t.Fatalf("Mode = %q, %v; want %q", m, err, tc.want)
			}
			if on, err := QuotaEnabled(root); !on || err != nil {
				t.Errorf("QuotaEnabled = %v, %v; want true", on, err)
			}
			out, err := exec.Command("blkid", "-s", "UUID", "-o", "value", d.Device).Output()
			if err != nil {
				t.Fatalf("blkid %s: %v", d.Device, err)
			}
			mode, err := os.ReadFile(filepath.Join("/sys/fs/btrfs", strings.TrimSpace(string(out)), "qgroups", "mode"))
			if err != nil || strings.TrimSpace(string(mode)) != tc.sysfs {
				t.Errorf("kernel's quota mode = %q, %v; want %q", mode, err, tc.sysfs)
			}
		})
	}
}
