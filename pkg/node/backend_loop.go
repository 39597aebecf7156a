package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dhpp-io/dhpp/pkg/node/loopdev"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
)

// loopBackend carves a volume as a sparse image file. A Filesystem volume
// gets its own filesystem (ext4 by default, xfs on request) made at
// creation; NodeStage attaches the image to a loop device and mounts it at
// the staging path. A Block volume is the loop device itself. The size is
// enforced by the image's size on any host filesystem; on btrfs the image
// is NOCOW (setNoCOW).
//
// The image machinery (openImage, imageDevices, and the staging, growing
// and detaching below) works on any volumeDir of any pool: a directory
// backend that serves Block or a foreign fsType through an image file in
// the volume's directory composes it rather than being a loop pool.
type loopBackend struct {
	st *store
	// fsType is the filesystem of Filesystem volumes whose request names
	// none: the pool's configured one, else defaultLoopFsType.
	fsType string
}

// Default and accepted filesystems inside loop images.
const defaultLoopFsType = "ext4"

var loopFsTypes = map[string]struct {
	minSize int64
	mkfs    []string // arguments before the image path
	// mkfsPreallocated, if set, replaces mkfs for a preallocated image,
	// which is written through right after (preallocateImage).
	mkfsPreallocated []string
}{
	// -m 0: no root reserve, the volume has one consumer. Inode tables are
	// initialised lazily (the kernel zeroes them in the background), but
	// the journal is not: with lazy_journal_init=0 mke2fs zeroes it, on an
	// image file with fallocate(ZERO_RANGE), so its blocks are allocated
	// in the image at creation. Otherwise every journal block is a hole
	// that a new volume's first commits fill, each fsync paying an
	// allocation in the pool's filesystem too. The measured gain is small
	// (the zeroed range is unwritten extents, whose first writes are still
	// converted; docs/benchmarks.md, "What lowers the translog cost of
	// loop volumes") and the cost nil; durability is the same either way.
	// fast_commit is not turned on: mke2fs does not enable it by default
	// and it changes how the journal is replayed after a crash.
	//
	// A preallocated image (written through after mkfs) is made with
	// assume_storage_prezeroed=1 (e2fsprogs >= 1.47): true of a new image,
	// whose holes read as zeros, it makes mke2fs skip zeroing the journal
	// and inode tables and mark them zeroed, so neither mke2fs
	// (ZERO_RANGE: unwritten extents) nor the kernel's lazy inode-table
	// init (WRITE_ZEROES, which the loop device turns into punched holes:
	// 16 MiB per GiB measured) undoes the write-through.
	"ext4": {16 << 20, []string{"mkfs.ext4", "-F", "-q", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=0,nodiscard"},
		[]string{"mkfs.ext4", "-F", "-q", "-m", "0", "-E", "assume_storage_prezeroed=1,nodiscard"}},
	// xfsprogs >= 5.19 refuses filesystems below 300 MiB.
	"xfs": {300 << 20, []string{"mkfs.xfs", "-f", "-q", "-K"}, nil},
}

func newLoopBackend(st *store, cfg PoolConfig) backend {
	return &loopBackend{st: st, fsType: cmp.Or(cfg.FsType, defaultLoopFsType)}
}

func (*loopBackend) Kind() BackendKind        { return BackendLoop }
func (*loopBackend) Enforced() bool           { return true }
func (*loopBackend) Supports(AccessType) bool { return true }

// Open checks that this node has loop devices.
func (*loopBackend) Open() error {
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("%w: loop devices are not available (/dev/loop-control: %v)", ErrUnsupported, err)
	}
	return nil
}

// Resolve: a Block volume is the bare image; a Filesystem volume gets the
// requested filesystem, else the pool's default, and at least its minimum
// size.
func (b *loopBackend) Resolve(a AccessType, fsType string) (string, int64, error) {
	if a == AccessBlock {
		return "", sizeGranularity, nil
	}
	fsType = cmp.Or(fsType, b.fsType)
	if err := ValidateLoopFsType(fsType); err != nil {
		return "", 0, err
	}
	return fsType, loopFsTypes[fsType].minSize, nil
}

func (*loopBackend) MountsAtStaging(v *Volume) bool { return v.AccessType == AccessMount }

// Shows: a loop volume is shown by mounts of its device, found only in the
// mount table.
func (*loopBackend) Shows(volumeDir, *Volume, string) bool { return false }

// ValidateLoopFsType checks a filesystem type requested for a loop volume.
func ValidateLoopFsType(fsType string) error {
	if _, ok := loopFsTypes[fsType]; !ok {
		return fmt.Errorf("%w: fsType %q is not supported by the loop backend (want ext4 or xfs)", ErrInvalid, fsType)
	}
	return nil
}

