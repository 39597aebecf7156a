package testdisk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestNew(t *testing.T) {
	tests := []struct {
		fstype string
		size   int64
		magic  int64
		opts   []string
	}{
		{"btrfs", 256 << 20, unix.BTRFS_SUPER_MAGIC, nil},
		{"ext4", 64 << 20, unix.EXT4_SUPER_MAGIC, nil},
		{"xfs", 300 << 20, unix.XFS_SUPER_MAGIC, []string{"noatime"}},
	}
	for _, tc := range tests {
		t.Run(tc.fstype, func(t *testing.T) {
			var d *Disk
			t.Run("mount", func(t *testing.T) {
				d = New(t, tc.fstype, tc.size, tc.opts...)
				var st unix.Statfs_t
				if err := unix.Statfs(d.Dir, &st); err != nil {
					t.Fatalf("statfs %s: %v", d.Dir, err)
				}
				if st.Type != tc.magic {
					t.Errorf("statfs magic of %s = %#x, want %#x (%s)", d.Dir, st.Type, tc.magic, tc.fstype)
				}
				// Writable and backed by the image: a file written here
				// takes space on the disk, not on the host filesystem.
				if err := os.WriteFile(filepath.Join(d.Dir, "probe"), []byte("x"), 0o644); err != nil {
					t.Fatalf("write on test disk: %v", err)
				}
				if fi, err := os.Stat(d.Image); err != nil || fi.Size() != tc.size {
					t.Errorf("image %s: size %v err %v, want %d", d.Image, fi, err, tc.size)
				}
				if !isMountPoint(d.Dir) {
					t.Errorf("%s is not a mount point", d.Dir)
				}
			})
			if d == nil || t.Failed() {
				return
			}
			// The subtest has ended, so its cleanup has run: everything
			// must be gone.
			if _, err := os.Stat(d.Dir); !os.IsNotExist(err) {
				t.Errorf("after cleanup, mount dir %s: err = %v, want not-exist", d.Dir, err)
			}
			if _, err := os.Stat(d.Image); !os.IsNotExist(err) {
				t.Errorf("after cleanup, image %s: err = %v, want not-exist", d.Image, err)
			}
			// The device number may be reused at once by a concurrent
			// test, and a detach races with other openers (udev,
			// losetup -f) into a deferred release: poll for our image
			// to be gone from it.
			backing := "/sys/block/" + filepath.Base(d.Device) + "/loop/backing_file"
			stillOurs := func() bool {
				b, err := os.ReadFile(backing)
				return err == nil && strings.HasPrefix(string(b), d.Image)
			}
			for end := time.Now().Add(2 * time.Second); stillOurs() && time.Now().Before(end); {
				time.Sleep(10 * time.Millisecond)
			}
			if stillOurs() {
				t.Errorf("after cleanup, %s still bound to %s", d.Device, d.Image)
			}
		})
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/mnt/plain", "/mnt/plain"},
		{`/mnt/with\040space`, "/mnt/with space"},
		{`/a\011tab\012nl\134bs`, "/a\ttab\nnl\\bs"},
		{`/end\040`, "/end "},
		{`/short\04`, `/short\04`},
		{`/notoctal\9xx`, `/notoctal\9xx`},
	}
	for _, tc := range tests {
		if got := unescapeMountinfo(tc.in); got != tc.want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A test that leaves a loop-mounted image on the disk (as loop-backend
// tests might) must not make the disk leak: cleanup unmounts and detaches
// what is nested in it.
func TestCleanupReleasesNested(t *testing.T) {
	var outer, inner *Disk
	var innerDev string
	t.Run("leaky", func(t *testing.T) {
		outer = New(t, "ext4", 64<<20)
		inner = &Disk{Image: filepath.Join(outer.Dir, "inner.img"), Dir: filepath.Join(outer.Dir, "inner mnt")}
		if err := makeSparse(inner.Image, 8<<20); err != nil {
			t.Fatal(err)
		}
		if out, err := run("mkfs.ext4", "-q", "-F", inner.Image); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if err := os.Mkdir(inner.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := run("losetup", "--find", "--show", inner.Image)
		if err != nil {
			t.Fatal(err)
		}
		innerDev = strings.TrimSpace(out)
		if _, err := run("mount", innerDev, inner.Dir); err != nil {
			run("losetup", "--detach", innerDev)
			t.Fatal(err)
		}
		// Deliberately no cleanup of the inner mount and device.
	})
	if outer == nil || t.Failed() {
		return
	}
	mounts, err := mountPoints()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m == outer.Dir || m == inner.Dir {
			t.Errorf("%s still mounted after cleanup", m)
		}
	}
	if b, err := os.ReadFile("/sys/block/" + filepath.Base(innerDev) + "/loop/backing_file"); err == nil && strings.HasPrefix(string(b), outer.Dir) {
		t.Errorf("%s still bound to %s after cleanup", innerDev, b)
	}
	if _, err := os.Stat(outer.Image); !os.IsNotExist(err) {
		t.Errorf("outer image %s not removed: %v", outer.Image, err)
	}
}

func TestRemountReadOnly(t *testing.T) {
	d := New(t, "ext4", 32<<20)
	if err := d.Remount("ro"); err != nil {
		t.Fatal(err)
	}
	err := os.WriteFile(filepath.Join(d.Dir, "f"), nil, 0o644)
	if err == nil {
		t.Fatal("write on a read-only remounted disk succeeded")
	}
	if !os.IsPermission(err) && !isErrno(err, unix.EROFS) {
		t.Errorf("write on ro disk: %v, want EROFS", err)
	}
	if err := d.Remount("rw"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.Dir, "f"), nil, 0o644); err != nil {
		t.Errorf("write after remount rw: %v", err)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	tests := []struct {
		name   string
		fstype string
		size   int64
	}{
		{"unknown fs", "ntfs", 64 << 20},
		{"xfs too small", "xfs", 100 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			RequireRoot(t)
			ft := &fakeTB{TB: t}
			func() {
				defer func() { _ = recover() }()
				New(ft, tc.fstype, tc.size)
			}()
			if !ft.fatal {
				t.Errorf("New(%q, %d) did not fail", tc.fstype, tc.size)
			}
		})
	}
}

func TestRequireRootDecision(t *testing.T) {
	tests := []struct {
		name      string
		uid       int
		ci        string
		wantFatal bool
		wantSkip  bool
	}{
		{"root", 0, "", false, false},
		{"root in CI", 0, "true", false, false},
		{"user locally skips", 1000, "", false, true},
		{"user with CI=false skips", 1000, "false", false, true},
		{"user in CI fails", 1000, "true", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ft := &fakeTB{TB: t}
			func() {
				defer func() { _ = recover() }()
				requireRoot(ft, tc.uid, tc.ci)
			}()
			if ft.fatal != tc.wantFatal || ft.skip != tc.wantSkip {
				t.Errorf("requireRoot(uid %d, CI=%q): fatal=%v skip=%v, want fatal=%v skip=%v",
					tc.uid, tc.ci, ft.fatal, ft.skip, tc.wantFatal, tc.wantSkip)
			}
		})
	}
}

// fakeTB records Fatalf instead of ending the real test, so the failure
// paths of New can be asserted.
type fakeTB struct {
	testing.TB
	fatal bool
	skip  bool
}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skip = true
	panic("skip")
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = true
	panic("fatal")
}

func (f *fakeTB) Helper() {}

func isErrno(err error, want unix.Errno) bool {
	for err != nil {
		if e, ok := err.(unix.Errno); ok {
			return e == want
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}
