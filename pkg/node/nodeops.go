package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
)

// The node RPCs. Every path a CO sends is checked against where the volume
// is (its placement, from the mount table) before anything is mounted,
// unmounted or removed: a path that belongs to something else is refused
// with ErrWrongPath and left untouched. The README's "What each node RPC
// checks" is the summary of this file.

// where reads the mount table and finds the volume in it.
func (m *Manager) where(b backend, dir volumeDir, v *Volume) (placement, []mount.MountInfo, error) {
	infos, err := readMountTable(m.env.mountInfoPath)
	if err != nil {
		return placement{}, nil, err
	}
	pl, err := b.Placement(dir, v, infos)
	if err != nil {
		return placement{}, nil, fmt.Errorf("volume %q: %w", v.ID, err)
	}
	return pl, infos, nil
}

// checkPath refuses a CO path that is not the volume's: a mount of
// something else, or a path inside a pool or a volume's storage.
func (m *Manager) checkPath(field, p string, v *Volume, pl placement, infos []mount.MountInfo) error {
	if err := m.outsideStorage(field, p, infos); err != nil {
		return err
	}
	return foreignMount(field, p, v, pl, infos)
}

// outsideStorage refuses a path inside a pool or inside a mount of a
// volume's storage (e.g. in another volume's target): creating or removing
// a directory there, or mounting onto it, would change that volume's data
// or the pool's own files.
func (m *Manager) outsideStorage(field, p string, infos []mount.MountInfo) error {
	for _, pool := range m.pools {
		if mountinfo.Within(p, pool.Path) {
			return fmt.Errorf("%w: %s %s is inside pool %q (%s); it must lie outside every pool", ErrWrongPath, field, p, pool.Name, pool.Path)
		}
	}
	holder, fsPath, ok := mountinfo.Holder(infos, filepath.Dir(p))
	if !ok {
		return nil
	}
	image := loopBackingFile(holder.Major, holder.Minor)
	for _, pool := range m.pools {
		base, poolFsPath, ok := mountinfo.Holder(infos, pool.Path)
		if ok && base.Major == holder.Major && base.Minor == holder.Minor && mountinfo.Within(fsPath, poolFsPath) {
			return fmt.Errorf("%w: %s %s lies in a mount of pool %q's storage (%s, root %s); it must lie outside every pool and volume",
				ErrWrongPath, field, p, pool.Name, holder.MountPoint, holder.Root)
		}
		if image != "" && mountinfo.Within(image, pool.Path) {
			return fmt.Errorf("%w: %s %s lies in the filesystem of a loop volume of pool %q (mounted at %s, image %s); it must lie outside every pool and volume",
				ErrWrongPath, field, p, pool.Name, holder.MountPoint, image)
		}
	}
	return nil
}

// loopBackingFile is the backing file of the loop device with that number,
// or "" if it is not a bound loop device.
func loopBackingFile(major, minor int) string {
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/loop/backing_file", major, minor))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
}

// foreignMount refuses a path that is a mount of something other than the
// volume.
func foreignMount(field, p string, v *Volume, pl placement, infos []mount.MountInfo) error {
	if at := mountAt(infos, p); at != nil && !pl.has(p) {
		return fmt.Errorf("%w: %s %s is a mount of %s, not of volume %q (which is mounted at %s); left untouched",
			ErrWrongPath, field, p, describeMount(at), v.ID, pl.describe())
	}
	return nil
}

// StageRequest asks to prepare a volume on this node.
type StageRequest struct {
	VolumeID, StagingPath string
	// AccessType is how the CO will use the volume: it must be the
	// volume's own.
	AccessType AccessType
	// FsType is the capability's fs_type, if any: the filesystem the CO
	// expects at the staging mount (see checkStageFsType).
	FsType     string
	MountFlags []string
}

