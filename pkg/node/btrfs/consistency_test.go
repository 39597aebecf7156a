package btrfs

import (
	"encoding/binary"
	"testing"
	"unsafe"
)

func TestDecodeStatus(t *testing.T) {
	item := func(flags uint64) []byte {
		b := make([]byte, 40)
		binary.LittleEndian.PutUint64(b[16:], flags)
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want QuotaStatus
		err  bool
	}{
		{"on, consistent", item(1), QuotaStatus{}, false},
		{"inconsistent", item(1 | 2), QuotaStatus{Inconsistent: true}, false},
		{"rescanning", item(1 | 2 | 4), QuotaStatus{Inconsistent: true, Rescanning: true}, false},
		{"short", make([]byte, 8), QuotaStatus{}, true},
	}
	for _, tt := range tests {
		got, err := decodeStatus(tt.b)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("%s: decodeStatus = %+v, %v", tt.name, got, err)
		}
	}
	// _IOW(0x94, 44, struct btrfs_ioctl_quota_rescan_args) from the uapi header.
	if unsafe.Sizeof(quotaRescanArgs{}) != 64 || iocQuotaRescan != 0x4040942c {
		t.Fatalf("BTRFS_IOC_QUOTA_RESCAN = %#x (args %d bytes), want 0x4040942c (64)", iocQuotaRescan, unsafe.Sizeof(quotaRescanArgs{}))
	}
}
