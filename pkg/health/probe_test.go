package health

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestClassify(t *testing.T) {
	pathErr := func(e error) error {
		return fmt.Errorf("write probe file: %w", &fs.PathError{Op: "pwrite", Path: "/p/.dhpp/health", Err: e})
	}
	tests := []struct {
		err  error
		want Reason
	}{
		{nil, ""},
		{pathErr(unix.EROFS), ReasonReadOnly},
		{pathErr(unix.ENOSPC), ReasonNoSpace},
		{pathErr(unix.EDQUOT), ReasonNoSpace},
		{pathErr(unix.EIO), ReasonIOError},
		{pathErr(unix.ENXIO), ReasonIOError},
		{pathErr(unix.EUCLEAN), ReasonIOError},
		{pathErr(unix.ESTALE), ReasonIOError},
		{fmt.Errorf("read back: %w", io.ErrUnexpectedEOF), ReasonIOError},
		{pathErr(unix.ENOENT), ReasonMissing},
		{pathErr(unix.ENOTDIR), ReasonMissing},
		{fmt.Errorf("not re-creating: %w", errWrongDevice), ReasonMissing},
		{fmt.Errorf("at offset 7: %w", errMismatch), ReasonMismatch},
		{pathErr(unix.EACCES), ReasonOther},
		{errors.New("something odd"), ReasonOther},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.err), func(t *testing.T) {
			if got := classify(tc.err); got != tc.want {
				t.Errorf("classify(%v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}

func TestFirstDiff(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"abc", "abc", -1},
		{"abc", "abd", 2},
		{"xbc", "abc", 0},
		{"abc", "ab", 2},
	}
	for _, tc := range tests {
		if got := firstDiff([]byte(tc.a), []byte(tc.b)); got != tc.want {
			t.Errorf("firstDiff(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestAlignedBuf(t *testing.T) {
	for _, n := range []int{4096, 1 << 20} {
		b := alignedBuf(n)
		if len(b) != n || cap(b) != n {
			t.Errorf("alignedBuf(%d): len %d cap %d", n, len(b), cap(b))
		}
		if addr := uintptrOf(b); addr%directIOAlign != 0 {
			t.Errorf("alignedBuf(%d) starts at %#x, not %d-aligned", n, addr, directIOAlign)
		}
	}
}

// newTestProber returns a prober for <tmp>/pool/.dhpp/health with the pool
// directory created, as the driver's pool code would have done.
func newTestProber(t *testing.T, size int, buffered bool) (*fileProber, string) {
	t.Helper()
	pool := filepath.Join(t.TempDir(), "pool")
	if err := os.Mkdir(pool, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := newFileProber(filepath.Join(pool, ".dhpp", "health"), size)
	if err != nil {
		t.Fatal(err)
	}
	p.forceBuffered = buffered
	return p, pool
}

// TestProbeRealFile runs the probe against a real file in the test's temp
// directory (no root needed), in both I/O modes.
func TestProbeRealFile(t *testing.T) {
	for _, buffered := range []bool{false, true} {
		t.Run(fmt.Sprintf("buffered=%v", buffered), func(t *testing.T) {
			const size = 256 << 10
			p, _ := newTestProber(t, size, buffered)
			for i := 0; i < 3; i++ {
				if err := p.probe(); err != nil {
					t.Fatalf("probe %d: %v", i, err)
				}
			}
			if !buffered && !p.direct {
				t.Logf("O_DIRECT not supported on the temp dir's filesystem; fell back to fdatasync")
			}
			if buffered && p.direct {
				t.Errorf("forceBuffered prober still uses O_DIRECT")
			}
			var st unix.Stat_t
			if err := unix.Stat(p.path, &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != size {
				t.Errorf("probe file size %d, want %d", st.Size, size)
			}
			if st.Blocks*512 < size {
				t.Errorf("probe file has %d bytes allocated, want >= %d (preallocated)", st.Blocks*512, size)
			}
			// The data on disk is the last probe's data.
			got, err := os.ReadFile(p.path)
			if err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(p.wbuf, got); i >= 0 {
				t.Errorf("file content differs from the last probe's data at offset %d", i)
			}
		})
	}
}

// TestProbeMissingFile: the prober must not re-create a vanished probe file
// or directory on its own (it may be probing the wrong disk), only after
// allowRecreate, and never create a missing pool directory.
func TestProbeMissingFile(t *testing.T) {
	tests := []struct {
		name   string
		remove func(p *fileProber, pool string) error
	}{
		{"file removed", func(p *fileProber, _ string) error { return os.Remove(p.path) }},
		{"probe dir removed", func(p *fileProber, _ string) error { return os.RemoveAll(filepath.Dir(p.path)) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, pool := newTestProber(t, 64<<10, false)
			if err := p.probe(); err != nil {
				t.Fatalf("first probe: %v", err)
			}
			if err := tc.remove(p, pool); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ {
				err := p.probe()
				if r := classify(err); r != ReasonMissing {
					t.Fatalf("probe after removal: %v (reason %q), want reason missing", err, r)
				}
			}
			if _, err := os.Stat(p.path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("probe re-created %s without allowRecreate (stat err %v)", p.path, err)
			}
			p.allowRecreate()
			if err := p.probe(); err != nil {
				t.Fatalf("probe after allowRecreate: %v", err)
			}
			if err := p.probe(); err != nil {
				t.Fatalf("second probe after allowRecreate: %v", err)
			}
		})
	}
}

func TestProbeMissingPoolDirNotCreated(t *testing.T) {
	pool := filepath.Join(t.TempDir(), "never-created")
	p, err := newFileProber(filepath.Join(pool, ".dhpp", "health"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	if r := classify(p.probe()); r != ReasonMissing {
		t.Fatalf("probe with missing pool dir: reason %q, want missing", r)
	}
	if _, err := os.Stat(pool); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("probe created the missing pool directory %s", pool)
	}
}

func TestNearestDev(t *testing.T) {
	dir := t.TempDir()
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	got, err := nearestDev(filepath.Join(dir, "a", "b", "c"))
	if err != nil {
		t.Fatal(err)
	}
	if got != st.Dev {
		t.Errorf("nearestDev = %d, want %d", got, st.Dev)
	}
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
