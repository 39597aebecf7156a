package btrfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Usage is the accounting of one level-0 qgroup (one subvolume), in bytes.
// The kernel updates it at transaction commit, so it lags writes by up to
// the commit interval (30 s by default) unless the filesystem is synced.
type Usage struct {
	// Referenced is all data reachable from the subvolume.
	Referenced uint64
	// Exclusive is data not shared with any other subvolume.
	Exclusive uint64
	// MaxReferenced is the limit on Referenced; 0 means no limit.
	MaxReferenced uint64
}

// EnableQuota turns on qgroup accounting for the filesystem f is on. It is
// idempotent: no error when quota is already on. Enabling starts a rescan of
// existing data in the background; see Status and StartRescan.
func EnableQuota(f *os.File) error {
	on, err := QuotaEnabled(f)
	if err != nil {
		return err
	}
	if on {
		return nil
	}
	a := &quotaCtlArgs{cmd: quotaCtlEnable}
	if err := ioctl(f, iocQuotaCtl, unsafe.Pointer(a)); err != nil {
		// Another process may have enabled it between our check and
		// our ioctl; that is success too.
		if on, qerr := QuotaEnabled(f); qerr == nil && on {
			return nil
		}
		return fmt.Errorf("enable quota on %s: %w", f.Name(), err)
	}
	return nil
}

// QuotaEnabled reports whether qgroup accounting is on for the filesystem f
// is on, by reading the qgroup status item of the quota tree. The quota tree
// exists only while quota is enabled.
func QuotaEnabled(f *os.File) (bool, error) {
	flags, found, err := quotaStatusFlags(f)
	return found && flags&qgroupStatusFlagOn != 0, err
}

// QuotaMode is how a btrfs filesystem accounts space per subvolume.
type QuotaMode string

const (
	QuotaOff    QuotaMode = "off"
	QuotaQgroup QuotaMode = "qgroup" // full qgroups: shared extents tracked (backrefs walked)
	// QuotaSimple is simple quotas (kernel 6.7+): an extent stays charged
	// to the subvolume that wrote it, even once only a snapshot refers to it.
	QuotaSimple QuotaMode = "squota"
)

// Mode reports the quota mode of the filesystem f is on.
func Mode(f *os.File) (QuotaMode, error) {
	flags, found, err := quotaStatusFlags(f)
	switch {
	case err != nil:
		return "", err
	case !found || flags&qgroupStatusFlagOn == 0:
		return QuotaOff, nil
	case flags&qgroupStatusFlagSimple != 0:
		return QuotaSimple, nil
	}
	return QuotaQgroup, nil
}

// EnableSimpleQuota turns on simple quotas (BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA,
// kernel 6.7+) for the filesystem f is on if quotas are off. Quotas already
// on are kept in the mode found, which it returns: switching modes means
// disabling quotas, which drops every limit. A kernel without simple
// quotas refuses with EINVAL, returned wrapped.
func EnableSimpleQuota(f *os.File) (QuotaMode, error) {
	mode, err := Mode(f)
	if err != nil || mode != QuotaOff {
		return mode, err
	}
	a := &quotaCtlArgs{cmd: quotaCtlEnableSimple}
	if err := ioctl(f, iocQuotaCtl, unsafe.Pointer(a)); err != nil {
		if mode, merr := Mode(f); merr == nil && mode != QuotaOff {
			return mode, nil // enabled meanwhile by another process
		}
		return QuotaOff, fmt.Errorf("enable simple quotas on %s (kernel 6.7 or later): %w", f.Name(), err)
	}
	return QuotaSimple, nil
}

// quotaStatusFlags reads the flags of the qgroup status item; found is
// false when there is none (quotas never enabled, or disabled).
func quotaStatusFlags(f *os.File) (flags uint64, found bool, err error) {
	ok, err := fileIsBtrfs(f)
	if err != nil {
		return 0, false, err
	}
	if !ok {
		return 0, false, fmt.Errorf("quota status of %s: %w", f.Name(), ErrNotBtrfs)
	}
	a := &searchArgs{}
	setExactKey(&a.key, quotaTreeObjectID, 0, qgroupStatusKey, 0)
	if err := ioctl(f, iocTreeSearch, unsafe.Pointer(a)); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("quota status of %s: %w", f.Name(), err)
	}
	items, err := parseSearchResult(a.buf[:], a.key.nrItems)
	if err != nil {
		return 0, false, fmt.Errorf("quota status of %s: %w", f.Name(), err)
	}
	for _, it := range items {
		if it.typ == qgroupStatusKey && len(it.data) >= 3*8 {
			return binary.LittleEndian.Uint64(it.data[16:24]), true, nil
		}
	}
	return 0, false, nil
}

// limitArgs encodes a max_rfer limit for qgroup 0/qgroupID (0 = the
// subvolume of the file the ioctl is issued on). A zero limit clears it.
func limitArgs(qgroupID, maxReferenced uint64) *qgroupLimitArgs {
	a := &qgroupLimitArgs{qgroupID: qgroupID}
	a.lim.flags = qgroupLimitMaxRfer
	a.lim.maxRfer = maxReferenced
	if maxReferenced == 0 {
		a.lim.maxRfer = limitClear
	}
	return a
}

// SetLimit sets max_rfer of the qgroup of the subvolume that f is open on
// (qgroupid 0 = f's subvolume). limit 0 removes the limit.
func SetLimit(subvol *os.File, maxReferenced uint64) error {
	if err := ioctl(subvol, iocQgroupLimit, unsafe.Pointer(limitArgs(0, maxReferenced))); err != nil {
		return fmt.Errorf("set qgroup limit %d on %s: %w", maxReferenced, subvol.Name(), err)
	}
	return nil
}

