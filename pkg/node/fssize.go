package node

import (
	"encoding/binary"
	"fmt"
	"io"
)

// filesystemBytes reads the size a filesystem believes it has from its
// superblock, so the loop backend can tell whether an image grew past its
// filesystem without running a tool. Only ext4 and xfs (the loop
// filesystems) are understood.
func filesystemBytes(r io.ReaderAt, fsType string) (int64, error) {
	switch fsType {
	case "ext4":
		// The ext4 superblock starts at byte 1024 (fs/ext4/ext4.h).
		sb := make([]byte, 0x160)
		if _, err := r.ReadAt(sb, 1024); err != nil {
			return 0, fmt.Errorf("read ext4 superblock: %w", err)
		}
		if binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
			return 0, fmt.Errorf("no ext4 superblock (bad magic)")
		}
		blocks := uint64(binary.LittleEndian.Uint32(sb[0x04:]))
		if binary.LittleEndian.Uint32(sb[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
			blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
		}
		blockSize := uint64(1024) << binary.LittleEndian.Uint32(sb[0x18:])
		return int64(blocks * blockSize), nil
	case "xfs":
		// The xfs superblock is at byte 0, big-endian (fs/xfs/libxfs/xfs_format.h).
		sb := make([]byte, 16)
		if _, err := r.ReadAt(sb, 0); err != nil {
			return 0, fmt.Errorf("read xfs superblock: %w", err)
		}
		if string(sb[:4]) != "XFSB" {
			return 0, fmt.Errorf("no xfs superblock (bad magic)")
		}
		return int64(binary.BigEndian.Uint64(sb[8:]) * uint64(binary.BigEndian.Uint32(sb[4:]))), nil
	}
	return 0, fmt.Errorf("%w: filesystem %q", ErrUnsupported, fsType)
}
