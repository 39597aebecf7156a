package node

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dhpp-io/dhpp/pkg/node/btrfs"
	"github.com/dhpp-io/dhpp/pkg/node/loopdev"
	"github.com/dhpp-io/dhpp/pkg/node/treecopy"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// What each backend does for a snapshot and for a restore or clone (the
// method is chosen at run time, logged, and kept in the snapshot's record):
//
//	btrfs        Snapshot: a read-only snapshot of the data subvolume, O(1),
//	             atomic. CreateFrom: a writable snapshot of the source's
//	             subvolume, its qgroup limit set before the volume exists.
//	xfs, ext4,   Snapshot and CreateFrom: the data tree copied file by file
//	dir          (treecopy): each file reflinked where the filesystem can
//	             (XFS with reflink=1, or a dir pool on btrfs/XFS), else copied
//	             keeping holes, owners, modes, xattrs and times. The copy runs
//	             without the volume's lock. The new volume (xfs, ext4) has its
//	             own project id and limit before anything is copied into it;
//	             a snapshot's files belong to no dhpp project.
//	loop         Snapshot and CreateFrom: the image reflinked (FICLONE) on
//	             btrfs, else copied keeping holes (see canReflink for XFS). A staged
//	             Filesystem volume is frozen (FIFREEZE) for the capture, so the
//	             snapshot is a clean filesystem with every write acknowledged
//	             before it. A staged Block volume is refused on a pool that
//	             cannot reflink (a copy of a device being written is torn).

// snapResult is what a backend's Snapshot made.
type snapResult struct {
	method string
	// stored is what the snapshot occupies on disk (see Snapshot.StoredBytes).
	stored      int64
	subvolumeID uint64
}

// btrfs: subvolume snapshots.

func (b *btrfsBackend) Snapshot(_ context.Context, dir volumeDir, v *Volume, snap volumeDir, _ func()) (snapResult, error) {
	id, err := b.snapshotInto(path.Join(dir.rel, dataName), snap, true)
	if err != nil {
		return snapResult{}, err
	}
	stored, _ := b.Allocated(dir, v) // the source's referenced bytes: what the snapshot refers to
	return snapResult{method: MethodBtrfs, stored: stored, subvolumeID: id}, nil
}

// CreateFrom makes the volume a writable snapshot of the source's data
// subvolume and limits it to the volume's size before it is handed out.
func (b *btrfsBackend) CreateFrom(_ context.Context, dir volumeDir, v *Volume, src volumeDir, _ *Volume, _ func()) (string, error) {
	id, err := b.snapshotInto(path.Join(src.rel, dataName), dir, false)
	if err != nil {
		return "", err
	}
	v.SubvolumeID = id
	sv, err := openNoSymlink(b.st, path.Join(dir.rel, dataName), unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return "", err
	}
	defer sv.Close()
	return MethodBtrfs, btrfs.SetLimit(sv, uint64(v.CapacityBytes))
}

