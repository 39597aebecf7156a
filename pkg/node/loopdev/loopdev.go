// Package loopdev binds files to loop block devices through the loop
// driver's ioctls (the loop backend's sparse images, volumeMode: Block). It
// does not exec losetup: no dependency on util-linux in the driver image, no
// output parsing, and every failure comes back as an errno.
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Options say how a file is bound.
type Options struct {
	// ReadOnly makes the device read-only (the backing file is opened
	// read-only too).
	ReadOnly bool
	// DirectIO makes the loop driver use O_DIRECT on the backing file,
	// avoiding double caching in the host page cache.
	DirectIO bool
	// AutoClear detaches the device by itself when its last user closes it
	// (e.g. at unmount). Note that Attach's own descriptor is such a user:
	// with AutoClear, Attach returns a device that is already free again
	// unless something else holds it; use AttachOpen and mount before
	// closing.
	AutoClear bool
}

// Paths of the loop driver; variables so tests can point node creation at a
// scratch directory.
var (
	devDir   = "/dev"
	sysBlock = "/sys/block"
)

const (
	loopMajor = 7
	// attachAttempts bounds the retries when another process takes the
	// free device between LOOP_CTL_GET_FREE and our configure call.
	attachAttempts = 32
)

// Attach binds backingFile to a free loop device (LOOP_CTL_GET_FREE on
// /dev/loop-control, then LOOP_CONFIGURE; fall back to LOOP_SET_FD +
// LOOP_SET_STATUS64 on EINVAL/ENOTTY), retrying if another process grabbed
// the same free device (EBUSY). Returns "/dev/loopN". If /dev/loopN does not
// exist yet (containers with a static /dev), it creates the node with mknod
// (block major 7, minor from sysfs).
func Attach(backingFile string, opts Options) (string, error) {
	f, err := AttachOpen(backingFile, opts)
	if err != nil {
		return "", err
	}
	dev := f.Name()
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close %s: %w", dev, err)
	}
	return dev, nil
}

// AttachOpen is Attach that returns the loop device open (read-write, or
// read-only with opts.ReadOnly). f.Name() is the device path. While f is
// open the binding stays even with AutoClear, so a caller can mount the
// device first and then close f, leaving the mount as the last user.
func AttachOpen(backingFile string, opts Options) (*os.File, error) {
	return attach(backingFile, opts, true)
}

// AttachFile is AttachOpen for a backing file the caller has opened (read-
// write, or read-only with opts.ReadOnly). Callers that must not follow a
// planted symlink open the file safely (e.g. through an os.Root) and pass
// the descriptor: the loop driver binds exactly that file, never whatever a
// path names at the time of the call. backing stays the caller's to close.
func AttachFile(backing *os.File, opts Options) (*os.File, error) {
	return attachFile(backing, opts, true)
}

// attach does the work of AttachOpen; configure=false skips LOOP_CONFIGURE
// so tests can exercise the fallback for kernels older than 5.8.
func attach(backingFile string, opts Options, configure bool) (*os.File, error) {
	backing, err := os.OpenFile(backingFile, openMode(opts)|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing file: %w", err)
	}
	defer backing.Close() // the loop driver holds its own reference
	return attachFile(backing, opts, configure)
}

func openMode(opts Options) int {
	if opts.ReadOnly {
		return unix.O_RDONLY
	}
	return unix.O_RDWR
}

func attachFile(backing *os.File, opts Options, configure bool) (*os.File, error) {
	mode := openMode(opts)
	backingFile := backing.Name()
	ctl, err := os.OpenFile(filepath.Join(devDir, "loop-control"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open loop-control: %w", err)
	}
	defer ctl.Close()

	for attempt := 1; attempt <= attachAttempts; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("find a free loop device: %w", err)
		}
		dev, err := ensureNode(devDir, sysBlock, n)
		if err != nil {
			return nil, err
		}
		f, err := os.OpenFile(dev, mode|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		err = bind(f, backing, opts, configure)
		if err == nil {
			klog.V(4).InfoS("Attached loop device", "device", dev, "backingFile", backingFile, "options", opts)
			return f, nil
		}
		f.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("bind %s to %s: %w", backingFile, dev, err)
		}
		// Someone else bound this device between GET_FREE and our
		// call: ask for another free one.
		klog.V(4).InfoS("Loop device taken concurrently, retrying", "device", dev, "attempt", attempt)
		time.Sleep(time.Duration(attempt) * time.Millisecond)
	}
	return nil, fmt.Errorf("bind %s: every free loop device was taken concurrently %d times: %w", backingFile, attachAttempts, unix.EBUSY)
}

