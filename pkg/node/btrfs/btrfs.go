// Package btrfs creates and removes btrfs subvolumes and manages their quota
// groups directly through the btrfs ioctls, without the btrfs CLI: the driver
// must not depend on the version (or presence) of btrfs-progs in its image,
// nor parse human-oriented output, and an ioctl costs microseconds where an
// exec costs milliseconds.
//
// All functions need CAP_SYS_ADMIN on the filesystem except IsBtrfs,
// IsSubvolume and SubvolumeID.
package btrfs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNotBtrfs is returned when an operation needs a btrfs filesystem and
// the file given lives on another one.
var ErrNotBtrfs = errors.New("not on a btrfs filesystem")

// ErrQgroupNotFound is returned by QgroupUsage when the qgroup does not
// exist, e.g. because quota is disabled or the subvolume was deleted.
var ErrQgroupNotFound = errors.New("qgroup not found")

// IsBtrfs reports whether path is on a btrfs filesystem.
func IsBtrfs(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BTRFS_SUPER_MAGIC, nil
}

func fileIsBtrfs(f *os.File) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return false, fmt.Errorf("fstatfs %s: %w", f.Name(), err)
	}
	return st.Type == unix.BTRFS_SUPER_MAGIC, nil
}

// ValidateName checks that name can be used as a subvolume name directly
// under a parent directory: one non-empty path component of at most 255
// bytes, not "." or "..", without "/" or NUL. The kernel checks some of this
// too, but a clear error before the ioctl beats EINVAL after it, and the
// "." / ".." cases must never reach SNAP_DESTROY.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("subvolume name is empty")
	case name == "." || name == "..":
		return fmt.Errorf("subvolume name %q is not allowed", name)
	case len(name) > VolNameMax:
		return fmt.Errorf("subvolume name is %d bytes, longer than %d", len(name), VolNameMax)
	case strings.ContainsRune(name, '/'):
		return fmt.Errorf("subvolume name %q contains '/'", name)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("subvolume name %q contains NUL", name)
	}
	return nil
}

// newVolArgs encodes name into a btrfs_ioctl_vol_args. The buffer is
// zeroed, so the name is NUL-terminated (ValidateName bounds its length).
func newVolArgs(name string) *volArgs {
	a := &volArgs{}
	copy(a.name[:], name)
	return a
}

// CreateSubvolume creates subvolume name inside the directory parent.
// It fails with an error wrapping EEXIST when name already exists.
func CreateSubvolume(parent *os.File, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	a := newVolArgs(name)
	if err := ioctl(parent, iocSubvolCreate, unsafe.Pointer(a)); err != nil {
		return fmt.Errorf("create subvolume %q in %s: %w", name, parent.Name(), err)
	}
	return nil
}

// DeleteSubvolume removes subvolume name inside the directory parent,
// together with everything in it (the kernel drops the tree in the
// background). It fails with ENOTEMPTY if the subvolume contains nested
// subvolumes, and with EINVAL if name is not a subvolume.
func DeleteSubvolume(parent *os.File, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	a := newVolArgs(name)
	if err := ioctl(parent, iocSnapDestroy, unsafe.Pointer(a)); err != nil {
		return fmt.Errorf("delete subvolume %q in %s: %w", name, parent.Name(), err)
	}
	return nil
}

// IsSubvolume reports whether f is open on the root directory of a btrfs
// subvolume: on btrfs, and its inode number is 256.
func IsSubvolume(f *os.File) (bool, error) {
	ok, err := fileIsBtrfs(f)
	if err != nil || !ok {
		return false, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, fmt.Errorf("fstat %s: %w", f.Name(), err)
	}
	return st.Ino == firstFreeObjectID && st.Mode&unix.S_IFMT == unix.S_IFDIR, nil
}

// SubvolumeID returns the ID of the subvolume that f is in (5 for the
// top-level subvolume). f may be any file or directory on btrfs.
func SubvolumeID(f *os.File) (uint64, error) {
	// Tree 0 means "the tree f lives in"; objectid 256 makes the kernel
	// answer with that tree's ID without resolving a path.
	a := &inoLookupArgs{objectID: firstFreeObjectID}
	if err := ioctl(f, iocInoLookup, unsafe.Pointer(a)); err != nil {
		if errors.Is(err, unix.ENOTTY) {
			err = fmt.Errorf("%w: %w", ErrNotBtrfs, err)
		}
		return 0, fmt.Errorf("subvolume id of %s: %w", f.Name(), err)
	}
	return a.treeID, nil
}

// Snapshot makes name inside the directory parent a snapshot of the
// subvolume src: in O(1), sharing every extent with src, atomic with
// respect to writes into src (btrfs flushes src's dirty data first). A
// read-only snapshot can never change; a writable one is a new subvolume
// like any other. The new subvolume gets a level-0 qgroup of its own
// (without a limit) when quota is enabled.
func Snapshot(src, parent *os.File, name string, readOnly bool) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	a := &volArgsV2{fd: int64(src.Fd())}
	copy(a.name[:], name)
	if readOnly {
		a.flags = subvolRdonly
	}
	if err := ioctl(parent, iocSnapCreateV2, unsafe.Pointer(a)); err != nil {
		return fmt.Errorf("snapshot %s as %q in %s: %w", src.Name(), name, parent.Name(), err)
	}
	return nil
}
