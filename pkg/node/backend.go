package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

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
	k := BackendKind(s)
	if _, ok := constructor(k); ok || k == BackendAuto {
		return k, nil
	}
	names := []string{string(BackendAuto)}
	for _, b := range backendKinds {
		names = append(names, string(b.kind))
	}
	last := len(names) - 1
	return "", fmt.Errorf("%w: unknown backend %q (want %s or %s)", ErrInvalid, s, strings.Join(names[:last], ", "), names[last])
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

// backend is the only door to disk-specific work: how a pool carves a
// volume, enforces and reports its size, and shows it on this node. It is
// made by a pure constructor (registered in backends.go) from the pool's
// store; Open then prepares it, once per pool. Each volume method is
// called with the volume's lock held.
//
// Adding a backend is one file: a type implementing this interface (the
// directory-style ones embed dirStyle) and its line in backendKinds.
type backend interface {
	Kind() BackendKind
	// Open checks that the pool can have this backend and prepares it
	// (btrfs: enables quota and checks its consistency). The pool calls it
	// once, before any other method; an error explains what the pool's
	// filesystem or this node lacks, and the backend is not used.
	Open() error
	// Enforced reports whether a volume cannot grow past its size.
	Enforced() bool
	// Supports reports whether the backend can serve the access type.
	Supports(AccessType) bool
	// Resolve applies the backend's defaults to a request for a new volume
	// of the access type and validates it: it returns the filesystem type
	// to record ("" where the volume is the pool's own filesystem) and the
	// smallest size the backend can make for it.
	Resolve(a AccessType, fsType string) (resolvedFsType string, minSize int64, err error)
	// Create carves the storage of v inside dir (which exists and is empty)
	// and may fill backend fields of v (e.g. SubvolumeID). v has passed
	// Resolve.
	Create(ctx context.Context, dir volumeDir, v *Volume) error
	// Resize makes the volume's storage newSize bytes large. A staged
	// volume grows online (loop: the attached device learns the new size
	// and a mounted filesystem is grown, where the driver may); a loop
	// volume that is not staged has its filesystem grown at its next Stage.
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
	// project quota limits; loop: refuses while a device is attached)
	// before a trashed volume, or a failed creation, is removed. The
	// volume's record in dir, if any, may be read (dir.record).
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
	// MountsAtStaging reports whether Stage mounts the volume at the
	// staging path (loop Filesystem volumes); for the others the staging
	// path is the CO's empty directory and carries nothing.
	MountsAtStaging(v *Volume) bool
	// Placement finds the volume in the mount table: its loop devices and
	// every mount point that shows its storage (see placement).
	Placement(dir volumeDir, v *Volume, infos []mount.MountInfo) (placement, error)
	// Shows reports, without the mount table, whether the host path p
	// (outside every pool) certainly shows the volume's storage; false
	// means "ask Placement".
	Shows(dir volumeDir, v *Volume, p string) bool
	// PublishSource is what NodePublish bind-mounts onto the target path;
	// the caller has checked that stagingPath is the volume's.
	PublishSource(dir volumeDir, v *Volume, stagingPath string) (string, error)

	// The snapshot and clone hooks (see snapshot_backends.go for what
	// each backend does, and docs/design.md "Snapshots").

	// Snapshot captures the volume's data as it is now into snap, a new
	// empty directory of the pool, in the layout of a volume directory
	// (dataName or imageName). The caller holds the volume's lock and
	// calls release to give it up early: a backend that copies for long
	// calls it once it holds open descriptors on the source, so the
	// volume stays usable during the copy.
	Snapshot(ctx context.Context, dir volumeDir, v *Volume, snap volumeDir, release func()) (snapResult, error)
	// CreateFrom is Create with the new volume v (at least srcVol's size)
	// filled from src, a snapshot directory or another volume's directory
	// whose data has the form of srcVol. release gives up the lock on the
	// source as for Snapshot. It returns the method it used.
	CreateFrom(ctx context.Context, dir volumeDir, v *Volume, src volumeDir, srcVol *Volume, release func()) (string, error)
}

// maintainer is a backend with periodic work: the pool calls Maintain on
// every trash-purge round (btrfs: checks that qgroup limits are enforced).
type maintainer interface {
	Maintain()
}

// chmodRoot fixes the mode of a new volume root (Mkdir's mode is masked by
// the umask).
func chmodRoot(root *os.Root, rel string, mode os.FileMode) error {
	if err := root.Chmod(rel, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", rel, err)
	}
	return nil
}
