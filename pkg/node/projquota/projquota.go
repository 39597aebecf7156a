// Package projquota sets and reads XFS and ext4 project quotas through
// syscalls only: FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR give a directory a
// project id and the inherit flag, quotactl_fd(2) (or quotactl(2) with the
// block device on kernels before 5.14) sets a project's limits and reads its
// usage. Nothing is executed: no xfs_quota, no setquota, so there is no
// dependency on tool versions or on the tools seeing the same mounts as the
// driver.
//
// XFS speaks the Q_X* commands (struct fs_disk_quota, 512-byte blocks);
// ext4 speaks the generic Q_GETQUOTA/Q_SETQUOTA (struct if_dqblk, bytes and
// 1 KiB blocks). Both are reached through one FS handle.
package projquota

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FSType is a filesystem with project quota.
type FSType string

const (
	XFS  FSType = "xfs"
	Ext4 FSType = "ext4"
)

// ErrUnsupported wraps every "this filesystem or kernel has no project
// quota" answer, so callers can fall back to another backend.
var ErrUnsupported = errors.New("project quota not supported")

// Quota is one project's limits and usage. Zero limits mean no limit.
type Quota struct {
	BytesUsed, BytesLimit   uint64
	InodesUsed, InodesLimit uint64
}

// Empty reports whether nothing is charged to the project and it has no
// limit: an id in that state is not in use by anything on the filesystem.
func (q Quota) Empty() bool { return q == Quota{} }

// State says what the kernel does with project quota on a filesystem.
type State struct {
	// Accounting: usage is tracked (ext4 with the quota feature always is).
	Accounting bool
	// Enforced: limits are enforced (mounted with prjquota).
	Enforced bool
}

// FS is a handle for project-quota calls on one mounted filesystem.
type FS struct {
	f     *os.File // any directory on the filesystem; not owned
	typ   FSType
	mount Mount
	// deviceOnly skips quotactl_fd, as on a kernel before 5.14; tests set
	// it to prove the quotactl(2) path on a kernel that has both.
	deviceOnly bool
}

// Open identifies the filesystem f is on (XFS or ext4, else ErrUnsupported)
// and its mount (from mountInfoPath, "" = /proc/self/mountinfo). f must stay
// open as long as the FS is used.
func Open(f *os.File, mountInfoPath string) (*FS, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", f.Name(), err)
	}
	var typ FSType
	switch st.Type {
	case unix.XFS_SUPER_MAGIC:
		typ = XFS
	case unix.EXT4_SUPER_MAGIC: // also ext2/ext3 mounted by the ext4 driver
		typ = Ext4
	default:
		return nil, fmt.Errorf("%w: %s is on a filesystem with magic %#x, not XFS or ext4", ErrUnsupported, f.Name(), st.Type)
	}
	m, err := FindMount(f, mountInfoPath)
	if err != nil {
		return nil, err
	}
	return &FS{f: f, typ: typ, mount: m}, nil
}

// Type is the filesystem's type.
func (q *FS) Type() FSType { return q.typ }

// Mount is the filesystem's entry in the mount table.
func (q *FS) Mount() Mount { return q.mount }

// State asks the kernel whether project quota is accounted and enforced
// (Q_XGETQSTATV, which both XFS and the generic quota code of ext4 answer).
// A kernel or filesystem without quota support is ErrUnsupported.
func (q *FS) State() (State, error) {
	st := fsQuotaStatv{version: fsQstatvVersion1}
	if err := q.quotactl(qcmd(qXGetQStatV, prjQuota), 0, unsafe.Pointer(&st)); err != nil {
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOTSUP) {
			// XFS mounted without quota options has no quota operations at
			// all, and answers ENOSYS like a kernel built without quota.
			// Only a mount that asked for prjquota tells the two apart.
			if !q.mount.ProjectQuotaOption() {
				return State{}, nil
			}
			return State{}, fmt.Errorf("%w: %s at %s is mounted with prjquota but the kernel has no quota support for it (%v)", ErrUnsupported, q.typ, q.mount.MountPoint, err)
		}
		return State{}, fmt.Errorf("project quota state of %s: %w", q.mount.MountPoint, err)
	}
	return State{Accounting: st.flags&fsQuotaPdqAcct != 0, Enforced: st.flags&fsQuotaPdqEnfd != 0}, nil
}

// Get returns a project's limits and usage. A project the filesystem has
// never seen reads as an empty Quota.
func (q *FS) Get(id uint32) (Quota, error) {
	switch q.typ {
	case XFS:
		var d fsDiskQuota
		err := q.quotactl(qcmd(qXGetQuota, prjQuota), id, unsafe.Pointer(&d))
		if errors.Is(err, unix.ENOENT) { // XFS has no dquot for an unused id
			return Quota{}, nil
		}
		if err != nil {
			return Quota{}, fmt.Errorf("get project quota %d on %s: %w", id, q.mount.MountPoint, err)
		}
		return fromDiskQuota(d), nil
	default:
		var d ifDqblk
		if err := q.quotactl(qcmd(qGetQuota, prjQuota), id, unsafe.Pointer(&d)); err != nil {
			return Quota{}, fmt.Errorf("get project quota %d on %s: %w", id, q.mount.MountPoint, err)
		}
		return fromDqblk(d), nil
	}
}

