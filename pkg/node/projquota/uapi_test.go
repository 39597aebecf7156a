package projquota

import (
	"testing"
	"unsafe"
)

// TestLayout checks the Go structs against the sizes and offsets the C
// compiler gives the UAPI structs on 64-bit Linux: a wrong layout would make
// the kernel read limits from the wrong bytes.
func TestLayout(t *testing.T) {
	var (
		x  fsxattr
		dq ifDqblk
		xq fsDiskQuota
		sv fsQuotaStatv
	)
	cases := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct fsxattr)", unsafe.Sizeof(x), 28},
		{"fsxattr.fsx_projid", unsafe.Offsetof(x.projid), 12},
		{"fsxattr.fsx_pad", unsafe.Offsetof(x.pad), 20},
		{"sizeof(struct if_dqblk)", unsafe.Sizeof(dq), 72},
		{"if_dqblk.dqb_curspace", unsafe.Offsetof(dq.curspace), 16},
		{"if_dqblk.dqb_curinodes", unsafe.Offsetof(dq.curinodes), 40},
		{"if_dqblk.dqb_valid", unsafe.Offsetof(dq.valid), 64},
		{"sizeof(struct fs_disk_quota)", unsafe.Sizeof(xq), 112},
		{"fs_disk_quota.d_id", unsafe.Offsetof(xq.id), 4},
		{"fs_disk_quota.d_blk_hardlimit", unsafe.Offsetof(xq.blkHardlimit), 8},
		{"fs_disk_quota.d_ino_hardlimit", unsafe.Offsetof(xq.inoHardlimit), 24},
		{"fs_disk_quota.d_bcount", unsafe.Offsetof(xq.bcount), 40},
		{"fs_disk_quota.d_icount", unsafe.Offsetof(xq.icount), 48},
		{"fs_disk_quota.d_itimer", unsafe.Offsetof(xq.itimer), 56},
		{"fs_disk_quota.d_itimer_hi", unsafe.Offsetof(xq.itimerHi), 68},
		{"fs_disk_quota.d_rtb_hardlimit", unsafe.Offsetof(xq.rtbHardlimit), 72},
		{"fs_disk_quota.d_rtbtimer", unsafe.Offsetof(xq.rtbtimer), 96},
		{"fs_disk_quota.d_padding4", unsafe.Offsetof(xq.padding4), 104},
		{"sizeof(struct fs_quota_statv)", unsafe.Sizeof(sv), 160},
		{"fs_quota_statv.qs_flags", unsafe.Offsetof(sv.flags), 2},
		{"fs_quota_statv.qs_pquota", unsafe.Offsetof(sv.pquota), 56},
		{"fs_quota_statv.qs_btimelimit", unsafe.Offsetof(sv.btimelimit), 80},
		{"fs_quota_statv.qs_pad2", unsafe.Offsetof(sv.pad2), 104},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestCommands checks the request and command numbers against the values
// of the C macros (FS_IOC_FSGETXATTR, QCMD(Q_GETQUOTA, PRJQUOTA), ...).
func TestCommands(t *testing.T) {
	cases := []struct {
		name      string
		got, want uint64
	}{
		{"FS_IOC_FSGETXATTR", uint64(fsIocFSGetXattr), 0x801c581f},
		{"FS_IOC_FSSETXATTR", uint64(fsIocFSSetXattr), 0x401c5820},
		{"QCMD(Q_GETQUOTA, PRJQUOTA)", uint64(qcmd(qGetQuota, prjQuota)), 0x80000702},
		{"QCMD(Q_SETQUOTA, PRJQUOTA)", uint64(qcmd(qSetQuota, prjQuota)), 0x80000802},
		{"QCMD(Q_XGETQUOTA, PRJQUOTA)", uint64(qcmd(qXGetQuota, prjQuota)), 0x580302},
		{"QCMD(Q_XSETQLIM, PRJQUOTA)", uint64(qcmd(qXSetQLim, prjQuota)), 0x580402},
		{"QCMD(Q_XGETQSTATV, PRJQUOTA)", uint64(qcmd(qXGetQStatV, prjQuota)), 0x580802},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// TestEncodeLimit checks the limit arguments: units (512-byte basic blocks
// for XFS, 1 KiB for ext4), rounding up so a volume never gets less than
// its size, and the field masks that make the kernel touch only limits.
func TestEncodeLimit(t *testing.T) {
	cases := []struct {
		bytes        uint64
		wantBB       uint64
		wantKiBlocks uint64
	}{
		{0, 0, 0},
		{1, 1, 1},
		{512, 1, 1},
		{513, 2, 1},
		{1024, 2, 1},
		{1025, 3, 2},
		{64 << 20, 131072, 65536},
		{1<<40 + 1, 1<<31 + 1, 1<<30 + 1},
	}
	for _, c := range cases {
		x := diskQuotaLimit(7, c.bytes)
		if x.blkHardlimit != c.wantBB || x.blkSoftlimit != 0 || x.id != 7 {
			t.Errorf("diskQuotaLimit(%d): hard %d soft %d id %d, want hard %d soft 0 id 7", c.bytes, x.blkHardlimit, x.blkSoftlimit, x.id, c.wantBB)
		}
		if x.version != fsDquotVersion || x.flags != fsProjQuota || x.fieldmask != 0xf {
			t.Errorf("diskQuotaLimit(%d): version %d flags %d mask %#x, want 1, FS_PROJ_QUOTA, BHARD|BSOFT|IHARD|ISOFT", c.bytes, x.version, x.flags, x.fieldmask)
		}
		g := dqblkLimit(c.bytes)
		if g.bhardlimit != c.wantKiBlocks || g.bsoftlimit != 0 || g.ihardlimit != 0 {
			t.Errorf("dqblkLimit(%d) = hard %d soft %d ihard %d, want hard %d", c.bytes, g.bhardlimit, g.bsoftlimit, g.ihardlimit, c.wantKiBlocks)
		}
		if g.valid != qifBLimits|qifILimits || g.valid&(qifSpace|qifInodes) != 0 {
			t.Errorf("dqblkLimit(%d).valid = %#x, want QIF_LIMITS and no usage bits", c.bytes, g.valid)
		}
	}
}

// TestDecode checks that usage and limits come back in bytes and inodes
// whatever unit the filesystem's structure uses.
func TestDecode(t *testing.T) {
	cases := []struct {
		name string
		got  Quota
		want Quota
	}{
		{"xfs", fromDiskQuota(fsDiskQuota{blkHardlimit: 2048, bcount: 100, icount: 3, inoHardlimit: 9}),
			Quota{BytesLimit: 1 << 20, BytesUsed: 51200, InodesUsed: 3, InodesLimit: 9}},
		{"ext4", fromDqblk(ifDqblk{bhardlimit: 1024, curspace: 4096, curinodes: 2, ihardlimit: 5}),
			Quota{BytesLimit: 1 << 20, BytesUsed: 4096, InodesUsed: 2, InodesLimit: 5}},
		{"empty", fromDqblk(ifDqblk{}), Quota{}},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, c.got, c.want)
		}
	}
	if !(Quota{}).Empty() || (Quota{InodesUsed: 1}).Empty() || (Quota{BytesLimit: 1}).Empty() {
		t.Error("Quota.Empty is wrong")
	}
}