// bind attaches backing to the open loop device dev.
func bind(dev, backing *os.File, opts Options, configure bool) error {
	var flags uint32
	if opts.ReadOnly {
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	if opts.AutoClear {
		flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	if configure {
		cfg := &unix.LoopConfig{Fd: uint32(backing.Fd())}
		cfg.Info.Flags = flags
		if opts.DirectIO {
			cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
		}
		setFileName(&cfg.Info, backing.Name())
		err := unix.IoctlLoopConfigure(int(dev.Fd()), cfg)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY):
			return fmt.Errorf("LOOP_CONFIGURE: %w", err)
		}
		// Kernels before 5.8 do not know LOOP_CONFIGURE.
		klog.V(4).InfoS("LOOP_CONFIGURE unsupported, using LOOP_SET_FD", "device", dev.Name(), "err", err)
	}

	// The old three-step way. READ_ONLY follows from the backing file's
	// open mode here; AUTOCLEAR is set with SET_STATUS64.
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return fmt.Errorf("LOOP_SET_FD: %w", err)
	}
	info := &unix.LoopInfo64{Flags: flags &^ unix.LO_FLAGS_READ_ONLY}
	setFileName(info, backing.Name())
	if err := unix.IoctlLoopSetStatus64(int(dev.Fd()), info); err != nil {
		undo(dev)
		return fmt.Errorf("LOOP_SET_STATUS64: %w", err)
	}
	if opts.DirectIO {
		if err := unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_SET_DIRECT_IO, 1); err != nil {
			undo(dev)
			return fmt.Errorf("LOOP_SET_DIRECT_IO: %w", err)
		}
	}
	return nil
}

// undo releases a half-configured device; the error that led here is the
// one worth reporting, so a failure of the cleanup is only logged.
func undo(dev *os.File) {
	if err := unix.IoctlSetInt(int(dev.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		klog.ErrorS(err, "Releasing half-configured loop device failed", "device", dev.Name())
	}
}

// setFileName records the backing file name in the loop status (shown by
// losetup and LOOP_GET_STATUS64; the kernel's backing_file in sysfs comes
// from the file itself, so truncation here does not matter).
func setFileName(info *unix.LoopInfo64, name string) {
	n := copy(info.File_name[:unix.LO_NAME_SIZE-1], name)
	info.File_name[n] = 0
}

// ensureNode returns dir/loopN, creating the block device node if it is
// missing, as it is in containers whose /dev was populated once at start.
// The minor number comes from sysfs, because with max_part > 0 it is not N.
func ensureNode(dir, sys string, n int) (string, error) {
	dev := filepath.Join(dir, "loop"+strconv.Itoa(n))
	if _, err := os.Stat(dev); err == nil {
		return dev, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("stat %s: %w", dev, err)
	}
	major, minor := uint32(loopMajor), uint32(n)
	if b, err := os.ReadFile(filepath.Join(sys, "loop"+strconv.Itoa(n), "dev")); err == nil {
		if ma, mi, err := parseDevNumber(string(b)); err == nil {
			major, minor = ma, mi
		}
	}
	err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(major, minor)))
	if err != nil && !errors.Is(err, unix.EEXIST) { // EEXIST: a concurrent Attach made it
		return "", fmt.Errorf("mknod %s (%d:%d): %w", dev, major, minor, err)
	}
	klog.V(2).InfoS("Created loop device node", "device", dev, "major", major, "minor", minor)
	return dev, nil
}

// parseDevNumber parses a sysfs "dev" file: "MAJOR:MINOR\n".
func parseDevNumber(s string) (major, minor uint32, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return 0, 0, fmt.Errorf("device number %q: no colon", s)
	}
	ma, err := strconv.ParseUint(a, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("device number %q: major: %w", s, err)
	}
	mi, err := strconv.ParseUint(b, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("device number %q: minor: %w", s, err)
	}
	return uint32(ma), uint32(mi), nil
}

// ErrOtherBacking is returned by DetachFile when the device is bound to a
// different file than the one named.
var ErrOtherBacking = errors.New("loop device is bound to another file")

// DetachFile unbinds dev (LOOP_CLR_FD) only if it is bound to backingFile
// (same device and inode): a loop device number is reused by whoever
// attaches next, so a detach that comes late (a retry, a cleanup after an
// autoclear) could otherwise unbind another user's device. The check and
// the LOOP_CLR_FD use one open descriptor, and while that descriptor is
// open the kernel cannot release the device (a concurrent clear is deferred
// to the last close), so the binding cannot change between the two. A free
// device is not an error. If the device is still in use (mounted, or open
// in any other process: udev's blkid and a concurrent `losetup -f` briefly
// open loop devices too) the kernel cannot clear it now; it marks it
// autoclear instead and returns success, so the release happens at the
// last close. Callers that must know the binding is gone poll Find.
func DetachFile(dev, backingFile string) error {
	var st unix.Stat_t
	if err := unix.Stat(backingFile, &st); err != nil {
		return fmt.Errorf("detach %s: stat backing file: %w", dev, err)
	}
	return detachIfBound(dev, backingFile, st)
}

// DetachBacking is DetachFile for a backing file the caller has open: the
// binding is checked against that very file, not whatever a path names.
func DetachBacking(dev string, backing *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(backing.Fd()), &st); err != nil {
		return fmt.Errorf("detach %s: stat backing file: %w", dev, err)
	}
	return detachIfBound(dev, backing.Name(), st)
}

