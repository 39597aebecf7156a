package btrfs

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ioctl interface of btrfs, transcribed from the kernel UAPI headers
// <linux/btrfs.h> and <linux/btrfs_tree.h>. Only what dhpp needs is here.
// The Go structs below have exactly the C layout on every 64-bit Linux
// architecture (all fields are naturally aligned, no implicit padding);
// ioctl_test.go checks their sizes and the computed request numbers against
// the values the C headers produce.

const ioctlMagic = 0x94

// ioctl request direction bits (asm-generic/ioctl.h).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

// ioc builds an ioctl request number the way the kernel's _IOC macro does.
func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

const (
	pathNameMax       = 4087 // BTRFS_PATH_NAME_MAX
	inoLookupPathMax  = 4080 // BTRFS_INO_LOOKUP_PATH_MAX
	searchArgsBufSize = 4096 - unsafe.Sizeof(searchKey{})

	// VolNameMax is the longest subvolume name btrfs accepts (BTRFS_VOL_NAME_MAX).
	VolNameMax = 255
)

// volArgs is struct btrfs_ioctl_vol_args.
type volArgs struct {
	fd   int64
	name [pathNameMax + 1]byte
}

// inoLookupArgs is struct btrfs_ioctl_ino_lookup_args.
type inoLookupArgs struct {
	treeID   uint64
	objectID uint64
	name     [inoLookupPathMax]byte
}

// searchKey is struct btrfs_ioctl_search_key. Keys are compared as the
// 136-bit number (objectid<<72 | type<<64 | offset): every item between
// (minObjectID, minType, minOffset) and (maxObjectID, maxType, maxOffset) is
// returned, not only items whose fields each lie in their own range.
type searchKey struct {
	treeID      uint64
	minObjectID uint64
	maxObjectID uint64
	minOffset   uint64
	maxOffset   uint64
	minTransID  uint64
	maxTransID  uint64
	minType     uint32
	maxType     uint32
	nrItems     uint32
	_           uint32
	_           [4]uint64
}

// searchArgs is struct btrfs_ioctl_search_args.
type searchArgs struct {
	key searchKey
	buf [searchArgsBufSize]byte
}

// searchHeader is struct btrfs_ioctl_search_header; one precedes each item
// in searchArgs.buf. It is in CPU byte order (it is built by the ioctl),
// while the item bodies after it are on-disk little-endian.
type searchHeader struct {
	transID  uint64
	objectID uint64
	offset   uint64
	typ      uint32
	length   uint32
}

const searchHeaderSize = int(unsafe.Sizeof(searchHeader{}))

// quotaCtlArgs is struct btrfs_ioctl_quota_ctl_args.
type quotaCtlArgs struct {
	cmd    uint64
	status uint64
}

// qgroupCreateArgs is struct btrfs_ioctl_qgroup_create_args.
type qgroupCreateArgs struct {
	create   uint64
	qgroupID uint64
}

// qgroupLimit is struct btrfs_qgroup_limit.
type qgroupLimit struct {
	flags   uint64
	maxRfer uint64
	maxExcl uint64
	rsvRfer uint64
	rsvExcl uint64
}

// qgroupLimitArgs is struct btrfs_ioctl_qgroup_limit_args.
type qgroupLimitArgs struct {
	qgroupID uint64
	lim      qgroupLimit
}

var (
	iocSync            = ioc(iocNone, ioctlMagic, 8, 0)
	iocSubvolCreate    = ioc(iocWrite, ioctlMagic, 14, unsafe.Sizeof(volArgs{}))
	iocSnapDestroy     = ioc(iocWrite, ioctlMagic, 15, unsafe.Sizeof(volArgs{}))
	iocTreeSearch      = ioc(iocRead|iocWrite, ioctlMagic, 17, unsafe.Sizeof(searchArgs{}))
	iocInoLookup       = ioc(iocRead|iocWrite, ioctlMagic, 18, unsafe.Sizeof(inoLookupArgs{}))
	iocQuotaCtl        = ioc(iocRead|iocWrite, ioctlMagic, 40, unsafe.Sizeof(quotaCtlArgs{}))
	iocQgroupCreate    = ioc(iocWrite, ioctlMagic, 42, unsafe.Sizeof(qgroupCreateArgs{}))
	iocQgroupLimit     = ioc(iocRead, ioctlMagic, 43, unsafe.Sizeof(qgroupLimitArgs{}))
	iocQuotaRescanWait = ioc(iocNone, ioctlMagic, 46, 0)
)

// Tree, key and flag values from <linux/btrfs_tree.h> and <linux/btrfs.h>.
const (
	quotaTreeObjectID = 8   // BTRFS_QUOTA_TREE_OBJECTID
	firstFreeObjectID = 256 // BTRFS_FIRST_FREE_OBJECTID: inode of a subvolume's root dir
	fsTreeObjectID    = 5   // BTRFS_FS_TREE_OBJECTID: the top-level subvolume

	qgroupStatusKey = 240 // BTRFS_QGROUP_STATUS_KEY
	qgroupInfoKey   = 242 // BTRFS_QGROUP_INFO_KEY
	qgroupLimitKey  = 244 // BTRFS_QGROUP_LIMIT_KEY

	qgroupStatusFlagOn     = 1 << 0 // BTRFS_QGROUP_STATUS_FLAG_ON
	qgroupStatusFlagSimple = 1 << 3 // BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE
	qgroupLimitMaxRfer     = 1 << 0 // BTRFS_QGROUP_LIMIT_MAX_RFER

	quotaCtlEnable       = 1 // BTRFS_QUOTA_CTL_ENABLE
	quotaCtlEnableSimple = 4 // BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA (kernel 6.7+)

	// limitClear as a max_rfer value tells the kernel to drop the limit
	// (CLEAR_VALUE in fs/btrfs/qgroup.c).
	limitClear = ^uint64(0)
)

// Sizes of the on-disk item bodies (little-endian, packed).
const (
	qgroupInfoItemSize  = 5 * 8
	qgroupLimitItemSize = 5 * 8
)

// ioctl issues one ioctl on f's descriptor. It goes through SyscallConn so
// that f cannot be closed underneath the call, and it returns the bare
// unix.Errno so callers can match it with errors.Is.
func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw conn of %s: %w", f.Name(), err)
	}
	var errno unix.Errno
	if cerr := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	}); cerr != nil {
		return fmt.Errorf("control %s: %w", f.Name(), cerr)
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// subvolNameMax is BTRFS_SUBVOL_NAME_MAX.
const subvolNameMax = 4039

// volArgsV2 is struct btrfs_ioctl_vol_args_v2 (the unions as their
// largest member: unused[4] and name).
type volArgsV2 struct {
	fd      int64
	transID uint64
	flags   uint64
	unused  [4]uint64
	name    [subvolNameMax + 1]byte
}

// subvolRdonly is BTRFS_SUBVOL_RDONLY.
const subvolRdonly = 1 << 1

var iocSnapCreateV2 = ioc(iocWrite, ioctlMagic, 23, unsafe.Sizeof(volArgsV2{}))
