package node

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFillHolesKeepsData: filling a sparse file's holes leaves every byte
// it had (data written at scattered offsets, some ending off a block
// boundary) and writes zeros only where it read zeros, so that afterwards
// the file has no hole. This is what makes writing through an image
// holding a filesystem safe.
func TestFillHolesKeepsData(t *testing.T) {
	const size = 64 * mib
	path := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, r := range []struct{ off, n int64 }{{0, 4096}, {5 * mib, 100}, {9*mib + 17, 3 * mib}, {40 * mib, mib}, {size - 512, 512}} {
		for i := r.off; i < r.off+r.n; i++ {
			want[i] = byte(rng.IntN(255) + 1)
		}
		if _, err := f.WriteAt(want[r.off:r.off+r.n], r.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if hole, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE); err != nil || hole >= size {
		// ext4, xfs, btrfs and tmpfs all report holes: a TMPDIR elsewhere
		// cannot test this, and CI's can.
		if os.Getenv("CI") == "true" {
			t.Fatalf("the temp directory's filesystem reports no hole in a sparse file (%d, %v); CI=true, so this is a failure", hole, err)
		}
		t.Skipf("the temp directory's filesystem reports no hole in a sparse file (%d, %v): nothing to test", hole, err)
	}
	if err := fillHoles(context.Background(), f); err != nil {
		t.Fatalf("fillHoles: %v", err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("byte %d is %#x after fillHoles, was %#x", i, got[i], want[i])
			}
		}
	}
	if hole, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE); err != nil || hole != size {
		t.Errorf("after fillHoles the first hole is at %d (%v), want none before the end (%d)", hole, err, size)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Blocks*512 < size {
		t.Errorf("%d of %d bytes allocated after fillHoles (%v)", st.Blocks*512, size, err)
	}
}
