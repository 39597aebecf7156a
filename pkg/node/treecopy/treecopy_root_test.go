package treecopy

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

// entry describes one thing in a test tree and how to check its copy.
type entry struct {
	name  string
	make  func(t *testing.T, p string)
	check func(t *testing.T, src, dst string)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func stat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	return st
}

// sameMeta checks owner, mode and mtime.
func sameMeta(t *testing.T, src, dst string) {
	t.Helper()
	a, b := stat(t, src), stat(t, dst)
	if a.Uid != b.Uid || a.Gid != b.Gid || a.Mode != b.Mode || a.Mtim != b.Mtim {
		t.Errorf("%s: copy has %d:%d %o mtime %v, source %d:%d %o mtime %v", filepath.Base(src),
			b.Uid, b.Gid, b.Mode, b.Mtim, a.Uid, a.Gid, a.Mode, a.Mtim)
	}
}

func sameContent(t *testing.T, src, dst string) {
	t.Helper()
	a, err := os.ReadFile(src)
	must(t, err)
	b, err := os.ReadFile(dst)
	must(t, err)
	if !bytes.Equal(a, b) {
		t.Errorf("%s: content differs", filepath.Base(src))
	}
}

var old = time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC)

var entries = []entry{
	{"sparse", func(t *testing.T, p string) {
		f, err := os.Create(p)
		must(t, err)
		_, err = f.WriteAt(bytes.Repeat([]byte{1}, mib), 4*mib)
		must(t, err)
		must(t, f.Truncate(32*mib)) // a trailing hole
		f.Close()
	}, func(t *testing.T, src, dst string) {
		sameContent(t, src, dst)
		if st := stat(t, dst); st.Size != 32*mib || st.Blocks*512 > 2*mib {
			t.Errorf("sparse: copy is %d bytes with %d allocated, want 32 MiB with about 1 MiB", st.Size, st.Blocks*512)
		}
	}},
	{"empty", func(t *testing.T, p string) { must(t, os.WriteFile(p, nil, 0o600)) }, sameContent},
	{"setuid", func(t *testing.T, p string) {
		must(t, os.WriteFile(p, []byte("x"), 0o755))
		must(t, os.Chown(p, 1000, 1000))
		must(t, os.Chmod(p, 0o4755|os.ModeSetuid))
		must(t, unix.Chmod(p, 0o4755))
	}, func(t *testing.T, src, dst string) {
		sameMeta(t, src, dst)
		if stat(t, dst).Mode&unix.S_ISUID == 0 {
			t.Error("setuid: the set-uid bit was lost (chown after chmod?)")
		}
	}},
	{"xattr", func(t *testing.T, p string) {
		must(t, os.WriteFile(p, []byte("x"), 0o644))
		must(t, unix.Setxattr(p, "user.a", []byte("1"), 0))
		must(t, unix.Setxattr(p, "trusted.b", []byte("22"), 0))
	}, func(t *testing.T, src, dst string) {
		for name, want := range map[string]string{"user.a": "1", "trusted.b": "22"} {
			buf := make([]byte, 8)
			n, err := unix.Getxattr(dst, name, buf)
			if err != nil || string(buf[:n]) != want {
				t.Errorf("xattr %s = %q, %v; want %q", name, buf[:max(n, 0)], err, want)
			}
		}
	}},
	{"link-out", func(t *testing.T, p string) { must(t, os.Symlink("/etc/passwd", p)) }, func(t *testing.T, src, dst string) {
		if target, err := os.Readlink(dst); err != nil || target != "/etc/passwd" {
			t.Errorf("link-out -> %q, %v: want the symlink itself", target, err)
		}
		sameMeta(t, src, dst)
	}},
	{"fifo", func(t *testing.T, p string) { must(t, unix.Mkfifo(p, 0o620)) }, func(t *testing.T, src, dst string) {
		if stat(t, dst).Mode&unix.S_IFMT != unix.S_IFIFO {
			t.Error("fifo: not a FIFO")
		}
		sameMeta(t, src, dst)
	}},
	{"null", func(t *testing.T, p string) { must(t, unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))) }, func(t *testing.T, src, dst string) {
		if a, b := stat(t, src), stat(t, dst); b.Mode&unix.S_IFMT != unix.S_IFCHR || a.Rdev != b.Rdev {
			t.Errorf("null: copy is mode %o dev %d, want a character device %d", b.Mode, b.Rdev, a.Rdev)
		}
	}},
	{"ro-dir", func(t *testing.T, p string) {
		must(t, os.Mkdir(p, 0o755))
		must(t, os.WriteFile(filepath.Join(p, "inner"), []byte("in"), 0o600))
		must(t, os.Link(filepath.Join(p, "inner"), filepath.Join(p, "inner-link")))
		must(t, unix.Setxattr(p, "user.dir", []byte("d"), 0))
		must(t, os.Chown(p, 7, 8))
		must(t, os.Chtimes(filepath.Join(p, "inner"), old, old))
		must(t, os.Chmod(p, 0o500))
		must(t, os.Chtimes(p, old, old))
	}, func(t *testing.T, src, dst string) {
		sameMeta(t, src, dst)
		sameMeta(t, filepath.Join(src, "inner"), filepath.Join(dst, "inner"))
		sameContent(t, filepath.Join(src, "inner"), filepath.Join(dst, "inner"))
		if a, b := stat(t, filepath.Join(dst, "inner")), stat(t, filepath.Join(dst, "inner-link")); a.Ino != b.Ino || a.Nlink != 2 {
			t.Errorf("ro-dir: inner and inner-link are inodes %d and %d (nlink %d), want one inode linked twice", a.Ino, b.Ino, a.Nlink)
		}
		buf := make([]byte, 4)
		if n, err := unix.Getxattr(dst, "user.dir", buf); err != nil || string(buf[:n]) != "d" {
			t.Errorf("ro-dir: xattr user.dir = %q, %v", buf[:max(n, 0)], err)
		}
	}},
}