// StageVolume prepares a volume on this node (loop Filesystem: attach and
// mount at the staging path; loop Block: attach; other backends need
// nothing). Idempotent at the same path; a loop Filesystem volume already
// staged elsewhere is refused, since a second mount of its filesystem
// through a second loop device would corrupt it.
func (m *Manager) StageVolume(ctx context.Context, req StageRequest) error {
	return m.withVolume(req.VolumeID, func(v *Volume, b backend, dir volumeDir) error {
		if req.AccessType != v.AccessType {
			return fmt.Errorf("%w: volume %q is a %s volume and cannot be staged as %s", ErrInvalid, v.ID, v.AccessType, req.AccessType)
		}
		if err := m.checkStageFsType(v, req.FsType); err != nil {
			return err
		}
		staging := resolveParent(req.StagingPath)
		pl, infos, err := m.where(b, dir, v)
		if err != nil {
			return err
		}
		if err := m.checkPath("staging path", staging, v, pl, infos); err != nil {
			return err
		}
		if !pl.has(staging) {
			if b.MountsAtStaging(v) && len(pl.mounts) > 0 {
				return fmt.Errorf("%w: volume %q is already staged on this node (its filesystem is mounted at %s); staging it at %s too would mount it twice",
					ErrWrongPath, v.ID, pl.describe(), staging)
			}
			// Only loop Filesystem volumes mount here, but a staging
			// path is the CO's empty directory for every backend.
			if err := checkMountable("staging path", staging, AccessMount); err != nil {
				return err
			}
		}
		return b.Stage(ctx, dir, v, staging, req.MountFlags)
	})
}