// detachIfBound unbinds dev if the loop driver recorded st's device and
// inode for it.
func detachIfBound(dev, backingFile string, st unix.Stat_t) error {
	f, err := os.OpenFile(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		return fmt.Errorf("status of %s: %w", dev, err)
	}
	if info.Device != st.Dev || info.Inode != st.Ino {
		return fmt.Errorf("detach %s from %s: %w", dev, backingFile, ErrOtherBacking)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		if errors.Is(err, unix.ENXIO) {
			return nil
		}
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	klog.V(4).InfoS("Detached loop device", "device", dev, "backingFile", backingFile)
	return nil
}

// Refresh makes dev pick up the new size of its backing file after it grew
// (LOOP_SET_CAPACITY), e.g. for a volume expansion.
func Refresh(dev string) error {
	f, err := os.OpenFile(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("refresh capacity of %s: %w", dev, err)
	}
	return nil
}

// deletedSuffix is what d_path appends to the name of an unlinked file.
const deletedSuffix = " (deleted)"

// parseBackingFile parses the content of /sys/block/loopN/loop/backing_file:
// the path followed by one newline, with " (deleted)" appended by the kernel
// when the file has been unlinked since it was bound.
func parseBackingFile(content string) (path string, deleted bool) {
	path = strings.TrimSuffix(content, "\n")
	if p, ok := strings.CutSuffix(path, deletedSuffix); ok {
		return p, true
	}
	return path, false
}

// Find returns the loop devices whose backing file is path. A device
// matches when sysfs names the same cleaned absolute path, or when the
// device and inode recorded by the loop driver are those of the file (so a
// renamed file is still found). A device whose backing file was deleted
// matches only by device and inode, never by name: a new file at the same
// path is a different file.
func Find(backingFile string) ([]string, error) {
	abs, err := filepath.Abs(backingFile)
	if err != nil {
		return nil, fmt.Errorf("absolute path of %s: %w", backingFile, err)
	}
	abs = filepath.Clean(abs)
	var st unix.Stat_t
	haveStat := unix.Stat(abs, &st) == nil

	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", sysBlock, err)
	}
	var devs []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sysBlock, name, "loop", "backing_file"))
		if err != nil {
			continue // not bound (the file exists only while bound) or gone meanwhile
		}
		p, deleted := parseBackingFile(string(b))
		dev := filepath.Join(devDir, name)
		if !deleted && filepath.Clean(p) == abs {
			devs = append(devs, dev)
			continue
		}
		if haveStat && sameInode(dev, st) {
			devs = append(devs, dev)
		}
	}
	return devs, nil
}

// FindFile returns the loop devices bound to the open file backing, by the
// device and inode numbers the loop driver recorded (so whatever its path
// is now, and never another file that a path names, such as the target of a
// planted symlink).
func FindFile(backing *os.File) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(backing.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", backing.Name(), err)
	}
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", sysBlock, err)
	}
	var devs []string
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		// backing_file exists only while the device is bound: a cheap
		// filter before opening the device for its status.
		if _, err := os.Stat(filepath.Join(sysBlock, name, "loop", "backing_file")); err != nil {
			continue
		}
		if dev := filepath.Join(devDir, name); sameInode(dev, st) {
			devs = append(devs, dev)
		}
	}
	return devs, nil
}

// sameInode reports whether dev is bound to the file with stat st, per the
// device and inode numbers the loop driver recorded at bind time.
func sameInode(dev string, st unix.Stat_t) bool {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return false
	}
	return info.Device == st.Dev && info.Inode == st.Ino
}

// Releasing reports whether dev is bound with LO_FLAGS_AUTOCLEAR (sysfs
// loop/autoclear), read without opening the device. For a device its owner
// bound without AutoClear this means a LOOP_CLR_FD came while another
// process had the device open: the kernel detaches it at that process's
// last close, so the device is on its way out and must not be reused.
func Releasing(dev string) bool {
	b, err := os.ReadFile(filepath.Join(sysBlock, filepath.Base(dev), "loop", "autoclear"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// releasePoll is how often WaitReleased looks at the device.
const releasePoll = 10 * time.Millisecond

// WaitReleased waits up to timeout until dev is no longer bound to backing:
// unbound (its sysfs backing_file is gone, or the loop driver says ENXIO),
// or bound to another file since. A LOOP_CLR_FD (DetachFile) on a device
// that someone else has open, such as a Find in another goroutine reading
// the status of every loop device, only marks it autoclear; this is how a
// caller learns the binding is really gone. Returns an error wrapping
// unix.EBUSY if the device is still bound to backing at the deadline.
func WaitReleased(dev string, backing *os.File, timeout time.Duration) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(backing.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", backing.Name(), err)
	}
	backingPath := filepath.Join(sysBlock, filepath.Base(dev), "loop", "backing_file")
	deadline := time.Now().Add(timeout)
	for {
		// sysfs first: polling it does not open the device, which would
		// itself delay the release it waits for.
		if _, err := os.Stat(backingPath); err != nil || !sameInode(dev, st) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("loop device %s is still bound to %s after %v (held open by another process): %w", dev, backing.Name(), timeout, unix.EBUSY)
		}
		time.Sleep(releasePoll)
	}
}
