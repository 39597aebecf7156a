package btrfs

import (
	"encoding/binary"
	"strings"
	"testing"
	"unsafe"
)

// The expected values were produced by compiling the _IO* macros and
// sizeof() of <linux/btrfs.h> (linux-libc-dev for kernel 6.x) with gcc on
// x86-64; they are part of the stable kernel ABI.
func TestIoctlNumbers(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"BTRFS_IOC_SYNC", iocSync, 0x9408},
		{"BTRFS_IOC_SUBVOL_CREATE", iocSubvolCreate, 0x5000940e},
		{"BTRFS_IOC_SNAP_CREATE_V2", iocSnapCreateV2, 0x50009417},
		{"BTRFS_IOC_SNAP_DESTROY", iocSnapDestroy, 0x5000940f},
		{"BTRFS_IOC_TREE_SEARCH", iocTreeSearch, 0xd0009411},
		{"BTRFS_IOC_INO_LOOKUP", iocInoLookup, 0xd0009412},
		{"BTRFS_IOC_QUOTA_CTL", iocQuotaCtl, 0xc0109428},
		{"BTRFS_IOC_QGROUP_CREATE", iocQgroupCreate, 0x4010942a},
		{"BTRFS_IOC_QGROUP_LIMIT", iocQgroupLimit, 0x8030942b},
		{"BTRFS_IOC_QUOTA_RESCAN_WAIT", iocQuotaRescanWait, 0x942e},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestStructLayout(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"btrfs_ioctl_vol_args", unsafe.Sizeof(volArgs{}), 4096},
		{"btrfs_ioctl_vol_args_v2", unsafe.Sizeof(volArgsV2{}), 4096},
		{"btrfs_ioctl_search_key", unsafe.Sizeof(searchKey{}), 104},
		{"btrfs_ioctl_search_args", unsafe.Sizeof(searchArgs{}), 4096},
		{"btrfs_ioctl_search_header", unsafe.Sizeof(searchHeader{}), 32},
		{"btrfs_ioctl_ino_lookup_args", unsafe.Sizeof(inoLookupArgs{}), 4096},
		{"btrfs_ioctl_quota_ctl_args", unsafe.Sizeof(quotaCtlArgs{}), 16},
		{"btrfs_ioctl_qgroup_create_args", unsafe.Sizeof(qgroupCreateArgs{}), 16},
		{"btrfs_ioctl_qgroup_limit_args", unsafe.Sizeof(qgroupLimitArgs{}), 48},
		// Field offsets the kernel reads.
		{"vol_args.name offset", unsafe.Offsetof(volArgs{}.name), 8},
		{"search_key.min_type offset", unsafe.Offsetof(searchKey{}.minType), 56},
		{"search_key.nr_items offset", unsafe.Offsetof(searchKey{}.nrItems), 64},
		{"search_args.buf offset", unsafe.Offsetof(searchArgs{}.buf), 104},
		{"ino_lookup.name offset", unsafe.Offsetof(inoLookupArgs{}.name), 16},
		{"qgroup_limit_args.lim offset", unsafe.Offsetof(qgroupLimitArgs{}.lim), 8},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr string // substring; "" = valid
	}{
		{"simple", "pvc-0a1b", ""},
		{"dots inside", "a..b", ""},
		{"leading dot", ".trash", ""},
		{"max length", strings.Repeat("x", 255), ""},
		{"empty", "", "empty"},
		{"dot", ".", "not allowed"},
		{"dotdot", "..", "not allowed"},
		{"slash", "a/b", "'/'"},
		{"leading slash", "/etc", "'/'"},
		{"traversal", "../x", "'/'"},
		{"too long", strings.Repeat("x", 256), "longer than 255"},
		{"nul", "a\x00b", "NUL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateName(tc.in)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("ValidateName(%q) = %v, want nil", tc.in, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("ValidateName(%q) = %v, want error containing %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

func TestNewVolArgsTerminates(t *testing.T) {
	name := strings.Repeat("n", VolNameMax)
	a := newVolArgs(name)
	if got := string(a.name[:len(name)]); got != name {
		t.Fatalf("name not copied")
	}
	if a.name[len(name)] != 0 {
		t.Errorf("name not NUL-terminated")
	}
	if a.fd != 0 {
		t.Errorf("fd = %d, want 0", a.fd)
	}
}

func TestLimitArgs(t *testing.T) {
	tests := []struct {
		name      string
		qgroup    uint64
		limit     uint64
		wantFlags uint64
		wantRfer  uint64
	}{
		{"8 MiB on own subvolume", 0, 8 << 20, qgroupLimitMaxRfer, 8 << 20},
		{"1 byte", 0, 1, qgroupLimitMaxRfer, 1},
		{"0 clears", 0, 0, qgroupLimitMaxRfer, ^uint64(0)},
		{"by id", 257, 1 << 30, qgroupLimitMaxRfer, 1 << 30},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := limitArgs(tc.qgroup, tc.limit)
			if a.qgroupID != tc.qgroup || a.lim.flags != tc.wantFlags || a.lim.maxRfer != tc.wantRfer || a.lim.maxExcl != 0 {
				t.Errorf("limitArgs(%d, %d) = %+v, want qgroup %d flags %#x max_rfer %#x", tc.qgroup, tc.limit, *a, tc.qgroup, tc.wantFlags, tc.wantRfer)
			}
			// The raw bytes the kernel sees, field by field.
			raw := unsafe.Slice((*byte)(unsafe.Pointer(a)), unsafe.Sizeof(*a))
			if got := binary.NativeEndian.Uint64(raw[0:8]); got != tc.qgroup {
				t.Errorf("raw qgroupid = %d", got)
			}
			if got := binary.NativeEndian.Uint64(raw[8:16]); got != tc.wantFlags {
				t.Errorf("raw flags = %#x", got)
			}
			if got := binary.NativeEndian.Uint64(raw[16:24]); got != tc.wantRfer {
				t.Errorf("raw max_rfer = %#x", got)
			}
		})
	}
}

