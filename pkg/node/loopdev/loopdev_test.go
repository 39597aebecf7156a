package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

func TestParseBackingFile(t *testing.T) {
	tests := []struct {
		in          string
		wantPath    string
		wantDeleted bool
	}{
		{"/var/lib/dhpp/pool/v1.img\n", "/var/lib/dhpp/pool/v1.img", false},
		{"/var/lib/dhpp/pool/v1.img (deleted)\n", "/var/lib/dhpp/pool/v1.img", true},
		{"/no/newline", "/no/newline", false},
		{"/with space/x.img\n", "/with space/x.img", false},
		{"/x (deleted).img\n", "/x (deleted).img", false},
		{"/x (deleted) (deleted)\n", "/x (deleted)", true},
		{"/trailing-newline-in-name\n\n", "/trailing-newline-in-name\n", false},
		{"", "", false},
	}
	for _, tc := range tests {
		p, d := parseBackingFile(tc.in)
		if p != tc.wantPath || d != tc.wantDeleted {
			t.Errorf("parseBackingFile(%q) = %q, %v; want %q, %v", tc.in, p, d, tc.wantPath, tc.wantDeleted)
		}
	}
}

func TestParseDevNumber(t *testing.T) {
	tests := []struct {
		in           string
		major, minor uint32
		wantErr      bool
	}{
		{"7:0\n", 7, 0, false},
		{"7:3", 7, 3, false},
		{"259:1048575\n", 259, 1048575, false},
		{"7", 0, 0, true},
		{"a:1", 0, 0, true},
		{"7:-1", 0, 0, true},
		{"", 0, 0, true},
	}
	for _, tc := range tests {
		ma, mi, err := parseDevNumber(tc.in)
		if (err != nil) != tc.wantErr || ma != tc.major || mi != tc.minor {
			t.Errorf("parseDevNumber(%q) = %d, %d, %v; want %d, %d, err %v", tc.in, ma, mi, err, tc.major, tc.minor, tc.wantErr)
		}
	}
}

