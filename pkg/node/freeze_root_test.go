package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	"golang.org/x/sys/unix"
)

// TestFreezeHoldsNoDescriptor: a filesystem frozen for a snapshot is not
// held open by the driver while the copy runs. A descriptor on a staged
// volume's mount for the length of the copy made a NodeUnstage right after
// the snapshot fail with "umount: target is busy" in the crash loop: a
// child the driver forked meanwhile (mount, mkfs of another volume) keeps
// a copy of it until its exec, after the driver's own close.
func TestFreezeHoldsNoDescriptor(t *testing.T) {
	testdisk.RequireRoot(t)
	vol := testdisk.New(t, "ext4", 64<<20)
	pool := t.TempDir()
	root, err := os.OpenRoot(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	dst := volumeDir{st: &store{name: "p", path: pool, root: root}, rel: "snap"}
	must(t, root.Mkdir("snap", 0o700))

	thaw, err := freeze(dst, vol.Dir)
	if err != nil {
		t.Fatal(err)
	}
	frozen := true
	defer func() {
		if frozen {
			thaw()
		}
	}()
	if mp, err := root.ReadFile(filepath.Join("snap", frozenMarker)); err != nil || string(mp) != vol.Dir {
		t.Errorf("frozen marker: %q, %v; want %q", mp, err, vol.Dir)
	}
	// Frozen: FITHAW by another opener succeeds only on a frozen filesystem,
	// so check with FIFREEZE, which fails with EBUSY when already frozen.
	if err := mountIoctl(vol.Dir, ioctlFIFREEZE); err != unix.EBUSY {
		t.Errorf("FIFREEZE on the frozen filesystem: %v, want EBUSY (is it frozen?)", err)
	}
	if held := ownDescriptorsUnder(t, vol.Dir); len(held) > 0 {
		t.Errorf("the driver holds %v on the frozen mount while the copy would run", held)
	}
	thaw()
	frozen = false
	if err := mountIoctl(vol.Dir, ioctlFITHAW); err != unix.EINVAL {
		t.Errorf("FITHAW after thaw: %v, want EINVAL (still frozen?)", err)
	}
	if _, err := root.Stat(filepath.Join("snap", frozenMarker)); !os.IsNotExist(err) {
		t.Errorf("frozen marker left after thaw: %v", err)
	}
	if held := ownDescriptorsUnder(t, vol.Dir); len(held) > 0 {
		t.Errorf("the driver holds %v on the mount after thaw", held)
	}
}

// ownDescriptorsUnder lists this process's descriptors at or below dir.
func ownDescriptorsUnder(t *testing.T, dir string) []string {
	t.Helper()
	links, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, l := range links {
		if p, err := os.Readlink(l); err == nil && mountinfo.Within(p, dir) {
			held = append(held, l+" -> "+p)
		}
	}
	return held
}

// TestHoldersOf: the processes named in a "target is busy" or "still
// bound" error are those with a descriptor at or below the path, and only
// those (a sibling whose name extends the path's is not below it).
func TestHoldersOf(t *testing.T) {
	dir := t.TempDir()
	p, sibling := filepath.Join(dir, "staging"), filepath.Join(dir, "staging2")
	must(t, os.Mkdir(p, 0o755))
	must(t, os.Mkdir(sibling, 0o755))
	self := fmt.Sprint(os.Getpid())
	for _, tc := range []struct {
		open string
		want bool
	}{
		{p, true},
		{filepath.Join(p, "f"), true},
		{sibling, false},
	} {
		f, err := os.OpenFile(tc.open, os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil && !errors.Is(err, syscall.EISDIR) {
			t.Fatal(err)
		}
		if err != nil {
			f, err = os.Open(tc.open)
			if err != nil {
				t.Fatal(err)
			}
		}
		got := slices.ContainsFunc(holdersOf(p), func(h string) bool { return strings.HasPrefix(h, self+" ") })
		f.Close()
		if got != tc.want {
			t.Errorf("%s open: this process listed among holders of %s: %v, want %v", tc.open, p, got, tc.want)
		}
	}
}
