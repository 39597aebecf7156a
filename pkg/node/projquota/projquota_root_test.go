package projquota

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

// TestProjectIDsOnHost checks what works on any kernel, quota or not: the
// filesystem is identified, XFS keeps a project id and passes it on to new
// children, ext4 without the project feature refuses with ErrUnsupported,
// and other filesystems are ErrUnsupported from the start.
func TestProjectIDsOnHost(t *testing.T) {
	testdisk.RequireRoot(t)
	cases := []struct {
		fs         string
		size       int64
		openErr    bool
		setProjErr bool
	}{
		{"xfs", 320 * mib, false, false},
		{"ext4", 32 * mib, false, true}, // testdisk's mkfs.ext4 has no -O project
		{"btrfs", 128 * mib, true, false},
	}
	for _, c := range cases {
		t.Run(c.fs, func(t *testing.T) {
			d := testdisk.New(t, c.fs, c.size)
			root, err := os.Open(d.Dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			q, err := Open(root, "")
			if c.openErr {
				if !errors.Is(err, ErrUnsupported) {
					t.Fatalf("Open on %s = %v, want ErrUnsupported", c.fs, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if string(q.Type()) != c.fs || q.Mount().Source != d.Device {
				t.Fatalf("Open: type %s, mount %+v; want %s on %s", q.Type(), q.Mount(), c.fs, d.Device)
			}
			// Mounted without prjquota: never enforced, whatever the kernel has.
			if st, err := q.State(); err != nil || st.Enforced {
				t.Fatalf("State without prjquota = %+v, %v", st, err)
			}
			dir := filepath.Join(d.Dir, "vol")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = SetProject(f, 123456)
			if c.setProjErr {
				if !errors.Is(err, ErrUnsupported) {
					t.Fatalf("SetProject = %v, want ErrUnsupported", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("SetProject: %v", err)
			}
			if id, inherit, err := GetProject(f); err != nil || id != 123456 || !inherit {
				t.Fatalf("GetProject = %d, %v, %v", id, inherit, err)
			}
			child := filepath.Join(dir, "child")
			if err := os.Mkdir(child, 0o755); err != nil {
				t.Fatal(err)
			}
			cf, err := os.Open(child)
			if err != nil {
				t.Fatal(err)
			}
			defer cf.Close()
			if id, inherit, err := GetProject(cf); err != nil || id != 123456 || !inherit {
				t.Fatalf("child GetProject = %d, %v, %v; want the parent's id, inherited", id, inherit, err)
			}
		})
	}
}
