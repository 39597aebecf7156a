package node

import (
	"context"
	"errors"
	"fmt"
	"os"

	mount "k8s.io/mount-utils"
)

// BackendKind names how a pool carves volumes and enforces their size.
type BackendKind string

const (
	// BackendAuto picks the strongest backend the pool's filesystem supports.
	BackendAuto BackendKind = "auto"
	// BackendBtrfs: one subvolume per volume, size enforced by a qgroup limit.
	BackendBtrfs BackendKind = "btrfs"
	// BackendLoop: a sparse image file with its own filesystem on a loop
	// device; size enforced on any host filesystem; serves volumeMode Block.
	BackendLoop BackendKind = "loop"
	// BackendDir: a plain directory; the size is recorded, NOT enforced.
	BackendDir BackendKind = "dir"
	// BackendXFS: a directory with its own XFS project id, size enforced
	// by a project quota limit (writes past it fail with ENOSPC). The
	// filesystem must be mounted with prjquota.
	BackendXFS BackendKind = "xfs"
	// BackendExt4: the same on ext4 (writes past the limit fail with
	// EDQUOT; root with CAP_SYS_RESOURCE is exempt). Needs mkfs.ext4
	// -O quota,project and the prjquota mount option.
	BackendExt4 BackendKind = "ext4"
)

// ParseBackendKind validates a backend name from a flag.
func ParseBackendKind(s string) (BackendKind, error) {
	switch k := BackendKind(s); k {
	case BackendAuto, BackendBtrfs, BackendXFS, BackendExt4, BackendLoop, BackendDir:
		return k, nil
	}
	return "", fmt.Errorf("%w: unknown backend %q (want auto, btrfs, xfs, ext4, loop or dir)", ErrInvalid, s)
}

// Usage is a volume's space as its backend accounts for it. Inode figures
// are zero where the backend has no inode accounting (btrfs).
type Usage struct {
	TotalBytes, UsedBytes, AvailableBytes int64
	TotalInodes, UsedInodes, FreeInodes   int64
	HasInodes                             bool
}

// errNoAccount is Allocated's error for a backend that keeps no account
// of what a volume occupies.
var errNoAccount = errors.New("the backend keeps no per-volume account")

// volumeDir is a volume's directory inside a pool, as backends see it.
type volumeDir struct {
	pool *Pool
	// rel is the directory relative to the pool root (e.g. "volumes/pvc-1").
	rel string
}

// abs returns the absolute host path of a file in the volume directory.
// Only used for APIs that need a path (mount, mkfs, loop); every lookup
// through it was checked with the pool's os.Root first.
func (d volumeDir) abs(name string) string { return d.pool.abs(d.rel + "/" + name) }

// backend is what a pool needs from a way of carving volumes. Each method is
// called with the volume's lock held.
type backend interface {
	Kind() BackendKind
	// Enforced reports whether a volume cannot grow past its size.
	Enforced() bool
	// MinSize is the smallest volume the backend can make for the access type.
	MinSize(AccessType) int64
	// Supports reports whether the backend can serve the access type.
	Supports(AccessType) bool
	// Create carves the storage of v inside dir (which exists and is empty)
	// and may fill backend fields of v (e.g. SubvolumeID).
	Create(ctx context.Context, dir volumeDir, v *Volume) error
	// Resize makes the volume's storage newSize bytes large. A staged
	// volume grows online (loop: the attached device learns the new size
	// and a mounted filesystem is grown); a loop volume that is not staged
	// has its filesystem grown at its next Stage.
	Resize(ctx context.Context, dir volumeDir, v *Volume, newSize int64) error
	// Allocated is how many bytes of the pool's filesystem the volume
	// occupies now (qgroup referenced bytes, image blocks, project quota
	// bytes), read through the pool's root; errNoAccount where the backend
	// keeps no per-volume account (dir). Capacity counts a failure as 0,
	// which makes it conservative.
	Allocated(dir volumeDir, v *Volume) (int64, error)
	// Usage reports the volume's space from the backend's own accounting;
	// volumePath is where the volume is published, if known.
	Usage(dir volumeDir, v *Volume, volumePath string) (Usage, error)
	// Destroy releases what a plain recursive removal cannot (subvolumes,
	// loop devices) before a trashed volume is removed.
	Destroy(ctx context.Context, dir volumeDir) error
	// Stage prepares the volume on this node: loop binds its image to a
	// loop device and mounts a Filesystem volume at stagingPath; the
	// directory backends have nothing to prepare (PublishSource is their
	// data directory). The caller has checked that stagingPath is either the
	// volume's staging mount already or free to mount onto.
	Stage(ctx context.Context, dir volumeDir, v *Volume, stagingPath string, mountFlags []string) error
	// Unstage undoes Stage after the caller unmounted the staging mount:
	// it releases what Stage holds besides the mount (loop devices).
	Unstage(ctx context.Context, dir volumeDir, v *Volume, stagingPath string) error
	// Placement finds the volume in the mount table: its loop devices and
	// every mount point that shows its storage (see placement).
	Placement(dir volumeDir, v *Volume, infos []mount.MountInfo) (placement, error)
	// PublishSource is what NodePublish bind-mounts onto the target path;
	// the caller has checked that stagingPath is the volume's.
	PublishSource(dir volumeDir, v *Volume, stagingPath string) (string, error)
}

// fileOwner is used by backends to fix the mode of a new volume root.
func chmodRoot(root *os.Root, rel string, mode os.FileMode) error {
	if err := root.Chmod(rel, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", rel, err)
	}
	return nil
}