// TestTree copies a tree with every kind of entry on each filesystem,
// with reflinks where they work and with a forced copy, and checks each
// entry; then that the copy shares no data with the source when reflinks
// are off (a write into the source does not show in the copy).
func TestTree(t *testing.T) {
	for _, tc := range []struct {
		fs        string
		noReflink bool
		want      Method
	}{
		{"btrfs", false, Reflink},
		{"btrfs", true, Copy},
		{"xfs", false, Reflink},
		{"ext4", false, Copy},
	} {
		name := tc.fs
		if tc.noReflink {
			name += "/no-reflink"
		}
		t.Run(name, func(t *testing.T) {
			d := testdisk.New(t, tc.fs, 1<<30)
			src, dst := filepath.Join(d.Dir, "src"), filepath.Join(d.Dir, "dst")
			must(t, os.Mkdir(src, 0o711))
			must(t, os.Mkdir(dst, 0o700))
			for _, e := range entries {
				e.make(t, filepath.Join(src, e.name))
			}
			must(t, os.Chown(src, 3, 4))
			must(t, os.Chtimes(src, old, old))
			s, err := os.Open(src)
			must(t, err)
			defer s.Close()
			dd, err := os.Open(dst)
			must(t, err)
			defer dd.Close()
			var progress int
			st, m, err := Tree(context.Background(), dd, s, Options{NoReflink: tc.noReflink, ProgressEvery: time.Nanosecond, Progress: func(Stats) { progress++ }})
			if err != nil {
				t.Fatalf("Tree: %v", err)
			}
			if m != tc.want {
				t.Errorf("method %s, want %s", m, tc.want)
			}
			if st.Files != 5 || st.Others != 3 || progress == 0 {
				t.Errorf("stats %+v, %d progress calls; want 5 regular files (inner-link is a link), 3 others and some progress", st, progress)
			}
			sameMeta(t, src, dst)
			for _, e := range entries {
				e.check(t, filepath.Join(src, e.name), filepath.Join(dst, e.name))
			}
			// The copy is independent of the source.
			must(t, os.WriteFile(filepath.Join(src, "empty"), []byte("later"), 0o600))
			if b, _ := os.ReadFile(filepath.Join(dst, "empty")); len(b) != 0 {
				t.Errorf("a write into the source shows in the copy: %q", b)
			}
		})
	}
}

// TestTreeCancel: a cancelled context stops the copy with its error.
func TestTreeCancel(t *testing.T) {
	d := testdisk.New(t, "ext4", 64*mib)
	src := filepath.Join(d.Dir, "src")
	must(t, os.Mkdir(src, 0o755))
	must(t, os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644))
	must(t, os.Mkdir(filepath.Join(d.Dir, "dst"), 0o755))
	s, _ := os.Open(src)
	defer s.Close()
	dd, _ := os.Open(filepath.Join(d.Dir, "dst"))
	defer dd.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Tree(ctx, dd, s, Options{}); err != context.Canceled {
		t.Errorf("Tree with a cancelled context = %v, want context.Canceled", err)
	}
}