// UnstageVolume undoes StageVolume. Idempotent: a staging path with nothing
// mounted, or a volume that no longer exists, has nothing to undo. A
// staging path that is a mount of anything but this volume is refused.
func (m *Manager) UnstageVolume(ctx context.Context, id, stagingPath string) error {
	err := m.withVolume(id, func(v *Volume, b backend, dir volumeDir) error {
		staging := resolveParent(stagingPath)
		pl, infos, err := m.where(b, dir, v)
		if err != nil {
			return err
		}
		if err := m.checkPath("staging path", staging, v, pl, infos); err != nil {
			return err
		}
		if err := checkUnpublished(v, pl, staging); err != nil {
			return err
		}
		if b.MountsAtStaging(v) && pl.has(staging) {
			if err := m.unmountOwn(b, dir, v, staging); err != nil {
				return err
			}
		}
		return b.Unstage(ctx, dir, v, staging)
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// checkUnpublished refuses to unstage a volume that holds loop devices
// and is still mounted anywhere but at stagingPath: its staging mount is
// elsewhere, or it is published (the CO must unpublish first), and
// detaching its device would pull it out from under a pod. Unstaging a
// volume without devices (the directory backends) changes nothing, so
// there is nothing to refuse.
func checkUnpublished(v *Volume, pl placement, staging string) error {
	if len(pl.devices) == 0 {
		return nil
	}
	var elsewhere []string
	for _, p := range pl.mounts {
		if p != staging {
			elsewhere = append(elsewhere, p)
		}
	}
	if len(elsewhere) > 0 {
		return fmt.Errorf("%w: volume %q is still mounted at %s (staged or published there); unstaging it at %s would pull its device out from under them: unpublish first",
			ErrInUse, v.ID, strings.Join(elsewhere, ", "), staging)
	}
	return nil
}

// unmountOwn unmounts p as long as the topmost mount there is the
// volume's (an earlier version could stack two), stopping at anything else.
func (m *Manager) unmountOwn(b backend, dir volumeDir, v *Volume, p string) error {
	for range 8 {
		if err := m.env.mounter.Unmount(p); err != nil {
			if h := holdersOf(p); len(h) > 0 {
				return fmt.Errorf("unmount volume %q from %s (in use by %s): %w", v.ID, p, strings.Join(h, ", "), err)
			}
			return fmt.Errorf("unmount volume %q from %s: %w", v.ID, p, err)
		}
		pl, infos, err := m.where(b, dir, v)
		if err != nil {
			return err
		}
		if mountAt(infos, p) == nil {
			return nil
		}
		if !pl.has(p) {
			return foreignMount("path", p, v, pl, infos)
		}
	}
	return fmt.Errorf("volume %q is still mounted at %s after 8 unmounts", v.ID, p)
}

// PublishRequest asks to make a volume visible at a target path.
type PublishRequest struct {
	VolumeID, StagingPath, TargetPath string
	AccessType                        AccessType
	ReadOnly                          bool
	// SingleWriter is the ReadWriteOncePod mode (SINGLE_NODE_SINGLE_WRITER):
	// the volume may be published at one target only.
	SingleWriter bool
	MountFlags   []string
}

// PublishVolume bind-mounts the volume (directory or block device) onto the
// target path, read-only if asked. Idempotent: a target that already is a
// mount of this volume is kept. Publishes of one volume to different
// targets (several pods on this node) may run concurrently, so this takes
// no volume lock.
func (m *Manager) PublishVolume(_ context.Context, req PublishRequest) error {
	v, b, dir, err := m.volumeOp(req.VolumeID)
	if err != nil {
		return err
	}
	if req.AccessType != v.AccessType {
		return fmt.Errorf("%w: volume %q is a %s volume and cannot be published as %s", ErrInvalid, v.ID, v.AccessType, req.AccessType)
	}
	target, staging := resolveParent(req.TargetPath), resolveParent(req.StagingPath)
	if target == staging {
		return fmt.Errorf("%w: target path and staging path are both %s", ErrInvalid, target)
	}
	pl, infos, err := m.where(b, dir, v)
	if err != nil {
		return err
	}
	// Refuse before touching the target path: a refused publish leaves nothing behind.
	if staging != "" {
		if err := m.checkPath("staging path", staging, v, pl, infos); err != nil {
			return err
		}
	}
	if err := checkStaged(b, v, pl, staging); err != nil {
		return err
	}
	if pl.has(target) {
		return nil // published there already
	}
	if err := m.checkPath("target path", target, v, pl, infos); err != nil {
		return err
	}
	if req.SingleWriter {
		var others []string
		for _, p := range pl.mounts {
			if p != target && !(b.MountsAtStaging(v) && p == staging) {
				others = append(others, p)
			}
		}
		if len(others) > 0 {
			return fmt.Errorf("%w: volume %q is ReadWriteOncePod (single writer) and already published at %s", ErrInUse, v.ID, strings.Join(others, ", "))
		}
	}
	if err := checkMountable("target path", target, v.AccessType); err != nil {
		return err
	}
	source, err := b.PublishSource(dir, v, staging)
	if err != nil {
		return err
	}
	if err := makeTarget(target, v.AccessType); err != nil {
		return err
	}
	opts := []string{"bind"}
	if req.ReadOnly {
		opts = append(opts, "ro")
	}
	opts = append(opts, req.MountFlags...)
	if err := m.env.mounter.Mount(source, target, "", opts); err != nil {
		return fmt.Errorf("bind-mount volume %q at %s: %w", v.ID, target, err)
	}
	return nil
}

// checkStaged checks the staging path of a publish: for a loop Filesystem
// volume it must be the volume's own staging mount (its source is the
// volume's loop device); a loop Block volume must have its device.
func checkStaged(b backend, v *Volume, pl placement, staging string) error {
	switch {
	case b.MountsAtStaging(v) && pl.has(staging):
		return nil
	case b.MountsAtStaging(v) && len(pl.mounts) == 0:
		return fmt.Errorf("%w: volume %q is not staged on this node (nothing is mounted at %s)", ErrNotStaged, v.ID, staging)
	case b.MountsAtStaging(v):
		return fmt.Errorf("%w: volume %q is not staged at %s; it is staged and published at %s", ErrWrongPath, v.ID, staging, pl.describe())
	case v.AccessType == AccessBlock && len(pl.devices) == 0:
		return fmt.Errorf("%w: block volume %q is not staged on this node (no loop device is bound to its image)", ErrNotStaged, v.ID)
	}
	return nil
}

func makeTarget(target string, a AccessType) error {
	if a == AccessMount {
		return os.MkdirAll(target, 0o750)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// UnpublishVolume unmounts the volume from the target and removes the
// directory or file NodePublish made there. Idempotent: a missing target,
// or an empty one left by a crash between unmount and removal, is fine. A
// volume unknown here is ErrNotFound and a target that is not the volume's
// (a mount of something else, a non-empty path) is ErrWrongPath: in both
// cases nothing is touched.
func (m *Manager) UnpublishVolume(_ context.Context, id, targetPath string) error {
	v, b, dir, err := m.volumeOp(id)
	if err != nil {
		return err
	}
	target := resolveParent(targetPath)
	pl, infos, err := m.where(b, dir, v)
	if err != nil {
		return err
	}
	if err := m.checkPath("target path", target, v, pl, infos); err != nil {
		return err
	}
	if pl.has(target) {
		if err := m.unmountOwn(b, dir, v, target); err != nil {
			return err
		}
	}
	return removeTarget(v, target)
}

// checkVolumePathExists refuses a volume_path of NodeGetVolumeStats or
// NodeExpandVolume that cannot be where a volume is (ErrNotFound, as the
// spec says for "no volume at this path"): relative or absent.
func checkVolumePathExists(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%w: volume_path %q is not an absolute path, so no volume is published there", ErrNotFound, p)
	}
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: volume_path %q does not exist", ErrNotFound, p)
	}
	return nil
}

// checkVolumePath checks the volume_path of NodeGetVolumeStats and
// NodeExpandVolume: it must be where the volume is mounted (a publish
// target, or a loop Filesystem volume's staging mount). For backends that
// mount nothing at staging, the kubelet also expands right after NodeStage
// at the staging path, which is then the empty, unmounted staging directory
// named by stagingPath. Anything else is ErrNotFound, as the spec says.
func (m *Manager) checkVolumePath(v *Volume, b backend, dir volumeDir, volumePath, stagingPath string) error {
	if err := checkVolumePathExists(volumePath); err != nil {
		return err
	}
	p := resolveParent(volumePath)
	if m.showsVolume(b, dir, v, p) {
		return nil
	}
	pl, infos, err := m.where(b, dir, v)
	if err != nil {
		return err
	}
	if pl.has(p) {
		return nil
	}
	if !b.MountsAtStaging(v) && p == resolveParent(stagingPath) && mountAt(infos, p) == nil {
		if empty, err := isEmptyDir(p); err == nil && empty {
			return nil
		}
	}
	return fmt.Errorf("%w: volume %q is not published at %s; it is published at %s", ErrNotFound, v.ID, volumePath, pl.describe())
}

// showsVolume is checkVolumePath's fast path, which kubelet's periodic
// stats take: the backend may know without the mount table that a path
// outside every pool shows the volume (see backend.Shows).
func (m *Manager) showsVolume(b backend, dir volumeDir, v *Volume, p string) bool {
	for _, pool := range m.pools {
		if mountinfo.Within(p, pool.Path) {
			return false
		}
	}
	return b.Shows(dir, v, p)
}

// VolumeAllocated is how many bytes of its pool's filesystem a volume
// occupies by its backend's own account, without a volume path (what
// metrics report): btrfs qgroup referenced bytes, a loop image's allocated
// blocks, the project quota's charged bytes. accounted is false, with no
// error, for a backend that keeps no such account (dir).
func (m *Manager) VolumeAllocated(id string) (bytes int64, accounted bool, err error) {
	v, b, dir, err := m.volumeOp(id)
	if err != nil {
		return 0, false, err
	}
	n, err := b.Allocated(dir, v)
	switch {
	case errors.Is(err, errNoAccount):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("volume %q: %w", v.ID, err)
	}
	return n, true, nil
}

// VolumeStats reports a volume's space from its backend's accounting
// (NodeGetVolumeStats). volumePath, if not empty, must be where the volume
// is (see checkVolumePath); stagingPath is the request's, if any.
func (m *Manager) VolumeStats(id, volumePath, stagingPath string) (*Volume, Usage, error) {
	v, b, dir, err := m.volumeOp(id)
	if err != nil {
		return nil, Usage{}, err
	}
	if volumePath != "" {
		if err := m.checkVolumePath(v, b, dir, volumePath, stagingPath); err != nil {
			return nil, Usage{}, err
		}
	}
	u, err := b.Usage(dir, v, volumePath)
	return v, u, err
}

// checkStageFsType checks the fs_type a NodeStage asks for against the
// volume's filesystem. CreateVolume made the volume with the fs_type its
// request named (an image of it where the pool's filesystem is another),
// so they differ only for a volume whose request named none or another
// (a static PV, or a native volume made before dhpp honoured fsType). An
// image volume has exactly its recorded filesystem: another is refused. A
// native volume is served as it is, as it always was, with a warning: its
// data is there and refusing would strand it.
func (m *Manager) checkStageFsType(v *Volume, want string) error {
	if want == "" || v.AccessType == AccessBlock {
		return nil
	}
	have := m.byName[v.Pool].volumeFsType(v)
	switch {
	case have == "" || want == have:
		return nil
	case v.FsType != "":
		return fmt.Errorf("%w: volume %q is an %s volume and cannot be staged as %s", ErrInvalid, v.ID, have, want)
	}
	klog.InfoS("Staging a volume whose filesystem differs from the requested fs_type; it was made in its pool's native form",
		"volume", v.ID, "fsType", have, "requested", want)
	return nil
}
