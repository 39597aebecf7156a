package projquota

import "unsafe"

// The kernel interfaces this package uses, transcribed from the UAPI headers
// <linux/fs.h> (struct fsxattr), <linux/quota.h> (struct if_dqblk, the Q_*
// commands) and <linux/dqblk_xfs.h> (struct fs_disk_quota, struct
// fs_quota_statv, the Q_X* commands). The Go structs have exactly the C
// layout on every 64-bit Linux architecture: every field is naturally
// aligned and the explicit padding fields stand where C puts implicit
// padding. uapi_test.go checks sizes and offsets against the C values.

// ioctl request direction bits (asm-generic/ioctl.h).
const (
	iocWrite = 1
	iocRead  = 2
)

// ioc builds an ioctl request number the way the kernel's _IOC macro does.
func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

// fsxattr is struct fsxattr, read and written by FS_IOC_FSGETXATTR and
// FS_IOC_FSSETXATTR on XFS, ext4 (and f2fs, btrfs for some flags).
type fsxattr struct {
	xflags     uint32
	extsize    uint32
	nextents   uint32
	projid     uint32
	cowextsize uint32
	pad        [8]byte
}

var (
	fsIocFSGetXattr = ioc(iocRead, 'X', 31, unsafe.Sizeof(fsxattr{}))
	fsIocFSSetXattr = ioc(iocWrite, 'X', 32, unsafe.Sizeof(fsxattr{}))
)

// fsXflagProjInherit (FS_XFLAG_PROJINHERIT): files and directories created
// in a directory with this flag get the directory's project id, so a whole
// volume tree is charged to its project.
const fsXflagProjInherit = 0x00000200

// prjQuota is PRJQUOTA, the quota type of project quotas.
const prjQuota = 2

// qcmd is the kernel's QCMD(cmd, type).
func qcmd(cmd, typ uint32) uint32 { return cmd<<8 | typ&0x00ff }

// Generic (VFS quota, used by ext4) commands, already shifted: the kernel
// defines them as 0x8000xx, QCMD shifts them once more by 8 bits.
const (
	qGetQuota = 0x800007 // Q_GETQUOTA: get limits and usage (struct if_dqblk)
	qSetQuota = 0x800008 // Q_SETQUOTA: set limits and/or usage (struct if_dqblk)
)

// XFS-style commands: XQM_CMD(x) = ('X'<<8) + x.
const (
	qXGetQuota  = 'X'<<8 + 3 // Q_XGETQUOTA (struct fs_disk_quota)
	qXSetQLim   = 'X'<<8 + 4 // Q_XSETQLIM (struct fs_disk_quota)
	qXGetQStatV = 'X'<<8 + 8 // Q_XGETQSTATV (struct fs_quota_statv)
)

// ifDqblk is struct if_dqblk. Space is in bytes, limits in 1 KiB blocks
// (QIF_DQBLKSIZE).
type ifDqblk struct {
	bhardlimit uint64
	bsoftlimit uint64
	curspace   uint64
	ihardlimit uint64
	isoftlimit uint64
	curinodes  uint64
	btime      uint64
	itime      uint64
	valid      uint32
	_          uint32
}

// dqblkSize is QIF_DQBLKSIZE: the unit of if_dqblk block limits.
const dqblkSize = 1024

// if_dqblk.dqb_valid bits.
const (
	qifBLimits = 1
	qifSpace   = 2
	qifILimits = 4
	qifInodes  = 8
	qifLimits  = qifBLimits | qifILimits
)

// fsDiskQuota is struct fs_disk_quota (fs_disk_quota_t). Block figures are
// in 512-byte "basic blocks".
type fsDiskQuota struct {
	version      int8
	flags        int8
	fieldmask    uint16
	id           uint32
	blkHardlimit uint64
	blkSoftlimit uint64
	inoHardlimit uint64
	inoSoftlimit uint64
	bcount       uint64
	icount       uint64
	itimer       int32
	btimer       int32
	iwarns       uint16
	bwarns       uint16
	itimerHi     int8
	btimerHi     int8
	rtbtimerHi   int8
	padding2     int8
	rtbHardlimit uint64
	rtbSoftlimit uint64
	rtbcount     uint64
	rtbtimer     int32
	rtbwarns     uint16
	padding3     int16
	padding4     [8]byte
}

const (
	fsDquotVersion = 1 // FS_DQUOT_VERSION
	fsProjQuota    = 2 // FS_PROJ_QUOTA, fs_disk_quota.d_flags
	bbSize         = 512

	// fs_disk_quota.d_fieldmask bits.
	fsDqISoft = 1 << 0
	fsDqIHard = 1 << 1
	fsDqBSoft = 1 << 2
	fsDqBHard = 1 << 3
)

// fsQfilestatv is struct fs_qfilestatv.
type fsQfilestatv struct {
	ino      uint64
	nblks    uint64
	nextents uint32
	pad      uint32
}

// fsQuotaStatv is struct fs_quota_statv, the answer to Q_XGETQSTATV. Unlike
// the older Q_XGETQSTAT it has the project quota file and is the same on
// 32- and 64-bit.
type fsQuotaStatv struct {
	version      int8
	pad1         uint8
	flags        uint16
	incoredqs    uint32
	uquota       fsQfilestatv
	gquota       fsQfilestatv
	pquota       fsQfilestatv
	btimelimit   int32
	itimelimit   int32
	rtbtimelimit int32
	bwarnlimit   uint16
	iwarnlimit   uint16
	rtbwarnlimit uint16
	pad3         uint16
	pad4         uint32
	pad2         [7]uint64
}

const (
	fsQstatvVersion1 = 1 // FS_QSTATV_VERSION1

	// fs_quota_statv.qs_flags bits for project quota.
	fsQuotaPdqAcct = 0x0010 // FS_QUOTA_PDQ_ACCT: usage is accounted
	fsQuotaPdqEnfd = 0x0020 // FS_QUOTA_PDQ_ENFD: limits are enforced
)