// QgroupUsage reads the 0/<subvolID> qgroup's info and limit items from the
// quota tree (objectid 8). f is any file on the filesystem.
//
// It costs two exact-key TREE_SEARCH ioctls (a few microseconds each), not
// one: the info key (0, 242, id) and the limit key (0, 244, id) are not
// adjacent in the tree, and a search range is a range of whole 136-bit keys,
// so one search spanning both would also return the info items of every
// higher qgroup and the limit items of every lower one — O(number of
// volumes), and liable to overflow the 4 KiB result buffer on a busy pool.
// Two point lookups stay O(log n) whatever the pool holds.
func QgroupUsage(f *os.File, subvolID uint64) (Usage, error) {
	var u Usage
	a := &searchArgs{} // one 4 KiB buffer for both lookups
	info, err := lookupQuotaItem(f, a, qgroupInfoKey, subvolID)
	if err != nil {
		return u, fmt.Errorf("qgroup 0/%d info: %w", subvolID, err)
	}
	if info == nil {
		return u, fmt.Errorf("qgroup 0/%d on %s: %w", subvolID, f.Name(), ErrQgroupNotFound)
	}
	if u.Referenced, u.Exclusive, err = decodeInfo(info); err != nil {
		return u, fmt.Errorf("qgroup 0/%d info: %w", subvolID, err)
	}
	// info points into a.buf and is decoded already; a may be reused.
	lim, err := lookupQuotaItem(f, a, qgroupLimitKey, subvolID)
	if err != nil {
		return u, fmt.Errorf("qgroup 0/%d limit: %w", subvolID, err)
	}
	if lim != nil { // a qgroup without a limit item has no limit
		if u.MaxReferenced, err = decodeLimit(lim); err != nil {
			return u, fmt.Errorf("qgroup 0/%d limit: %w", subvolID, err)
		}
	}
	return u, nil
}

// lookupQuotaItem returns the body of item (0, typ, offset) of the quota
// tree, or nil if there is none. The body points into a.buf. A missing quota
// tree (quota disabled) is reported as ErrQgroupNotFound.
func lookupQuotaItem(f *os.File, a *searchArgs, typ uint32, offset uint64) ([]byte, error) {
	setExactKey(&a.key, quotaTreeObjectID, 0, typ, offset)
	if err := ioctl(f, iocTreeSearch, unsafe.Pointer(a)); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("quota tree missing (quota disabled?): %w", ErrQgroupNotFound)
		}
		return nil, fmt.Errorf("tree search on %s: %w", f.Name(), err)
	}
	items, err := parseSearchResult(a.buf[:], a.key.nrItems)
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if it.objectID == 0 && it.typ == typ && it.offset == offset {
			return it.data, nil
		}
	}
	return nil, nil
}

// decodeInfo reads rfer and excl from a btrfs_qgroup_info_item.
func decodeInfo(b []byte) (referenced, exclusive uint64, err error) {
	if len(b) < qgroupInfoItemSize {
		return 0, 0, fmt.Errorf("qgroup info item is %d bytes, want %d", len(b), qgroupInfoItemSize)
	}
	return binary.LittleEndian.Uint64(b[8:16]), binary.LittleEndian.Uint64(b[24:32]), nil
}

// decodeLimit reads max_rfer from a btrfs_qgroup_limit_item; 0 when the
// MAX_RFER flag is not set.
func decodeLimit(b []byte) (uint64, error) {
	if len(b) < qgroupLimitItemSize {
		return 0, fmt.Errorf("qgroup limit item is %d bytes, want %d", len(b), qgroupLimitItemSize)
	}
	if binary.LittleEndian.Uint64(b[0:8])&qgroupLimitMaxRfer == 0 {
		return 0, nil
	}
	return binary.LittleEndian.Uint64(b[8:16]), nil
}

// setExactKey makes k match exactly one key of one tree.
func setExactKey(k *searchKey, tree, objectID uint64, typ uint32, offset uint64) {
	*k = searchKey{
		treeID:      tree,
		minObjectID: objectID, maxObjectID: objectID,
		minType: typ, maxType: typ,
		minOffset: offset, maxOffset: offset,
		minTransID: 0, maxTransID: ^uint64(0),
		nrItems: 1,
	}
}

// item is one result of a tree search.
type item struct {
	objectID uint64
	offset   uint64
	typ      uint32
	data     []byte
}

// parseSearchResult splits a TREE_SEARCH result buffer into n items. The
// headers are in host byte order (encoded by the kernel's ioctl code); the
// bodies stay raw on-disk little-endian bytes.
func parseSearchResult(buf []byte, n uint32) ([]item, error) {
	items := make([]item, 0, n)
	off := 0
	for i := uint32(0); i < n; i++ {
		if off+searchHeaderSize > len(buf) {
			return nil, fmt.Errorf("search result: header %d at %d overruns %d-byte buffer", i, off, len(buf))
		}
		h := buf[off : off+searchHeaderSize]
		it := item{
			objectID: binary.NativeEndian.Uint64(h[8:16]),
			offset:   binary.NativeEndian.Uint64(h[16:24]),
			typ:      binary.NativeEndian.Uint32(h[24:28]),
		}
		length := int(binary.NativeEndian.Uint32(h[28:32]))
		off += searchHeaderSize
		if off+length > len(buf) {
			return nil, fmt.Errorf("search result: item %d body of %d bytes at %d overruns %d-byte buffer", i, length, off, len(buf))
		}
		it.data = buf[off : off+length]
		off += length
		items = append(items, it)
	}
	return items, nil
}
