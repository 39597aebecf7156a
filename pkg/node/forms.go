package node

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// A pool serves every volume mode and the filesystems dhpp can make, each
// in one of two forms:
//
//   - native: what the pool's own backend carves (a subvolume, a project
//     quota directory, a plain directory, or on a loop pool its image).
//     Filesystem volumes whose request names no fsType, or the pool's own
//     filesystem, are native; so are Block volumes of a loop pool.
//   - image: a Block volume, or a Filesystem volume of ext4 or xfs other
//     than the pool's own, on a pool whose backend cannot make it. The
//     loop backend makes it, as an image file inside this pool's volume
//     directory; the record's Backend says "loop" and its FsType the
//     filesystem inside (empty for Block), so every later operation
//     (restart, placement, stats, expansion, trash) goes to the loop
//     backend, as for a volume of a loop pool.

// btrfsFsType is the one filesystem dhpp makes only natively: on a btrfs
// pool, as a subvolume.
const btrfsFsType = "btrfs"

// carver returns the backend that makes a new volume of the access type
// and requested filesystem in this pool, or why it cannot: ErrElsewhere
// when another node's pool could (btrfs asked of a pool not on btrfs, or
// this node has no loop devices), ErrInvalid when no dhpp pool can.
func (p *Pool) carver(a AccessType, fsType string) (backend, error) {
	native := p.backend
	switch {
	case a == AccessBlock && native.Supports(AccessBlock):
		return native, nil
	case a == AccessBlock:
		return p.imageBackend("Block volumes")
	case fsType == "" || fsType == p.nativeFsType():
		return native, nil
	}
	if _, ok := loopFsTypes[fsType]; ok {
		return p.imageBackend(fsType + " volumes")
	}
	if fsType == btrfsFsType {
		return nil, fmt.Errorf("%w: fsType btrfs: pool %q is on %s; btrfs volumes are made on pools on btrfs",
			ErrElsewhere, p.Name, p.nativeFsType())
	}
	return nil, fmt.Errorf("%w: fsType %q is not one dhpp makes: ext4 and xfs on every pool, btrfs on pools on btrfs", ErrInvalid, fsType)
}

// Serves reports whether the pool can make a new volume of the access type
// and filesystem ("" for the pool's native one) now (false while the pool
// is not opened).
func (p *Pool) Serves(a AccessType, fsType string) bool {
	if !p.opened.Load() {
		return false
	}
	_, err := p.carver(a, fsType)
	return err == nil
}

// imageBackend is the loop backend that makes image volumes in this pool;
// a node without loop devices cannot, but another node may.
func (p *Pool) imageBackend(what string) (backend, error) {
	b, err := p.backendFor(BackendLoop)
	if err != nil {
		return nil, fmt.Errorf("%w: pool %q (backend %s) serves %s as loop-attached images and this node cannot: %v",
			ErrElsewhere, p.Name, p.backend.Kind(), what, err)
	}
	return b, nil
}

// nativeFsType is the filesystem a native Filesystem volume of the pool
// shows in /proc/mounts: the pool's own for the directory-style backends,
// the default image filesystem for a loop pool; "" if unknown.
func (p *Pool) nativeFsType() string {
	if lb, ok := p.backend.(*loopBackend); ok {
		return lb.fsType
	}
	return p.st.fsType
}

// volumeFsType is the filesystem a Filesystem volume of this pool shows:
// its recorded one (an image volume) or the pool's native one.
func (p *Pool) volumeFsType(v *Volume) string {
	if v.FsType != "" || v.AccessType == AccessBlock {
		return v.FsType
	}
	return p.nativeFsType()
}

// FsTypeOf is the filesystem a Filesystem volume of this node shows (its
// recorded one, else its pool's native one); "" for Block or if unknown.
func (m *Manager) FsTypeOf(v *Volume) string {
	p, ok := m.byName[v.Pool]
	if !ok || !p.opened.Load() {
		return v.FsType
	}
	return p.volumeFsType(v)
}

// fsTypeOf names the filesystem an open file is on, as mount(8) would,
// for the filesystems a pool is likely on; "" for any other.
func fsTypeOf(f *os.File) (string, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return "", err
	}
	switch st.Type {
	case unix.BTRFS_SUPER_MAGIC:
		return btrfsFsType, nil
	case unix.XFS_SUPER_MAGIC:
		return "xfs", nil
	case unix.EXT4_SUPER_MAGIC: // also ext2/3 mounted by the ext4 driver
		return "ext4", nil
	case unix.TMPFS_MAGIC:
		return "tmpfs", nil
	}
	return "", nil
}

// fsNoCowFl is FS_NOCOW_FL (linux/fs.h), which x/sys/unix does not export.
const fsNoCowFl = 0x00800000

// setNoCOW marks an empty file on btrfs NOCOW: its blocks are overwritten
// in place, not copied on every write, which an image file with a
// filesystem inside (and direct I/O through a loop device) needs to keep
// its I/O cost and fragmentation near a plain file's. btrfs applies the
// flag only to a file without data, so callers set it first. A file on
// another filesystem is left alone.
func setNoCOW(f *os.File) error {
	if kind, err := fsTypeOf(f); err != nil || kind != btrfsFsType {
		return err
	}
	fd := int(f.Fd())
	flags, err := unix.IoctlGetInt(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return fmt.Errorf("FS_IOC_GETFLAGS %s: %w", f.Name(), err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags|fsNoCowFl); err != nil {
		return fmt.Errorf("FS_IOC_SETFLAGS NOCOW %s: %w", f.Name(), err)
	}
	return nil
}
