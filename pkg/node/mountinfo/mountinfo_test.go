package mountinfo

import (
	"os"
	"path/filepath"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		"/plain":                     "/plain",
		`/with\040space`:             "/with space",
		`/tab\011and\012newline`:     "/tab\tand\nnewline",
		`/back\134slash`:             `/back\slash`,
		`/a\134b`:                    `/a\b`,
		`/not\04`:                    `/not\04`,
		`/end\04`:                    `/end\04`,
		`/bad\999escape`:             `/bad\999escape`,
		`/bad\9x1`:                   `/bad\9x1`,
		`/pods/x/volumes/a\040b/mnt`: "/pods/x/volumes/a b/mnt",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRead: every path field comes back unescaped, the rest as mount-utils
// parses it.
func TestRead(t *testing.T) {
	table := `22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l
31 22 7:3 /dhpp\040data /var/lib/dhpp\040pool rw,relatime shared:5 - xfs /dev/disk\040one rw,attr2,prjquota
`
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	infos, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 {
		t.Fatalf("Read returned %d entries, want 2: %+v", len(infos), infos)
	}
	got := infos[1]
	if got.MountPoint != "/var/lib/dhpp pool" || got.Root != "/dhpp data" || got.Source != "/dev/disk one" {
		t.Errorf("paths not unescaped: mount point %q, root %q, source %q", got.MountPoint, got.Root, got.Source)
	}
	if got.Major != 7 || got.Minor != 3 || got.FsType != "xfs" || len(got.SuperOptions) != 3 || got.SuperOptions[2] != "prjquota" {
		t.Errorf("entry parsed wrongly: %+v", got)
	}
	if _, err := Read(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("Read of a missing table succeeded")
	}
}
