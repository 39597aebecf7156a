package btrfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The quota tree's status item (key 0/QGROUP_STATUS/0) carries the flags the
// kernel keeps about qgroup accounting as a whole (fs/btrfs/qgroup.h,
// include/uapi/linux/btrfs_tree.h).
const (
	qgroupStatusFlagInconsistent = 1 << 1
	qgroupStatusFlagRescan       = 1 << 2
)

// quotaRescanArgs is struct btrfs_ioctl_quota_rescan_args.
type quotaRescanArgs struct {
	flags    uint64
	progress uint64
	reserved [6]uint64
}

var iocQuotaRescan = ioc(iocWrite, ioctlMagic, 44, unsafe.Sizeof(quotaRescanArgs{}))

// QuotaStatus is the state of a filesystem's qgroup accounting.
type QuotaStatus struct {
	// Inconsistent: the kernel no longer trusts its qgroup counters. While
	// set, qgroup limits are NOT enforced: writes past a volume's size
	// succeed. Only a rescan clears it.
	Inconsistent bool
	// Rescanning: a rescan is running.
	Rescanning bool
}

// Status reads the quota status item (as of the last transaction commit).
func Status(f *os.File) (QuotaStatus, error) {
	var a searchArgs
	b, err := lookupQuotaItem(f, &a, qgroupStatusKey, 0)
	if err != nil {
		return QuotaStatus{}, err
	}
	return decodeStatus(b)
}

func decodeStatus(b []byte) (QuotaStatus, error) {
	// struct btrfs_qgroup_status_item { __le64 version, generation, flags, rescan; ... }
	if len(b) < 32 {
		return QuotaStatus{}, fmt.Errorf("qgroup status item is %d bytes, want at least 32", len(b))
	}
	flags := binary.LittleEndian.Uint64(b[16:24])
	return QuotaStatus{Inconsistent: flags&qgroupStatusFlagInconsistent != 0, Rescanning: flags&qgroupStatusFlagRescan != 0}, nil
}

// StartRescan starts recounting every qgroup in the background; when it
// ends the Inconsistent flag is cleared. A rescan already running is fine.
func StartRescan(f *os.File) error {
	args := quotaRescanArgs{}
	if err := ioctl(f, iocQuotaRescan, unsafe.Pointer(&args)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fmt.Errorf("start quota rescan on %s: %w", f.Name(), err)
	}
	return nil
}
