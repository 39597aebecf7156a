package benchio

import (
	"bytes"
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// TestBtrfsSimpleQuotaLimit answers issue 14's question whether dhpp can
// use btrfs simple quotas (kernel 6.7+), which the benchmark compares with
// full qgroups: on a filesystem where the operator enabled them before
// dhpp opened the pool, the btrfs backend keeps them (it enables quotas
// only when they are off), and a volume's size is still enforced: writes
// past it fail with EDQUOT.
func TestBtrfsSimpleQuotaLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("needs root and loop devices")
	}
	d := testdisk.New(t, "btrfs", 512<<20)
	if err := enableSimpleQuota(d.Dir); err != nil {
		t.Fatalf("enable btrfs simple quota (kernel 6.7+): %v", err)
	}
	b := newBench(t)
	m := manager(t, d.Dir, node.BackendBtrfs)
	// The pool is open: the mode must still be simple quotas.
	out, err := osexec.Command("blkid", "-s", "UUID", "-o", "value", d.Device).Output()
	if err != nil {
		t.Fatalf("blkid %s: %v", d.Device, err)
	}
	mode, err := os.ReadFile(filepath.Join("/sys/fs/btrfs", strings.TrimSpace(string(out)), "qgroups/mode"))
	if err != nil || strings.TrimSpace(string(mode)) != "squota" {
		t.Fatalf("quota mode after dhpp opened the pool: %q (%v), want squota", mode, err)
	}
	const size = 16 << 20
	tg := b.volume(t, m, "squota", node.CreateRequest{RequiredBytes: size})

	n, err := writeUntil(filepath.Join(tg.Path, "f"), 4*size)
	if !errors.Is(err, syscall.EDQUOT) {
		t.Fatalf("wrote %d bytes into a %d-byte volume, error %v; want EDQUOT near the size", n, size, err)
	}
	if n < size-4<<20 || n > size {
		t.Errorf("EDQUOT after %d bytes, want it close below the %d-byte size", n, size)
	}
}

// writeUntil writes 1 MiB blocks, syncing every 4 MiB so the quota sees
// them, until an error or max bytes.
func writeUntil(path string, max int64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0x5a}, 1<<20)
	var n int64
	for n < max {
		w, err := f.Write(buf)
		n += int64(w)
		if err == nil && n%(4<<20) == 0 {
			err = f.Sync()
		}
		if err != nil {
			return n, err
		}
	}
	return n, f.Sync()
}
