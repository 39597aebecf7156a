package node

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRepairInterruptedGrowFromBackup: a primary ext4 superblock that
// e2fsck cannot open is repaired from a backup, whatever the block size,
// including damage e2fsck does not fall back from by itself (an unknown
// feature under a valid checksum: `e2fsck -f -y` alone exits 8). It needs
// no root: e2fsck works on an image file as on its loop device.
func TestRepairInterruptedGrowFromBackup(t *testing.T) {
	const sbAt, csumAt, incompatAt = 1024, 1024 + 1020, 1024 + 0x60
	corruptions := map[string]func(sb []byte){
		"torn checksum": func(sb []byte) { sb[csumAt-sbAt] ^= 0xff },
		"bad magic":     func(sb []byte) { sb[0x38] = 0 },
		"unknown incompat feature, valid checksum": func(sb []byte) {
			f := binary.LittleEndian.Uint32(sb[incompatAt-sbAt:])
			binary.LittleEndian.PutUint32(sb[incompatAt-sbAt:], f|1<<31)
			sum := ^crc32.Checksum(sb[:1020], crc32.MakeTable(crc32.Castagnoli))
			binary.LittleEndian.PutUint32(sb[1020:], sum)
		},
	}
	sizes := map[string]int64{"1 KiB blocks": 64 << 20, "4 KiB blocks": 1 << 30}
	for sizeName, size := range sizes {
		for name, corrupt := range corruptions {
			t.Run(sizeName+"/"+name, func(t *testing.T) {
				img := filepath.Join(t.TempDir(), "disk.img")
				f, err := os.Create(img)
				if err == nil {
					err = f.Truncate(size)
				}
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				mkfs := loopFsTypes["ext4"].mkfs
				if out, err := exec.Command(mkfs[0], append(mkfs[1:], img)...).CombinedOutput(); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				sb := make([]byte, 1024)
				if _, err := f.ReadAt(sb, sbAt); err != nil {
					t.Fatal(err)
				}
				corrupt(sb)
				if _, err := f.WriteAt(sb, sbAt); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command("e2fsck", "-f", "-p", img).CombinedOutput(); exitStatus(err) != 8 {
					t.Fatalf("e2fsck -f -p on the damaged image: %v, want exit 8: %s", err, out)
				}
				var repaired int
				fsRepairedFromBackup = func(string) { repaired++ }
				defer func() { fsRepairedFromBackup = nil }()
				if err := repairInterruptedGrow(context.Background(), img); err != nil {
					t.Fatal(err)
				}
				if repaired != 1 {
					t.Errorf("%d repairs from a backup superblock reported, want 1", repaired)
				}
				if out, err := exec.Command("e2fsck", "-f", "-n", img).CombinedOutput(); err != nil {
					t.Fatalf("e2fsck -fn after the repair: %v: %s", err, out)
				}
				if fsBytes, err := filesystemBytes(f, "ext4"); err != nil || fsBytes != size {
					t.Fatalf("repaired ext4 is %d bytes (%v), want %d", fsBytes, err, size)
				}
			})
		}
	}
}

// TestRepairInterruptedGrowGivesUp: with no ext4 to find, primary or
// backup, the repair fails with e2fsck's own words rather than guessing.
func TestRepairInterruptedGrowGivesUp(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 16<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	err := repairInterruptedGrow(context.Background(), img)
	if err == nil || !strings.Contains(err.Error(), "nor any backup superblock") {
		t.Fatalf("repair of a zeroed image: %v, want it to fail naming the backups", err)
	}
}