// SetLimit sets a project's hard block limit to bytes (rounded up to the
// filesystem's quota unit) and clears its soft and inode limits. 0 removes
// the limit.
func (q *FS) SetLimit(id uint32, bytes uint64) error {
	var err error
	switch q.typ {
	case XFS:
		d := diskQuotaLimit(id, bytes)
		err = q.quotactl(qcmd(qXSetQLim, prjQuota), id, unsafe.Pointer(&d))
	default:
		d := dqblkLimit(bytes)
		err = q.quotactl(qcmd(qSetQuota, prjQuota), id, unsafe.Pointer(&d))
	}
	if err != nil {
		return fmt.Errorf("set project quota %d on %s to %d bytes: %w", id, q.mount.MountPoint, bytes, err)
	}
	return nil
}

// quotactl runs one quota command on the filesystem: quotactl_fd on the
// open directory where the kernel has it (5.14+), else quotactl(2) on the
// block device named in the mount table.
func (q *FS) quotactl(cmd, id uint32, addr unsafe.Pointer) error {
	e := unix.ENOSYS
	if !q.deviceOnly {
		_, _, e = unix.Syscall6(unix.SYS_QUOTACTL_FD, q.f.Fd(), uintptr(cmd), uintptr(id), uintptr(addr), 0, 0)
		runtime.KeepAlive(q.f)
		if e == 0 {
			return nil
		}
	}
	if e != unix.ENOSYS || !strings.HasPrefix(q.mount.Source, "/") {
		return e
	}
	// ENOSYS is both "no quotactl_fd" and "no quota for this filesystem":
	// the device call tells them apart.
	dev, err := unix.BytePtrFromString(q.mount.Source)
	if err != nil {
		return e
	}
	_, _, e2 := unix.Syscall6(unix.SYS_QUOTACTL, uintptr(cmd), uintptr(unsafe.Pointer(dev)), uintptr(id), uintptr(addr), 0, 0)
	if e2 == 0 {
		return nil
	}
	if e2 == unix.ENOENT || e2 == unix.ENOTBLK || e2 == unix.ENODEV {
		return e // the device is not visible here; the first answer stands
	}
	return e2
}

func fromDiskQuota(d fsDiskQuota) Quota {
	return Quota{
		BytesUsed:   d.bcount * bbSize,
		BytesLimit:  d.blkHardlimit * bbSize,
		InodesUsed:  d.icount,
		InodesLimit: d.inoHardlimit,
	}
}

func fromDqblk(d ifDqblk) Quota {
	return Quota{
		BytesUsed:   d.curspace,
		BytesLimit:  d.bhardlimit * dqblkSize,
		InodesUsed:  d.curinodes,
		InodesLimit: d.ihardlimit,
	}
}

// diskQuotaLimit is the Q_XSETQLIM argument setting only the limits.
func diskQuotaLimit(id uint32, bytes uint64) fsDiskQuota {
	return fsDiskQuota{
		version:      fsDquotVersion,
		flags:        fsProjQuota,
		fieldmask:    fsDqBHard | fsDqBSoft | fsDqIHard | fsDqISoft,
		id:           id,
		blkHardlimit: divRoundUp(bytes, bbSize),
	}
}

// dqblkLimit is the Q_SETQUOTA argument setting only the limits (dqb_valid
// without QIF_USAGE, so the kernel's usage figures are left alone).
func dqblkLimit(bytes uint64) ifDqblk {
	return ifDqblk{bhardlimit: divRoundUp(bytes, dqblkSize), valid: qifLimits}
}

func divRoundUp(n, d uint64) uint64 { return (n + d - 1) / d }

// SetProject gives the directory (or file) f the project id and, for a
// directory, the inherit flag, so everything created below it later is
// charged to the project too. Existing children keep their ids: call it on
// a new, empty directory.
func SetProject(f *os.File, id uint32) error {
	var a fsxattr
	if err := ioctlPtr(f, fsIocFSGetXattr, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("FS_IOC_FSGETXATTR %s: %w", f.Name(), err)
	}
	a.projid = id
	if st, err := f.Stat(); err == nil && st.IsDir() {
		a.xflags |= fsXflagProjInherit
	}
	if err := ioctlPtr(f, fsIocFSSetXattr, unsafe.Pointer(&a)); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%w: FS_IOC_FSSETXATTR %s: %v (ext4 needs the project feature: mkfs.ext4 -O quota,project)", ErrUnsupported, f.Name(), err)
		}
		return fmt.Errorf("FS_IOC_FSSETXATTR %s: %w", f.Name(), err)
	}
	return nil
}

// GetProject returns the project id of f and whether it has the inherit flag.
func GetProject(f *os.File) (id uint32, inherit bool, err error) {
	var a fsxattr
	if err := ioctlPtr(f, fsIocFSGetXattr, unsafe.Pointer(&a)); err != nil {
		return 0, false, fmt.Errorf("FS_IOC_FSGETXATTR %s: %w", f.Name(), err)
	}
	return a.projid, a.xflags&fsXflagProjInherit != 0, nil
}

func ioctlPtr(f *os.File, req uintptr, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, uintptr(arg))
	runtime.KeepAlive(f)
	if e != 0 {
		return e
	}
	return nil
}
