// Package testdisk gives tests real filesystems: a sparse image file, a loop
// device over it, mkfs and a mount in a temporary directory. Backends that
// depend on filesystem features (btrfs qgroups, XFS project quota, loop
// images) must be tested against the real kernel code, not a fake, so every
// such test asks this package for a disk and gets it torn down by t.Cleanup.
//
// This is test code: it shells out to losetup, mkfs.* and mount on purpose,
// so that the code under test (which uses ioctls) is checked against the
// standard tools rather than against itself.
package testdisk

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RequireRoot skips the test with a clear reason when not running as root,
// except when the environment has CI=true, where it fails instead (CI is
// root; a skip there would hide a defect).
func RequireRoot(t testing.TB) {
	t.Helper()
	requireRoot(t, os.Geteuid(), os.Getenv("CI"))
}

// requireRoot is RequireRoot with its inputs passed in, so the decision can
// be tested from a root test process.
func requireRoot(t testing.TB, uid int, ci string) {
	t.Helper()
	if uid == 0 {
		return
	}
	if ci == "true" {
		t.Fatalf("test needs root (loop devices, mkfs, mount) but runs as uid %d; CI=true, so this is a failure, not a skip", uid)
	}
	t.Skipf("test needs root (loop devices, mkfs, mount); running as uid %d", uid)
}

// Disk is a real filesystem on a loop device over a sparse image file.
type Disk struct {
	// Image is the sparse backing file.
	Image string
	// Device is the loop device, e.g. /dev/loop3.
	Device string
	// Dir is where the filesystem is mounted.
	Dir string
	// FSType is "btrfs", "ext4" or "xfs".
	FSType string
	// Size is the image size in bytes.
	Size int64
}

// mkfsArgs holds the quiet, forced mkfs command line for each filesystem.
// Forcing matters: a recycled loop device or image may carry an old
// signature, and mkfs would refuse to overwrite it without -f/-F.
var mkfsArgs = map[string][]string{
	"btrfs": {"mkfs.btrfs", "-q", "-f"},
	"ext4":  {"mkfs.ext4", "-q", "-F"},
	"xfs":   {"mkfs.xfs", "-q", "-f"},
}

// MinSize is the smallest image each filesystem's mkfs accepts with default
// options (measured with mkfs.btrfs 6.x, e2fsprogs 1.47, xfsprogs 6.x; XFS
// refuses anything below 300 MiB).
var MinSize = map[string]int64{
	"btrfs": 110 << 20,
	"ext4":  2 << 20,
	"xfs":   300 << 20,
}

// New creates a sparse image of size bytes in a temp dir, attaches a loop
// device, runs mkfs for fstype ("btrfs", "ext4", "xfs"; quiet, forced), mounts
// it at a fresh temp dir (Dir) and registers t.Cleanup that unmounts (lazy
// unmount as fallback), detaches the loop device and removes files. Extra
// mount options (e.g. "prjquota") may be passed. It calls RequireRoot.
func New(t testing.TB, fstype string, size int64, mountOpts ...string) *Disk {
	t.Helper()
	RequireRoot(t)
	mkfs, ok := mkfsArgs[fstype]
	if !ok {
		t.Fatalf("testdisk: unsupported filesystem %q (want btrfs, ext4 or xfs)", fstype)
	}
	if size < MinSize[fstype] {
		t.Fatalf("testdisk: %s needs at least %d bytes, asked for %d", fstype, MinSize[fstype], size)
	}

	// Own temp dirs rather than t.TempDir: removal must happen only after a
	// successful unmount, or RemoveAll would walk into a still-mounted disk.
	base, err := os.MkdirTemp("", "testdisk-"+fstype+"-")
	if err != nil {
		t.Fatalf("testdisk: temp dir: %v", err)
	}
	d := &Disk{
		Image:  filepath.Join(base, "disk.img"),
		Dir:    filepath.Join(base, "mnt"),
		FSType: fstype,
		Size:   size,
	}
	mounted := false
	t.Cleanup(func() { d.teardown(t, base, mounted) })

	if err := makeSparse(d.Image, size); err != nil {
		t.Fatalf("testdisk: %v", err)
	}
	if err := os.Mkdir(d.Dir, 0o755); err != nil {
		t.Fatalf("testdisk: mount point: %v", err)
	}
	out, err := run("losetup", "--find", "--show", d.Image)
	if err != nil {
		t.Fatalf("testdisk: attach loop device: %v", err)
	}
	d.Device = strings.TrimSpace(out)

	if _, err := run(mkfs[0], append(mkfs[1:], d.Device)...); err != nil {
		t.Fatalf("testdisk: %v", err)
	}
	args := []string{"-t", fstype}
	if len(mountOpts) > 0 {
		args = append(args, "-o", strings.Join(mountOpts, ","))
	}
	args = append(args, d.Device, d.Dir)
	if _, err := run("mount", args...); err != nil {
		t.Fatalf("testdisk: %v", err)
	}
	mounted = true
	return d
}