func (b *loopBackend) Create(ctx context.Context, dir volumeDir, v *Volume) error {
	if v.Preallocated {
		// Writing a large image through outlasts csi-provisioner's
		// timeout (10 s by default), which cancels ctx; its retries
		// find the volume locked (Aborted) until this finishes, and then
		// complete. Stopping at the cancel instead would throw the work
		// away and start it again at every retry, never finishing.
		ctx = context.WithoutCancel(ctx)
	}
	rel := path.Join(dir.rel, imageName)
	f, err := dir.st.root.OpenFile(rel, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = setNoCOW(f) // on btrfs; while the image is still empty
	if err == nil {
		err = f.Truncate(v.CapacityBytes)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("make image: %w", err)
	}
	if v.AccessType == AccessMount {
		spec, ok := loopFsTypes[v.FsType] // Resolve applied the default and checked it
		if !ok {
			return ValidateLoopFsType(v.FsType)
		}
		mkfs := spec.mkfs
		if v.Preallocated && spec.mkfsPreallocated != nil {
			mkfs = spec.mkfsPreallocated
		}
		args := append(append([]string{}, mkfs[1:]...), dir.abs(imageName))
		if out, err := b.st.exec.CommandContext(ctx, mkfs[0], args...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", mkfs[0], err, strings.TrimSpace(string(out)))
		}
	}
	if !v.Preallocated {
		return nil
	}
	return preallocateImage(ctx, dir)
}

// preallocateImage writes through every block of a new image that mkfs
// left unwritten (all of a Block volume's). Filling holes after mkfs,
// not before it, is what leaves none: mkfs.xfs zeroes its log with
// fallocate(ZERO_RANGE), which turns written blocks back into unwritten
// extents. Writing zeros where the file reads zeros changes nothing of its
// content; the image is not attached yet, so nothing else writes to it.
func preallocateImage(ctx context.Context, dir volumeDir) error {
	f, err := openImage(dir, os.O_RDWR)
	if err != nil {
		return err
	}
	defer f.Close()
	return fillHoles(ctx, f)
}

// Resize grows the image; if it is attached, the loop device learns the new
// size and a mounted filesystem is grown online. A volume that is not staged
// has its filesystem grown at the next Stage.
func (b *loopBackend) Resize(ctx context.Context, dir volumeDir, v *Volume, newSize int64) error {
	f, err := openImage(dir, os.O_RDWR)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err == nil && st.Size() < newSize {
		err = f.Truncate(newSize)
		if err == nil && v.Preallocated {
			// The new part only: the old one may be attached and
			// written to. Nothing sees the new part before the loop
			// device is refreshed below. Outlasting the caller's
			// timeout is as at creation (see Create). A crash before
			// the end leaves the rest sparse: slower, never wrong.
			err = writeThrough(context.WithoutCancel(ctx), f, st.Size(), newSize)
		}
	}
	if err != nil {
		return fmt.Errorf("grow image: %w", err)
	}
	devs, err := loopdev.FindFile(f)
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if err := loopdev.Refresh(dev); err != nil {
			return err
		}
		if v.AccessType == AccessMount {
			if mp := b.mountPointOf(dev); mp != "" {
				if err := b.growFs(dev, mp, v.FsType); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// mountPointOf finds where a loop device is mounted, if anywhere.
func (b *loopBackend) mountPointOf(dev string) string {
	infos, err := readMountTable(b.st.mountInfoPath)
	if err != nil {
		return ""
	}
	if mps := mountsOfDevice(infos, dev); len(mps) > 0 {
		return mps[0]
	}
	return ""
}

// mountsOfDevice lists the mounts of the filesystem on a block device (by
// device number: the mount's source string is whatever name mount was given).
func mountsOfDevice(infos []mount.MountInfo, dev string) []string {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil
	}
	var out []string
	for _, mi := range infos {
		if uint32(mi.Major) == unix.Major(st.Rdev) && uint32(mi.Minor) == unix.Minor(st.Rdev) {
			out = append(out, mi.MountPoint)
		}
	}
	return out
}

// bindsOfDevice lists the bind mounts of a block device's node (a Block
// volume's publish targets): mount points that are that very device.
func bindsOfDevice(infos []mount.MountInfo, dev string) []string {
	var want unix.Stat_t
	if err := unix.Stat(dev, &want); err != nil {
		return nil
	}
	var out []string
	for _, mi := range infos {
		if path.Base(mi.Root) != filepath.Base(dev) {
			continue // cheap filter: a bind of /dev/loopN has root .../loopN
		}
		var st unix.Stat_t
		if unix.Stat(mi.MountPoint, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == want.Rdev {
			out = append(out, mi.MountPoint)
		}
	}
	return out
}

// openImage opens the volume's image with no symlink followed (see
// openNoSymlink): the loop device is bound to this descriptor, never to
// whatever the path names.
func openImage(dir volumeDir, flag int) (*os.File, error) {
	return openRegularNoSymlink(dir.st, path.Join(dir.rel, imageName), flag)
}

// Allocated is the image's allocated blocks: sparse images occupy only
// what their filesystem has written.
func (b *loopBackend) Allocated(dir volumeDir, _ *Volume) (int64, error) {
	st, err := dir.st.root.Lstat(path.Join(dir.rel, imageName))
	if err != nil {
		return 0, err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512, nil
	}
	return 0, nil
}

func (b *loopBackend) Usage(dir volumeDir, v *Volume, volumePath string) (Usage, error) {
	if v.AccessType == AccessBlock || volumePath == "" {
		return Usage{TotalBytes: v.CapacityBytes}, nil
	}
	return statfsUsage(volumePath)
}

// Destroy checks that no loop device is bound to the image. Anything in
// place of the image that is not a plain file (a planted symlink) has no
// device of dhpp's and is removed as itself.
func (b *loopBackend) Destroy(_ context.Context, dir volumeDir) error {
	devs, err := imageDevices(dir)
	if err != nil {
		return err
	}
	if len(devs) > 0 {
		return fmt.Errorf("%w: image %s is still attached to %s", ErrInUse, dir.abs(imageName), strings.Join(devs, ", "))
	}
	return nil
}

// imageDevices lists the loop devices bound to the volume's image; none if
// there is no image, or something other than a plain file in its place.
func imageDevices(dir volumeDir) ([]string, error) {
	img, err := openImage(dir, os.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrWrongPath) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return loopdev.FindFile(img)
}

// Stage binds the image, opened with no symlink followed, to a loop device
// by descriptor. A Filesystem volume is then mounted at stagingPath, which
// the caller checked is free, or already this volume's staging mount.
func (b *loopBackend) Stage(ctx context.Context, dir volumeDir, v *Volume, stagingPath string, mountFlags []string) error {
	img, err := openImage(dir, os.O_RDWR)
	if err != nil {
		return err
	}
	defer img.Close()
	devs, err := loopdev.FindFile(img)
	if err != nil {
		return err
	}
	if v.AccessType == AccessBlock {
		return b.stageBlock(img, v, devs)
	}
	if dev := b.sourceOf(stagingPath); dev != "" {
		return b.catchUpStaged(dev, stagingPath, v) // staged already
	}
	if err := os.MkdirAll(stagingPath, 0o750); err != nil {
		return err
	}
	f, err := b.openDevice(img, devs)
	if err != nil {
		return err
	}
	dev := f.Name()
	err = b.growOffline(ctx, dir, dev, v.FsType)
	if err == nil {
		err = b.st.mounter.Mount(dev, stagingPath, v.FsType, imageMountOptions(v.FsType, mountFlags))
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("mount %s (%s) at %s: %w", img.Name(), dev, stagingPath, err)
	}
	if err := b.initRoot(stagingPath, v); err != nil {
		return err
	}
	if dev := b.sourceOf(stagingPath); dev != "" {
		return b.growFs(dev, stagingPath, v.FsType)
	}
	return nil
}

// imageMountOptions are the options a volume's image filesystem is mounted
// with: the request's, plus "nouuid" for XFS. A restore or clone is a copy
// (or reflink) of its source's image, superblock UUID included, and XFS
// refuses to mount a second filesystem whose UUID is already mounted on the
// host ("Filesystem has duplicate UUID", seen with the upstream suite's
// "volume and its clone from pods on the same node"). Cloud CSI drivers
// mount XFS volumes restored from snapshots the same way. ext4 has no such
// check.
func imageMountOptions(fsType string, flags []string) []string {
	if fsType != "xfs" || slices.Contains(flags, "nouuid") {
		return flags
	}
	return append(slices.Clip(flags), "nouuid")
}

// loopReleaseTimeout bounds how long Unstage and Stage wait for a detached
// loop device that another process still has open to be released.
var loopReleaseTimeout = 5 * time.Second

// stageBlock makes sure a live loop device is bound to a Block volume's
// image. dhpp binds Block images without AutoClear, so a device of the
// image that has it is one an Unstage detached while someone had it open:
// it goes at that process's last close, and must not be taken for staged.
// Stage waits for it to go, then binds a fresh one (also if it lingers).
func (b *loopBackend) stageBlock(img *os.File, v *Volume, devs []string) error {
	live, releasing := splitReleasing(devs)
	if len(live) > 0 {
		return nil
	}
	for _, dev := range releasing {
		if err := loopdev.WaitReleased(dev, img, loopReleaseTimeout); err != nil {
			klog.InfoS("Loop device being released is still held open; binding a fresh one", "volume", v.ID, "device", dev, "err", err)
		}
	}
	f, err := loopdev.AttachFile(img, loopdev.Options{DirectIO: true})
	if err != nil {
		return err
	}
	return f.Close()
}

// splitReleasing separates a Block volume's devices that are being
// released (see stageBlock) from the live ones.
func splitReleasing(devs []string) (live, releasing []string) {
	for _, dev := range devs {
		if loopdev.Releasing(dev) {
			releasing = append(releasing, dev)
		} else {
			live = append(live, dev)
		}
	}
	return live, releasing
}

// openDevice returns a loop device bound to img, open: one found unmounted
// (left by an interrupted stage) is reused rather than binding a second
// device to the same image. A new one is AutoClear: it detaches itself when
// the filesystem is unmounted, so a crash between unmount and detach leaks
// nothing; the open descriptor keeps it bound until the mount holds it.
func (b *loopBackend) openDevice(img *os.File, devs []string) (*os.File, error) {
	if len(devs) > 0 {
		return os.OpenFile(devs[0], os.O_RDWR, 0)
	}
	return loopdev.AttachFile(img, loopdev.Options{DirectIO: true, AutoClear: true})
}

// initRoot applies the volume's mode to the root of a filesystem that has
// never been used (mkfs leaves it 0755 with only lost+found), and leaves
// it alone afterwards: after first use the pod owns the permissions.
func (b *loopBackend) initRoot(mountPoint string, v *Volume) error {
	entries, err := os.ReadDir(mountPoint)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() != "lost+found" {
			return nil
		}
	}
	return os.Chmod(mountPoint, v.Mode)
}

func (b *loopBackend) sourceOf(mountPoint string) string {
	infos, err := readMountTable(b.st.mountInfoPath)
	if err != nil {
		return ""
	}
	for _, mi := range infos {
		if mi.MountPoint == mountPoint && strings.HasPrefix(mi.Source, "/dev/loop") {
			return mi.Source
		}
	}
	return ""
}

// Unstage detaches the image's loop devices that nothing mounts any more
// (the caller unmounted the staging mount; Block volumes have none).
func (b *loopBackend) Unstage(_ context.Context, dir volumeDir, v *Volume, _ string) error {
	img, err := openImage(dir, os.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrWrongPath) {
		return nil // no image of the volume's, so no device of dhpp's
	}
	if err != nil {
		return err
	}
	defer img.Close()
	devs, err := loopdev.FindFile(img)
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if b.mountPointOf(dev) != "" {
			continue // still mounted elsewhere; AutoClear detaches it later
		}
		// DetachBacking checks the binding on the same descriptor it
		// detaches through, so a device number reused by someone else is
		// left alone.
		if err := loopdev.DetachBacking(dev, img); err != nil {
			if !errors.Is(err, loopdev.ErrOtherBacking) {
				klog.ErrorS(err, "Detaching loop device", "volume", v.ID, "device", dev)
			}
			continue
		}
		// If another process has the device open (udev, or this
		// driver's own FindFile for another volume), LOOP_CLR_FD only
		// marks it autoclear; a Stage right after would find it still
		// bound and then see it vanish. Return only once it is gone.
		if err := loopdev.WaitReleased(dev, img, loopReleaseTimeout); err != nil {
			if h := holdersOf(dev); len(h) > 0 {
				err = fmt.Errorf("%w; open in %s", err, strings.Join(h, ", "))
			}
			return fmt.Errorf("%w: unstage volume %q: %v; retry when it is closed", ErrBusy, v.ID, err)
		}
	}
	return nil
}

// Placement of a loop volume: the devices bound to its image and, for a
// Filesystem volume, every mount of their filesystem (the staging mount and
// the binds of it); for a Block volume, the binds of their device nodes.
func (b *loopBackend) Placement(dir volumeDir, v *Volume, infos []mount.MountInfo) (placement, error) {
	devs, err := imageDevices(dir)
	if err != nil {
		return placement{}, err
	}
	pl := placement{devices: devs}
	for _, dev := range devs {
		if v.AccessType == AccessMount {
			pl.mounts = append(pl.mounts, mountsOfDevice(infos, dev)...)
		} else {
			pl.mounts = append(pl.mounts, bindsOfDevice(infos, dev)...)
		}
	}
	return pl, nil
}

// PublishSource: a Filesystem volume is bound from its staging mount (the
// caller checked it is the volume's), a Block volume from its loop device.
func (b *loopBackend) PublishSource(dir volumeDir, v *Volume, stagingPath string) (string, error) {
	if v.AccessType == AccessMount {
		return stagingPath, nil
	}
	all, err := imageDevices(dir)
	if err != nil {
		return "", err
	}
	devs, _ := splitReleasing(all)
	if len(devs) == 0 {
		return "", fmt.Errorf("%w: block volume %q is not staged on this node (no loop device)", ErrNotStaged, v.ID)
	}
	return devs[0], nil
}