// snapshotInto snapshots the subvolume srcRel as dst's data subvolume and
// returns the new subvolume's id.
func (b *btrfsBackend) snapshotInto(srcRel string, dst volumeDir, readOnly bool) (uint64, error) {
	src, err := openNoSymlink(b.st, srcRel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	if ok, err := btrfs.IsSubvolume(src); err != nil || !ok {
		return 0, fmt.Errorf("%w: %s in pool %q is not a btrfs subvolume (%v)", ErrWrongPath, srcRel, b.st.name, err)
	}
	parent, err := openNoSymlink(b.st, dst.rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return 0, err
	}
	defer parent.Close()
	if err := btrfs.Snapshot(src, parent, dataName, readOnly); err != nil {
		return 0, err
	}
	sv, err := openNoSymlink(b.st, path.Join(dst.rel, dataName), unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return 0, err
	}
	defer sv.Close()
	return btrfs.SubvolumeID(sv)
}

// Directory backends: a file-by-file copy.

func (b *projQuotaBackend) Snapshot(ctx context.Context, dir volumeDir, _ *Volume, snap volumeDir, release func()) (snapResult, error) {
	return snapshotTree(ctx, dir, snap, release)
}

func (b *dirBackend) Snapshot(ctx context.Context, dir volumeDir, _ *Volume, snap volumeDir, release func()) (snapResult, error) {
	return snapshotTree(ctx, dir, snap, release)
}

// CreateFrom makes the volume as Create does (its project id and limit in
// place first), then copies the source's tree into it.
func (b *projQuotaBackend) CreateFrom(ctx context.Context, dir volumeDir, v *Volume, src volumeDir, _ *Volume, release func()) (string, error) {
	if err := b.Create(ctx, dir, v); err != nil {
		return "", err
	}
	m, _, err := copyDataTree(ctx, src, dir, v.Name, release)
	return m, err
}

func (b *dirBackend) CreateFrom(ctx context.Context, dir volumeDir, v *Volume, src volumeDir, _ *Volume, release func()) (string, error) {
	if err := b.Create(ctx, dir, v); err != nil {
		return "", err
	}
	m, _, err := copyDataTree(ctx, src, dir, v.Name, release)
	return m, err
}

// snapshotTree copies a volume's data tree into a snapshot directory.
func snapshotTree(ctx context.Context, dir, snap volumeDir, release func()) (snapResult, error) {
	if err := snap.st.root.Mkdir(path.Join(snap.rel, dataName), 0o700); err != nil {
		return snapResult{}, err
	}
	m, st, err := copyDataTree(ctx, dir, snap, path.Base(dir.rel), release)
	if err != nil {
		return snapResult{}, err
	}
	return snapResult{method: m, stored: st.Bytes}, nil
}

// copyDataTree copies src's data directory into dst's (which exists).
// Both are opened with no symlink followed; then the source's lock is
// released, and the copy runs on the descriptors: a delete of the source
// meanwhile moves it to the trash, which does not disturb them.
func copyDataTree(ctx context.Context, src, dst volumeDir, what string, release func()) (string, treecopy.Stats, error) {
	s, err := openNoSymlink(src.st, path.Join(src.rel, dataName), unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return "", treecopy.Stats{}, err
	}
	defer s.Close()
	d, err := openNoSymlink(dst.st, path.Join(dst.rel, dataName), unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return "", treecopy.Stats{}, err
	}
	defer d.Close()
	release()
	start := time.Now()
	st, m, err := treecopy.Tree(ctx, d, s, treecopy.Options{Progress: func(st treecopy.Stats) {
		klog.InfoS("Copying volume data", "pool", src.st.name, "from", src.rel, "to", what, "files", st.Files, "bytes", st.Bytes, "elapsed", time.Since(start).Round(time.Second))
	}})
	if err != nil {
		return "", st, fmt.Errorf("copy %s to %s: %w", src.rel, what, err)
	}
	method := MethodCopy
	if m == treecopy.Reflink {
		method = MethodReflink
	}
	klog.InfoS("Copied volume data", "pool", src.st.name, "from", src.rel, "to", what, "method", method,
		"files", st.Files, "dirs", st.Dirs, "bytes", st.Bytes, "reflinked", st.Reflinked, "skippedXattrs", st.SkippedXattrs, "duration", time.Since(start))
	return method, st, nil
}

// loop: the image, reflinked or copied.

// Snapshot clones the volume's image into snap (see captureImage).
func (b *loopBackend) Snapshot(ctx context.Context, dir volumeDir, v *Volume, snap volumeDir, _ func()) (snapResult, error) {
	m, err := b.captureImage(ctx, dir, v, snap)
	if err != nil {
		return snapResult{}, err
	}
	stored, _ := b.Allocated(snap, v)
	return snapResult{method: m, stored: stored}, nil
}

// CreateFrom clones the source's image (a snapshot's, or a volume's as
// Snapshot captures it) and grows it to the volume's size; the filesystem
// inside grows at the first Stage, as after an offline expansion.
func (b *loopBackend) CreateFrom(ctx context.Context, dir volumeDir, v *Volume, src volumeDir, srcVol *Volume, release func()) (string, error) {
	var m string
	var err error
	if isSnapshotDir(src) {
		release() // a snapshot's image never changes
		var img *os.File
		if img, err = openImage(src, os.O_RDONLY); err != nil {
			return "", err
		}
		m, err = cloneImage(ctx, img, dir, canReflink(img))
		img.Close()
	} else {
		m, err = b.captureImage(ctx, src, srcVol, dir)
	}
	if err != nil {
		return "", err
	}
	f, err := openImage(dir, os.O_RDWR)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := f.Truncate(v.CapacityBytes); err != nil {
		return "", err
	}
	if v.Preallocated {
		// The copy kept the source's holes; the new image is not
		// attached yet, so filling them changes nothing but where its
		// blocks are allocated.
		return m, fillHoles(context.WithoutCancel(ctx), f)
	}
	return m, nil
}

// captureImage clones the image of volume v (in dir) into dst. A staged
// Filesystem volume is frozen for the clone; the caller holds the volume's
// lock throughout (a frozen filesystem must not be unmounted, and an
// unstaged image must not be staged and written halfway through a copy).
func (b *loopBackend) captureImage(ctx context.Context, dir volumeDir, v *Volume, dst volumeDir) (string, error) {
	img, err := openImage(dir, os.O_RDONLY)
	if err != nil {
		return "", err
	}
	defer img.Close()
	devs, err := loopdev.FindFile(img)
	if err != nil {
		return "", err
	}
	reflink := canReflink(img)
	if len(devs) > 0 && v.AccessType == AccessBlock && !reflink {
		return b.copyIdleDevice(ctx, img, v, dst, devs)
	}
	if v.AccessType == AccessMount {
		for _, dev := range devs {
			if mp := b.mountPointOf(dev); mp != "" {
				thaw, err := freeze(dst, mp)
				if err != nil {
					return "", err
				}
				defer thaw()
				break
			}
		}
	}
	return cloneImage(ctx, img, dst, reflink)
}

// copyIdleDevice copies the image of an attached Block volume on a pool
// that cannot reflink it. There is no filesystem of dhpp's on the device to
// freeze, and a copy of a device being written would be torn, so the
// device is watched instead: the copy stands only if no write or discard
// was in flight when it began and none completed or was in flight when it
// ended (the loop device's counters in /sys/block). It is then the image at
// an instant, as a crash would have left it. Otherwise the copy is thrown
// away with ErrBusy (Aborted), which the sidecars retry: a device idle for
// the length of a copy is what a clone or snapshot of a volume in use waits for.
func (b *loopBackend) copyIdleDevice(ctx context.Context, img *os.File, v *Volume, dst volumeDir, devs []string) (string, error) {
	busy := func(when string) error {
		return fmt.Errorf("%w: block volume %q is attached (%s) and was being written %s the copy of its image, which pool %q cannot reflink; "+
			"the copy was discarded (it would be torn) and is retried: it succeeds once the device is idle for the copy's length, or when the pods using it stop",
			ErrBusy, v.ID, devs[0], when, b.st.name)
	}
	before, err := deviceWrites(devs)
	if err != nil {
		return "", err
	}
	if before.inFlight > 0 {
		return "", busy("at the start of")
	}
	m, err := cloneImage(ctx, img, dst, false)
	if err != nil {
		return "", err
	}
	after, err := deviceWrites(devs)
	if err != nil {
		return "", err
	}
	if after != before {
		return "", busy("during")
	}
	return m, nil
}

// writeCounters are a block device's completed writes and discards and
// its requests in flight (/sys/block/<dev>/stat), summed over devices.
type writeCounters struct{ writes, discards, inFlight uint64 }

func deviceWrites(devs []string) (writeCounters, error) {
	var c writeCounters
	for _, dev := range devs {
		name := filepath.Base(dev)
		raw, err := os.ReadFile(filepath.Join("/sys/block", name, "stat"))
		if err != nil {
			return c, fmt.Errorf("read the I/O counters of %s: %w", dev, err)
		}
		f := strings.Fields(string(raw))
		if len(f) < 9 {
			return c, fmt.Errorf("read the I/O counters of %s: %d fields in %q", dev, len(f), raw)
		}
		num := func(i int) uint64 {
			if i >= len(f) {
				return 0 // discard fields: kernels before 4.18 lack them
			}
			n, _ := strconv.ParseUint(f[i], 10, 64)
			return n
		}
		c.writes += num(4)    // write I/Os completed
		c.inFlight += num(8)  // I/Os in flight
		c.discards += num(11) // discard I/Os completed
	}
	return c, nil
}

// isSnapshotDir reports whether d is a snapshot's directory (or one being
// built), not a volume's.
func isSnapshotDir(d volumeDir) bool {
	return path.Dir(d.rel) == dirSnapshots || strings.HasPrefix(path.Base(d.rel), snapTrashPrefix)
}

// cloneImage makes dst's image a clone of img: FICLONE if reflink, else a
// copy keeping holes. The new image is NOCOW on btrfs like every image.
func cloneImage(ctx context.Context, img *os.File, dst volumeDir, reflink bool) (string, error) {
	f, err := dst.st.root.OpenFile(path.Join(dst.rel, imageName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := setNoCOW(f); err != nil {
		return "", err
	}
	start := time.Now()
	// copy_file_range would share extents on XFS (see canReflink); on
	// ext4 it is an in-kernel copy.
	kind, _ := fsTypeOf(img)
	m, n, err := treecopy.Clone(ctx, f, img, reflink, kind != "xfs")
	if err != nil {
		return "", fmt.Errorf("clone image %s: %w", img.Name(), err)
	}
	method := MethodCopy
	if m == treecopy.Reflink {
		method = MethodReflink
	}
	klog.InfoS("Cloned volume image", "pool", dst.st.name, "from", img.Name(), "to", dst.rel, "method", method, "bytes", n, "duration", time.Since(start))
	return method, nil
}

// canReflink reports whether an image on img's filesystem may share
// extents with its clone: on btrfs only. XFS can reflink, but then reports
// its block size (4 KiB) as the direct-I/O alignment of both files, so
// their loop devices get 4 KiB logical blocks and an ext4 with 1 KiB
// blocks (mkfs's choice below 512 MiB) no longer mounts ("bad block size
// 1024", seen in TestSnapshotRestoreClone): images on XFS are copied
// (sparse), with no extent shared. btrfs images are NOCOW files, which
// keep a 512-byte alignment.
func canReflink(img *os.File) bool {
	kind, err := fsTypeOf(img)
	return err == nil && kind == btrfsFsType
}

// FIFREEZE and FITHAW (linux/fs.h: _IOWR('X', 119/120, int)).
const (
	ioctlFIFREEZE = 0xc0045877
	ioctlFITHAW   = 0xc0045878
)

// frozenMarker, in a snapshot or restore being built, names the mount point
// frozen for it: if the driver dies before thawing, recovery thaws it.
const frozenMarker = "frozen"

// freeze freezes the filesystem mounted at mp (flushing every write
// acknowledged so far and blocking new ones) and returns its thaw. The
// mount point is written to dst's frozenMarker first.
func freeze(dst volumeDir, mp string) (func(), error) {
	if err := dst.st.root.WriteFile(path.Join(dst.rel, frozenMarker), []byte(mp), 0o600); err != nil {
		return nil, err
	}
	if err := mountIoctl(mp, ioctlFIFREEZE); err != nil {
		return nil, fmt.Errorf("freeze %s: %w", mp, err)
	}
	start := time.Now()
	return func() {
		if err := mountIoctl(mp, ioctlFITHAW); err != nil {
			klog.ErrorS(err, "Thawing a filesystem frozen for a snapshot", "mountPoint", mp)
		}
		_ = dst.st.root.Remove(path.Join(dst.rel, frozenMarker))
		klog.V(2).InfoS("Filesystem thawed", "mountPoint", mp, "frozenFor", time.Since(start))
	}, nil
}

// mountIoctl runs FIFREEZE or FITHAW on the filesystem mounted at mp. The
// freeze outlives the descriptor, so none is kept open: a descriptor on a
// volume's mount, even for the length of a copy, makes a concurrent
// NodeUnstage fail with "target is busy" — and not only while the driver
// holds it: a child forked meanwhile (mount, mkfs, e2fsck of another
// volume) holds a copy until its exec, which on a loaded node can be tens
// of milliseconds after the driver's own close. syscall.ForkLock read-held
// from open to close keeps every fork out of that window.
func mountIoctl(mp string, req uint) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fd, err := unix.Open(mp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.IoctlSetInt(fd, req, 0)
}

// thawLeftover thaws the filesystem a crashed snapshot or restore froze
// (the frozenMarker in the interrupted entry dir); EINVAL means it is not
// frozen any more.
func thawLeftover(root *os.Root, dir string) {
	mp, err := root.ReadFile(path.Join(dir, frozenMarker))
	if err != nil {
		return
	}
	if err := mountIoctl(string(mp), ioctlFITHAW); err == nil {
		klog.InfoS("Thawed the filesystem an interrupted snapshot froze", "mountPoint", string(mp))
	} else if err != unix.EINVAL {
		klog.ErrorS(err, "Cannot thaw the filesystem an interrupted snapshot froze", "mountPoint", string(mp))
	}
}
