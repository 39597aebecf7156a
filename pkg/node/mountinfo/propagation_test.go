package mountinfo

import (
	"os"
	"path/filepath"
	"testing"
)

// TestPropagation reads each kind from a mount table as the kernel writes
// it (shared+slave, as a Bidirectional mount under a slave root shows).
func TestPropagation(t *testing.T) {
	table := `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 7:3 / /mnt/shared rw,relatime shared:5 - xfs /dev/loop3 rw
31 22 7:3 / /mnt/slave rw,relatime master:5 - xfs /dev/loop3 rw
32 22 7:3 / /mnt/both rw,relatime shared:9 master:5 - xfs /dev/loop3 rw
33 22 7:3 / /mnt/private rw,relatime - xfs /dev/loop3 rw
34 22 7:3 / /mnt/unbindable rw,relatime unbindable - xfs /dev/loop3 rw
35 22 7:3 / /mnt/propagate-from rw,relatime master:5 propagate_from:2 - xfs /dev/loop3 rw
`
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	infos, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"/": Shared, "/mnt/shared": Shared, "/mnt/slave": Slave, "/mnt/both": Shared,
		"/mnt/private": Private, "/mnt/unbindable": Unbindable, "/mnt/propagate-from": Slave,
	}
	for i := range infos {
		mi := &infos[i]
		if got := Propagation(mi); got != want[mi.MountPoint] {
			t.Errorf("%s (%v): %q, want %q", mi.MountPoint, mi.OptionalFields, got, want[mi.MountPoint])
		}
	}
	// A pool directory below a mount takes that mount's propagation.
	if mi, _, ok := Holder(infos, "/mnt/private/dhpp"); !ok || Propagation(mi) != Private {
		t.Errorf("holder of /mnt/private/dhpp: %+v %v", mi, ok)
	}
}
