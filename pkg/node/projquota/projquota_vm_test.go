package projquota

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dhpp-io/dhpp/internal/vmtest"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

// TestProjectQuotaVM proves the syscall plumbing against the real kernel
// code of both filesystems (this host's kernel has no XFS/ext4 quota): a
// project id with the inherit flag, a limit that stops an unprivileged
// writer, usage and inode counts, a raised limit, a removed limit, and the
// enforcement state with and without the prjquota mount option.
func TestProjectQuotaVM(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: []int64{320 * mib, 64 * mib}}) {
		return
	}
	cases := []struct {
		fs   FSType
		dev  string
		mkfs []string
		// quotaErr is how the filesystem reports an exceeded project quota.
		quotaErr string
	}{
		{XFS, "/dev/vda", []string{"mkfs.xfs", "-q", "-f"}, "No space left on device"},
		{Ext4, "/dev/vdb", []string{"mkfs.ext4", "-q", "-F", "-O", "quota,project"}, "Disk quota exceeded"},
	}
	for _, c := range cases {
		t.Run(string(c.fs), func(t *testing.T) {
			run(t, append(c.mkfs, c.dev)...)
			mnt := mountDisk(t, c.dev, string(c.fs), "prjquota")
			root, err := os.Open(mnt)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			q, err := Open(root, "")
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if q.Type() != c.fs || q.Mount().Source != c.dev || !q.Mount().ProjectQuotaOption() {
				t.Fatalf("Open: type %s, mount %+v", q.Type(), q.Mount())
			}
			st, err := q.State()
			if err != nil || !st.Enforced || !st.Accounting {
				t.Fatalf("State with prjquota = %+v, %v; want accounted and enforced", st, err)
			}

			const id = 4242
			dir := filepath.Join(mnt, "vol")
			if err := os.Mkdir(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			d, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := SetProject(d, id); err != nil {
				t.Fatalf("SetProject: %v", err)
			}
			if got, inherit, err := GetProject(d); err != nil || got != id || !inherit {
				t.Fatalf("GetProject = %d, %v, %v; want %d with inherit", got, inherit, err, id)
			}
			if err := q.SetLimit(id, 8*mib); err != nil {
				t.Fatalf("SetLimit: %v", err)
			}
			if got, err := q.Get(id); err != nil || got.BytesLimit != 8*mib {
				t.Fatalf("Get after SetLimit = %+v, %v; want an 8 MiB limit", got, err)
			}

			// An unprivileged writer stops at the limit (ext4 lets root past it).
			file := filepath.Join(dir, "big")
			n, out := writeAsNobody(t, file, 16)
			if !strings.Contains(out, c.quotaErr) || n > 8*mib || n < 6*mib {
				t.Fatalf("wrote %d bytes into an 8 MiB project: %s", n, out)
			}
			t.Logf("write stopped after %.1f MiB of an 8 MiB limit: %s", float64(n)/mib, strings.TrimSpace(out))
			sub, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			if got, _, err := GetProject(sub); err != nil || got != id {
				t.Errorf("new file's project = %d, %v; want %d inherited", got, err, id)
			}
			sub.Close()
			u, err := q.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			if u.BytesUsed < uint64(n) || u.BytesUsed > 8*mib || u.InodesUsed < 2 {
				t.Fatalf("usage %+v after writing %d bytes: want about that many bytes and 2 inodes (dir, file)", u, n)
			}

			// A raised limit lets the writer go on.
			if err := q.SetLimit(id, 24*mib); err != nil {
				t.Fatal(err)
			}
			if n, out := writeAsNobody(t, filepath.Join(dir, "more"), 8); n != 8*mib {
				t.Fatalf("after raising the limit wrote %d of 8 MiB: %s", n, out)
			}
			// The quotactl(2) path for kernels without quotactl_fd: the
			// same answers through the block device.
			dev := *q
			dev.deviceOnly = true
			if st, err := dev.State(); err != nil || !st.Enforced {
				t.Fatalf("State through %s = %+v, %v", c.dev, st, err)
			}
			if err := dev.SetLimit(id, 32*mib); err != nil {
				t.Fatalf("SetLimit through %s: %v", c.dev, err)
			}
			viaFD, err1 := q.Get(id)
			viaDev, err2 := dev.Get(id)
			if err1 != nil || err2 != nil || viaFD != viaDev || viaDev.BytesLimit != 32*mib {
				t.Fatalf("Get through the fd = %+v, %v; through %s = %+v, %v; want equal, 32 MiB limit", viaFD, err1, c.dev, viaDev, err2)
			}
			// Removing the limit leaves usage accounted but unlimited.
			if err := q.SetLimit(id, 0); err != nil {
				t.Fatal(err)
			}
			if u, err := q.Get(id); err != nil || u.BytesLimit != 0 || u.BytesUsed < 8*mib {
				t.Fatalf("after removing the limit: %+v, %v", u, err)
			}
			if u, err := q.Get(id + 1); err != nil || !u.Empty() {
				t.Fatalf("an unused project = %+v, %v; want empty", u, err)
			}

			// Without prjquota the kernel does not enforce, and says so.
			d.Close()
			root.Close()
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Fatal(err)
			}
			mountAt(t, c.dev, mnt, string(c.fs), "")
			root2, err := os.Open(mnt)
			if err != nil {
				t.Fatal(err)
			}
			defer root2.Close()
			q2, err := Open(root2, "")
			if err != nil {
				t.Fatal(err)
			}
			st, err = q2.State()
			if err != nil || st.Enforced || q2.Mount().ProjectQuotaOption() {
				t.Fatalf("State without prjquota = %+v, %v (options %v); want not enforced", st, err, q2.Mount().Options)
			}
			t.Logf("without prjquota: %+v", st)
		})
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// mountDisk mounts dev on a new directory that the user nobody can reach
// (t.TempDir is 0700).
func mountDisk(t *testing.T, dev, fs, opts string) string {
	t.Helper()
	mnt, err := os.MkdirTemp("/mnt", fs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(mnt) })
	mountAt(t, dev, mnt, fs, opts)
	return mnt
}

func mountAt(t *testing.T, dev, mnt, fs, opts string) {
	t.Helper()
	if err := unix.Mount(dev, mnt, fs, 0, opts); err != nil {
		t.Fatalf("mount %s on %s -o %q: %v", dev, mnt, opts, err)
	}
	if err := os.Chmod(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
}

// writeAsNobody writes up to count MiB to path as the user nobody with
// busybox dd (fsync at the end) and returns the file's size and dd's output.
func writeAsNobody(t *testing.T, path string, count int) (int64, string) {
	t.Helper()
	out, err := vmtest.RunAs(vmtest.NobodyUID, vmtest.NobodyGID, "dd", "if=/dev/zero", "of="+path, "bs=1048576", "count="+itoa(count), "conv=fsync")
	st, serr := os.Stat(path)
	if serr != nil {
		t.Fatalf("dd as nobody: %v, %s; %v", err, out, serr)
	}
	if err != nil {
		return st.Size(), string(out) + err.Error()
	}
	return st.Size(), string(out)
}

func itoa(n int) string { return strconv.Itoa(n) }