// buildResult encodes search results the way the kernel lays them out.
func buildResult(items []item) []byte {
	var buf []byte
	for _, it := range items {
		h := make([]byte, searchHeaderSize)
		binary.NativeEndian.PutUint64(h[0:8], 7) // transid
		binary.NativeEndian.PutUint64(h[8:16], it.objectID)
		binary.NativeEndian.PutUint64(h[16:24], it.offset)
		binary.NativeEndian.PutUint32(h[24:28], it.typ)
		binary.NativeEndian.PutUint32(h[28:32], uint32(len(it.data)))
		buf = append(buf, h...)
		buf = append(buf, it.data...)
	}
	return buf
}

func le64s(vs ...uint64) []byte {
	b := make([]byte, 8*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	return b
}

func TestParseSearchResult(t *testing.T) {
	info := le64s(9, 12<<20, 12<<20, 4<<20, 4<<20)
	limit := le64s(qgroupLimitMaxRfer, 8<<20, 0, 0, 0)
	two := buildResult([]item{
		{objectID: 0, typ: qgroupInfoKey, offset: 257, data: info},
		{objectID: 0, typ: qgroupLimitKey, offset: 257, data: limit},
	})
	tests := []struct {
		name    string
		buf     []byte
		n       uint32
		want    int
		wantErr bool
	}{
		{"two items", two, 2, 2, false},
		{"fewer than present", two, 1, 1, false},
		{"none", nil, 0, 0, false},
		{"header truncated", two[:20], 1, 0, true},
		{"body truncated", two[:searchHeaderSize+10], 1, 0, true},
		{"count beyond buffer", two, 3, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			items, err := parseSearchResult(tc.buf, tc.n)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if len(items) != tc.want {
				t.Fatalf("got %d items, want %d", len(items), tc.want)
			}
			if tc.want == 2 {
				if items[1].typ != qgroupLimitKey || items[1].offset != 257 || string(items[1].data) != string(limit) {
					t.Errorf("second item = %+v", items[1])
				}
				r, e, err := decodeInfo(items[0].data)
				if err != nil || r != 12<<20 || e != 4<<20 {
					t.Errorf("decodeInfo = %d, %d, %v; want 12 MiB, 4 MiB", r, e, err)
				}
			}
		})
	}
}

func TestDecodeLimit(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		want    uint64
		wantErr bool
	}{
		{"limit set", le64s(qgroupLimitMaxRfer, 8<<20, 0, 0, 0), 8 << 20, false},
		{"flag clear means none", le64s(0, 8<<20, 0, 0, 0), 0, false},
		{"only excl limit", le64s(2, 0, 5<<20, 0, 0), 0, false},
		{"short item", le64s(1, 2), 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeLimit(tc.data)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("decodeLimit = %d, %v; want %d, err %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
	if _, _, err := decodeInfo(le64s(1, 2, 3)); err == nil {
		t.Errorf("decodeInfo of a short item succeeded")
	}
}