// Remount changes the mount options of the disk in place, e.g. "ro" to
// inject a read-only disk fault, "rw" to heal it.
func (d *Disk) Remount(opts ...string) error {
	o := "remount"
	if len(opts) > 0 {
		o += "," + strings.Join(opts, ",")
	}
	if _, err := run("mount", "-o", o, d.Dir); err != nil {
		return fmt.Errorf("remount %s: %w", d.Dir, err)
	}
	return nil
}

// RemountRetrying remounts with opt, retrying for up to a second while the
// kernel refuses with EBUSY: a read-only remount fails while a file is open
// for writing, as a health probe's file briefly is every period.
func (d *Disk) RemountRetrying(t testing.TB, opt string) {
	t.Helper()
	var err error
	for range 100 {
		if err = d.Remount(opt); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("remount %s: %v", opt, err)
}

// teardown undoes New in reverse order. It reports problems with t.Errorf
// instead of stopping, so that one failed step still lets the others run and
// the machine is left as clean as possible.
func (d *Disk) teardown(t testing.TB, base string, mounted bool) {
	t.Helper()
	if mounted {
		// Tests of the loop backend mount images stored on this disk;
		// if they left any behind, the disk could only be unmounted
		// lazily and its loop device would stay busy. Undo them first.
		d.releaseNested(t)
		lazy, err := unmount(d.Dir)
		if err != nil {
			t.Errorf("testdisk: %v", err)
		}
		if lazy {
			// The filesystem stays alive, holding the loop device,
			// until whatever kept it busy lets go.
			t.Logf("testdisk: %s was busy at cleanup (a file or directory left open by the test?); lazily unmounted, %s is released only when that reference goes", d.Dir, d.Device)
		}
	}
	// Detach only while the device still serves our image: if something
	// already released it, its number may now belong to another test.
	if d.Device != "" && d.boundToImage() {
		if _, err := run("losetup", "--detach", d.Device); err != nil {
			t.Errorf("testdisk: detach %s: %v", d.Device, err)
		}
	}
	if isMountPoint(d.Dir) {
		// Never RemoveAll into a live filesystem.
		t.Errorf("testdisk: %s is still mounted; leaving %s in place", d.Dir, base)
		return
	}
	if err := os.RemoveAll(base); err != nil {
		t.Errorf("testdisk: remove %s: %v", base, err)
	}
}

// releaseNested unmounts mounts below d.Dir (deepest first) and detaches
// loop devices whose backing file is on the disk, logging each, so that a
// test that forgot its own cleanup does not leak the disk.
func (d *Disk) releaseNested(t testing.TB) {
	t.Helper()
	prefix := d.Dir + "/"
	mounts, err := mountPoints()
	if err != nil {
		t.Errorf("testdisk: %v", err)
	}
	var nested []string
	for _, m := range mounts {
		if strings.HasPrefix(m, prefix) {
			nested = append(nested, m)
		}
	}
	sort.Slice(nested, func(i, j int) bool { return len(nested[i]) > len(nested[j]) })
	for _, m := range nested {
		t.Logf("testdisk: test left %s mounted on the disk; unmounting it", m)
		if _, err := unmount(m); err != nil {
			t.Errorf("testdisk: %v", err)
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range loops {
		b, err := os.ReadFile(bf)
		if err != nil || !strings.HasPrefix(string(b), prefix) {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(bf)))
		t.Logf("testdisk: test left %s bound to %s; detaching it", dev, strings.TrimSpace(string(b)))
		if _, err := run("losetup", "--detach", dev); err != nil {
			t.Errorf("testdisk: %v", err)
		}
	}
}

// mountPoints lists the mount points of this process's mount namespace.
func mountPoints() ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		out = append(out, unescapeMountinfo(f[4]))
	}
	return out, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for space and friends)
// the kernel uses for mount points in mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				sb.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		sb.WriteByte(s[i])
	}
	return sb.String()
}

// boundToImage reports whether sysfs names d.Image (or d.Image with the
// " (deleted)" mark) as the backing file of d.Device.
func (d *Disk) boundToImage() bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(d.Device), "loop", "backing_file"))
	if err != nil {
		return false
	}
	p := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
	return p == d.Image
}

// unmount tries a normal unmount a few times (a just-closed file can keep
// the filesystem busy for a moment) and falls back to a lazy unmount, which
// always detaches the mount from the tree; lazy says that it had to.
func unmount(dir string) (lazy bool, err error) {
	for i := 0; i < 5; i++ {
		err = unix.Unmount(dir, 0)
		if err == nil || errors.Is(err, unix.EINVAL) { // EINVAL: not mounted
			return false, nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lerr := unix.Unmount(dir, unix.MNT_DETACH); lerr != nil {
		return true, fmt.Errorf("unmount %s: %v; lazy unmount: %w", dir, err, lerr)
	}
	return true, nil
}

// isMountPoint reports whether dir is on a different device than its parent.
func isMountPoint(dir string) bool {
	var st, pst unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

func makeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size image %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close image %s: %w", path, err)
	}
	return nil
}

// run executes a command and returns its stdout; the error carries the
// command line and stderr so a failing test says what went wrong.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