// image makes a sparse file of size bytes in a fresh temp dir.
func image(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// detachOnCleanup makes sure a test never leaves a device bound. By cleanup
// time the device may have been released and taken by a concurrent test,
// whose binding must be left alone, so it detaches only if sysfs still names
// a file in img's directory (each test's own temp dir; the file itself may
// have been renamed or deleted by then).
func detachOnCleanup(t *testing.T, dev, img string) {
	dir := filepath.Dir(img) + "/"
	t.Cleanup(func() {
		b, err := os.ReadFile(filepath.Join(sysBlock, filepath.Base(dev), "loop", "backing_file"))
		if err != nil {
			return // free
		}
		if p, _ := parseBackingFile(string(b)); !strings.HasPrefix(p, dir) {
			return // someone else's now
		}
		if err := clearLoop(dev); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// clearLoop unbinds dev whatever its backing file (LOOP_CLR_FD): cleanup
// of a test's own device, whose image may be gone by then.
func clearLoop(dev string) error {
	f, err := os.OpenFile(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}

func sysAttr(dev, attr string) string {
	b, err := os.ReadFile(filepath.Join(sysBlock, filepath.Base(dev), attr))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return strings.TrimSpace(string(b))
}

// boundTo reports whether dev is bound to img. It compares the backing file
// rather than asking whether dev is bound at all: other processes (other
// test packages, udev) attach loop devices concurrently and may take dev as
// soon as it is free.
func boundTo(dev, img string) bool {
	b, err := os.ReadFile(filepath.Join(sysBlock, filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return false
	}
	p, _ := parseBackingFile(string(b))
	return p == img
}

// waitUnbound polls until dev is no longer bound to img. Polling is needed:
// the kernel releases a device only at its last close, and another process
// (udev's blkid, a concurrent losetup scanning for free devices) may hold it
// open for a moment, turning LOOP_CLR_FD and autoclear into a deferred
// release.
func waitUnbound(dev, img string, d time.Duration) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if !boundTo(dev, img) {
			return true
		}
	}
	return !boundTo(dev, img)
}

func TestAttachFindDetach(t *testing.T) {
	testdisk.RequireRoot(t)
	tests := []struct {
		name      string
		opts      Options
		configure bool
		wantRO    string
		wantDIO   string
		wantClear string
	}{
		{"configure default", Options{}, true, "0", "0", "0"},
		{"configure read-only", Options{ReadOnly: true}, true, "1", "0", "0"},
		{"configure direct-io", Options{DirectIO: true}, true, "0", "1", "0"},
		{"configure autoclear", Options{AutoClear: true}, true, "0", "0", "1"},
		{"set-fd default", Options{}, false, "0", "0", "0"},
		{"set-fd read-only", Options{ReadOnly: true}, false, "1", "0", "0"},
		{"set-fd direct-io", Options{DirectIO: true}, false, "0", "1", "0"},
		{"set-fd autoclear", Options{AutoClear: true}, false, "0", "0", "1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := image(t, 16<<20)
			f, err := attach(img, tc.opts, tc.configure)
			if err != nil {
				t.Fatal(err)
			}
			dev := f.Name()
			detachOnCleanup(t, dev, img)
			if !strings.HasPrefix(dev, "/dev/loop") {
				t.Errorf("device %q, want /dev/loopN", dev)
			}
			if got := sysAttr(dev, "loop/backing_file"); got != img {
				t.Errorf("backing_file = %q, want %q", got, img)
			}
			if got := sysAttr(dev, "size"); got != strconv.Itoa(16<<20/512) {
				t.Errorf("size = %s sectors, want %d", got, 16<<20/512)
			}
			for attr, want := range map[string]string{"ro": tc.wantRO, "loop/dio": tc.wantDIO, "loop/autoclear": tc.wantClear} {
				if got := sysAttr(dev, attr); got != want {
					t.Errorf("%s = %s, want %s", attr, got, want)
				}
			}
			if tc.opts.ReadOnly {
				if _, err := f.WriteAt([]byte("x"), 0); err == nil {
					t.Errorf("write to read-only device succeeded")
				}
			} else if _, err := f.WriteAt([]byte("dhpp"), 4096); err != nil {
				t.Errorf("write to device: %v", err)
			}
			devs, err := Find(img)
			if err != nil || !slices.Equal(devs, []string{dev}) {
				t.Errorf("Find = %v, %v; want [%s]", devs, err, dev)
			}
			// A relative, uncleaned spelling of the same path matches.
			wd, _ := os.Getwd()
			t.Chdir(filepath.Dir(img))
			if devs, err := Find("./sub/../disk.img"); err != nil || !slices.Equal(devs, []string{dev}) {
				t.Errorf("Find(relative) = %v, %v; want [%s]", devs, err, dev)
			}
			t.Chdir(wd)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.opts.AutoClear {
				if !waitUnbound(dev, img, 2*time.Second) {
					t.Errorf("autoclear device %s still bound after its last close", dev)
				}
			} else if !boundTo(dev, img) {
				t.Errorf("%s unbound by close without autoclear", dev)
			}
			if err := DetachFile(dev, img); err != nil {
				t.Errorf("DetachFile: %v", err)
			}
			if !waitUnbound(dev, img, 2*time.Second) {
				t.Errorf("%s still bound after Detach", dev)
			}
			if devs, err := Find(img); err != nil || len(devs) != 0 {
				t.Errorf("Find after detach = %v, %v; want none", devs, err)
			}
			// Detaching again must neither fail nor touch whatever
			// device now has this number.
			if err := DetachFile(dev, img); err != nil && !errors.Is(err, ErrOtherBacking) {
				t.Errorf("second DetachFile = %v, want nil or ErrOtherBacking", err)
			}
		})
	}
}

func TestAttachTwice(t *testing.T) {
	testdisk.RequireRoot(t)
	img := image(t, 8<<20)
	a, err := Attach(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, a, img)
	b, err := Attach(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, b, img)
	if a == b {
		t.Fatalf("two attaches gave the same device %s", a)
	}
	devs, err := Find(img)
	slices.Sort(devs)
	want := []string{a, b}
	slices.Sort(want)
	if err != nil || !slices.Equal(devs, want) {
		t.Errorf("Find = %v, %v; want %v", devs, err, want)
	}
}

// Concurrent attaches race for the same free device; each must still end
// up with its own.
func TestAttachConcurrent(t *testing.T) {
	testdisk.RequireRoot(t)
	const n = 6
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		devs []string
		errs []error
	)
	imgs := map[string]string{} // device -> image
	for i := 0; i < n; i++ {
		img := image(t, 1<<20)
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev, err := Attach(img, Options{})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			devs = append(devs, dev)
			imgs[dev] = img
		}()
	}
	wg.Wait()
	for dev, img := range imgs {
		detachOnCleanup(t, dev, img)
		if !boundTo(dev, img) {
			t.Errorf("%s not bound to %s", dev, img)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("concurrent Attach errors: %v", errs)
	}
	slices.Sort(devs)
	if len(slices.Compact(slices.Clone(devs))) != n {
		t.Errorf("concurrent attaches got devices %v, want %d distinct", devs, n)
	}
}

func TestRefresh(t *testing.T) {
	testdisk.RequireRoot(t)
	img := image(t, 16<<20)
	dev, err := Attach(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, dev, img)
	if got := sysAttr(dev, "size"); got != "32768" {
		t.Fatalf("size = %s sectors, want 32768", got)
	}
	if err := os.Truncate(img, 48<<20); err != nil {
		t.Fatal(err)
	}
	if got := sysAttr(dev, "size"); got != "32768" {
		t.Fatalf("size changed to %s before Refresh; the test would prove nothing", got)
	}
	if err := Refresh(dev); err != nil {
		t.Fatal(err)
	}
	if got := sysAttr(dev, "size"); got != strconv.Itoa(48<<20/512) {
		t.Errorf("size after Refresh = %s sectors, want %d", got, 48<<20/512)
	}
	if err := Refresh("/dev/null"); err == nil {
		t.Errorf("Refresh of a non-loop device succeeded")
	}
}

// The intended use of AutoClear: attach, mount, close; the device lives as
// long as the mount and is released by the unmount.
func TestAutoClearWithMount(t *testing.T) {
	testdisk.RequireRoot(t)
	img := image(t, 16<<20)
	if out, err := exec("mkfs.ext4", "-q", "-F", img); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	f, err := AttachOpen(img, Options{AutoClear: true})
	if err != nil {
		t.Fatal(err)
	}
	dev := f.Name()
	detachOnCleanup(t, dev, img)
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		f.Close()
		t.Fatalf("mount %s: %v", dev, err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if !boundTo(dev, img) {
		t.Fatalf("autoclear device released while mounted")
	}
	if devs, err := Find(img); err != nil || !slices.Equal(devs, []string{dev}) {
		t.Errorf("Find while mounted = %v, %v", devs, err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if !waitUnbound(dev, img, 2*time.Second) {
		t.Errorf("autoclear device %s still bound after unmount", dev)
	}
}

// Detach of a mounted device cannot clear it now; the kernel turns it into
// autoclear, and the unmount releases it.
func TestDetachWhileMounted(t *testing.T) {
	testdisk.RequireRoot(t)
	img := image(t, 16<<20)
	if out, err := exec("mkfs.ext4", "-q", "-F", img); err != nil {
		t.Fatalf("mkfs: %v: %s", err, out)
	}
	dev, err := Attach(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, dev, img)
	mnt := t.TempDir()
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	if err := DetachFile(dev, img); err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		t.Fatalf("DetachFile while mounted: %v", err)
	}
	if !boundTo(dev, img) {
		t.Errorf("mounted device unbound by Detach")
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if !waitUnbound(dev, img, 2*time.Second) {
		t.Errorf("device %s still bound after unmount following Detach", dev)
	}
}

func TestFindRenamedAndDeleted(t *testing.T) {
	testdisk.RequireRoot(t)
	img := image(t, 8<<20)
	dev, err := Attach(img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, dev, img)

	renamed := filepath.Join(filepath.Dir(img), "renamed.img")
	if err := os.Rename(img, renamed); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		want []string
	}{
		{"new name, by inode", renamed, []string{dev}},
		{"old name, now absent", img, nil},
		{"unrelated file", image(t, 1<<20), nil},
	}
	for _, tc := range tests {
		if devs, err := Find(tc.path); err != nil || !slices.Equal(devs, tc.want) {
			t.Errorf("%s: Find(%s) = %v, %v; want %v", tc.name, tc.path, devs, err, tc.want)
		}
	}

	// Unlink the file, put a new one at the same path: sysfs now says
	// "<path> (deleted)", and the new file must not match.
	if err := os.Remove(renamed); err != nil {
		t.Fatal(err)
	}
	if got := sysAttr(dev, "loop/backing_file"); got != renamed+deletedSuffix {
		t.Errorf("backing_file after unlink = %q, want %q", got, renamed+deletedSuffix)
	}
	if err := os.WriteFile(renamed, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if devs, err := Find(renamed); err != nil || len(devs) != 0 {
		t.Errorf("Find(new file at deleted backing file's path) = %v, %v; want none", devs, err)
	}
}

func TestDetachFile(t *testing.T) {
	testdisk.RequireRoot(t)
	mine, other := image(t, 4<<20), image(t, 4<<20)
	dev, err := Attach(other, Options{})
	if err != nil {
		t.Fatal(err)
	}
	detachOnCleanup(t, dev, other)

	// Bound to another file: refused, binding untouched.
	if err := DetachFile(dev, mine); !errors.Is(err, ErrOtherBacking) {
		t.Errorf("DetachFile(other's device) = %v, want ErrOtherBacking", err)
	}
	if !boundTo(dev, other) {
		t.Fatalf("DetachFile with the wrong file unbound %s", dev)
	}
	// Bound to the named file: detached.
	if err := DetachFile(dev, other); err != nil {
		t.Fatalf("DetachFile: %v", err)
	}
	if !waitUnbound(dev, other, 2*time.Second) {
		t.Errorf("%s still bound after DetachFile", dev)
	}
	if err := DetachFile(dev, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Errorf("DetachFile with a missing backing file succeeded")
	}
}

// A free device is not an error for DetachFile or DetachBacking. The device is made with
// LOOP_CTL_ADD at a high number, so that no concurrent attach (which takes
// the lowest free one) is likely to bind it meanwhile.
func TestDetachFreeDevice(t *testing.T) {
	testdisk.RequireRoot(t)
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := -1
	for i := 200 + os.Getpid()%100; i < 400; i++ {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), unix.LOOP_CTL_ADD, uintptr(i)); e == 0 {
			n = i
			break
		}
	}
	if n < 0 {
		ctl.Close()
		t.Fatal("LOOP_CTL_ADD found no free number in 200..399")
	}
	t.Cleanup(func() {
		defer ctl.Close()
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), unix.LOOP_CTL_REMOVE, uintptr(n)); e != 0 {
			t.Errorf("LOOP_CTL_REMOVE %d: %v", n, e)
		}
	})
	dev, err := ensureNode(devDir, sysBlock, n)
	if err != nil {
		t.Fatal(err)
	}
	backing, err := os.Open(image(t, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer backing.Close()
	if err := DetachBacking(dev, backing); err != nil {
		t.Errorf("DetachBacking(free %s) = %v, want nil", dev, err)
	}
	if err := DetachFile(dev, image(t, 1<<20)); err != nil {
		t.Errorf("DetachFile(free %s) = %v, want nil", dev, err)
	}
	if err := DetachBacking(filepath.Join(t.TempDir(), "loop-missing"), backing); err == nil {
		t.Errorf("DetachBacking of a missing node succeeded")
	}
}

func TestEnsureNode(t *testing.T) {
	testdisk.RequireRoot(t)
	// Use a loop device that exists on the host to learn its real number.
	var ref unix.Stat_t
	if err := unix.Stat("/dev/loop0", &ref); err != nil {
		t.Skipf("no /dev/loop0 to compare with: %v", err)
	}
	tests := []struct {
		name      string
		sys       string
		n         int
		wantMajor uint32
		wantMinor uint32
	}{
		{"minor from sysfs", sysBlock, 0, unix.Major(ref.Rdev), unix.Minor(ref.Rdev)},
		{"no sysfs entry: 7:N", t.TempDir(), 5, 7, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for i := 0; i < 2; i++ { // second call finds the node made by the first
				dev, err := ensureNode(dir, tc.sys, tc.n)
				if err != nil {
					t.Fatal(err)
				}
				if want := filepath.Join(dir, "loop"+strconv.Itoa(tc.n)); dev != want {
					t.Errorf("node %s, want %s", dev, want)
				}
				var st unix.Stat_t
				if err := unix.Stat(dev, &st); err != nil {
					t.Fatal(err)
				}
				if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != tc.wantMajor || unix.Minor(st.Rdev) != tc.wantMinor {
					t.Errorf("node mode %o rdev %d:%d, want block %d:%d", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), tc.wantMajor, tc.wantMinor)
				}
			}
		})
	}
}

// TestByDescriptor: AttachFile binds exactly the open file, FindFile finds
// its devices by inode whatever path names it, and DetachBacking detaches
// only a device bound to that file. A symlink planted where the file was
// opened changes none of it.
func TestByDescriptor(t *testing.T) {
	testdisk.RequireRoot(t)
	mine, other := image(t, 4<<20), image(t, 4<<20)
	f, err := os.OpenFile(mine, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Replace the path by a symlink to the other image: a path-based
	// attach would now follow it; the descriptor still names mine.
	moved := mine + ".moved"
	if err := os.Rename(mine, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, mine); err != nil {
		t.Fatal(err)
	}
	dev, err := AttachFile(f, Options{})
	if err != nil {
		t.Fatalf("AttachFile: %v", err)
	}
	devName := dev.Name()
	dev.Close()
	detachOnCleanup(t, devName, moved)
	if !boundTo(devName, moved) {
		t.Fatalf("%s is not bound to the opened file %s (backing_file %q)", devName, moved, sysAttr(devName, "loop/backing_file"))
	}
	if devs, err := FindFile(f); err != nil || !slices.Equal(devs, []string{devName}) {
		t.Errorf("FindFile = %v, %v; want [%s]", devs, err, devName)
	}
	o, err := os.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if devs, err := FindFile(o); err != nil || len(devs) != 0 {
		t.Errorf("FindFile(the symlink's target) = %v, %v; want none", devs, err)
	}
	if err := DetachBacking(devName, o); !errors.Is(err, ErrOtherBacking) {
		t.Errorf("DetachBacking(another file) = %v, want ErrOtherBacking", err)
	}
	if !boundTo(devName, moved) {
		t.Fatalf("DetachBacking with another file unbound %s", devName)
	}
	if err := DetachBacking(devName, f); err != nil {
		t.Fatalf("DetachBacking: %v", err)
	}
	if !waitUnbound(devName, moved, 2*time.Second) {
		t.Errorf("%s still bound after DetachBacking", devName)
	}
}
