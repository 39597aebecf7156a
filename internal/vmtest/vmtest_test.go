package vmtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

const mib = 1 << 20

func hostRelease() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return ""
	}
	return utsString(u.Release[:])
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// TestVMKernelAndDisks proves the guest runs the Debian kernel, not the
// host's, and sees each configured disk with its exact size.
func TestVMKernelAndDisks(t *testing.T) {
	t.Parallel()
	disks := []int64{64 * mib, 96 * mib, 1 << 30}
	if !Run(t, Config{Disks: disks, Env: map[string]string{"VMTEST_HOST_RELEASE": hostRelease()}}) {
		return
	}
	guest, host := hostRelease(), os.Getenv("VMTEST_HOST_RELEASE")
	if host == "" || guest == host {
		t.Fatalf("guest kernel %q must differ from the host's %q", guest, host)
	}
	if !strings.HasSuffix(guest, "-amd64") {
		t.Errorf("guest kernel %q is not a Debian amd64 kernel", guest)
	}
	t.Logf("host kernel %s, guest kernel %s", host, guest)
	for i, want := range disks {
		name := fmt.Sprintf("vd%c", 'a'+i)
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("/sys/block", name, "size"))
			if err != nil {
				t.Fatalf("disk %s: %v", name, err)
			}
			sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			if got := sectors * 512; got != want {
				t.Errorf("/dev/%s is %d bytes, want %d", name, got, want)
			}
			f, err := os.Open("/dev/" + name)
			if err != nil {
				t.Fatalf("open /dev/%s: %v", name, err)
			}
			defer f.Close()
			if end, err := f.Seek(0, 2); err != nil || end != want {
				t.Errorf("seek to the end of /dev/%s: %d, %v; want %d", name, end, err, want)
			}
		})
	}
	if _, err := os.Stat(fmt.Sprintf("/sys/block/vd%c", 'a'+len(disks))); err == nil {
		t.Errorf("the guest has more disks than configured")
	}
}

// mkfsMount makes a filesystem on dev and mounts it on a fresh directory
// with the given options; the mount is removed when the test ends.
func mkfsMount(t *testing.T, dev, fstype, opts string, mkfsArgs ...string) string {
	t.Helper()
	testdisk.Run(t, "mkfs."+fstype, append(mkfsArgs, dev)...)
	// Not t.TempDir: its parents are 0700 and tests write as nobody.
	mnt, err := os.MkdirTemp("/mnt", fstype+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"-t", fstype}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	testdisk.Run(t, "mount", append(args, dev, mnt)...)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
			return
		}
		os.Remove(mnt)
	})
	return mnt
}

// writeFile writes size bytes in 1 MiB chunks and fsyncs, returning how
// many bytes the kernel accepted and the first error.
func writeFile(path string, size int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{0xa5}, mib)
	var n int64
	for n < size {
		w, err := f.Write(chunk)
		n += int64(w)
		if err != nil {
			return n, err
		}
	}
	return n, f.Sync()
}

// TestVMXFSProjectQuota proves XFS project quota in the guest kernel: a
// directory in project 42 with a 10 MiB hard limit stops a 20 MiB write at
// 10 MiB with ENOSPC (XFS's errno for an exceeded project quota).
func TestVMXFSProjectQuota(t *testing.T) {
	t.Parallel()
	if !Run(t, Config{Disks: []int64{512 * mib}}) {
		return
	}
	mnt := mkfsMount(t, "/dev/vda", "xfs", "prjquota", "-f", "-q")
	vol := filepath.Join(mnt, "vol")
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	testdisk.Run(t, "xfs_quota", "-x", "-c", "project -s -p "+vol+" 42", "-c", "limit -p bhard=10m 42", mnt)
	n, err := writeFile(filepath.Join(vol, "big"), 20*mib)
	t.Logf("wrote %d bytes before %v", n, err)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("20 MiB write into a 10 MiB project: error %v, want ENOSPC", err)
	}
	if n < 9*mib || n > 10*mib {
		t.Errorf("the write stopped at %d bytes, want about 10 MiB", n)
	}
	report := testdisk.Run(t, "xfs_quota", "-x", "-c", "report -p -b -N", mnt)
	if !strings.Contains(report, "#42") {
		t.Errorf("xfs_quota report does not list project 42:\n%s", report)
	}
	// Outside the project the same write is fine: the limit, not the disk,
	// stopped it.
	if n, err := writeFile(filepath.Join(mnt, "free"), 20*mib); err != nil {
		t.Errorf("20 MiB outside the project: %d bytes, %v", n, err)
	}
}

// TestVMExt4ProjectQuota proves ext4 project quota: with -O quota,project
// and a 10 MiB limit on project 42, an unprivileged writer gets EDQUOT
// (root would not: CAP_SYS_RESOURCE ignores ext4 quota).
func TestVMExt4ProjectQuota(t *testing.T) {
	t.Parallel()
	if !Run(t, Config{Disks: []int64{128 * mib}}) {
		return
	}
	// -I 256: project quota keeps the project id in the inode's extra
	// space, which mke2fs leaves out of 128-byte inodes on small disks.
	mnt := mkfsMount(t, "/dev/vda", "ext4", "prjquota", "-F", "-q", "-I", "256", "-O", "quota,project")
	vol := filepath.Join(mnt, "vol")
	if err := os.Mkdir(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	testdisk.Run(t, "chattr", "+P", "-p", "42", vol)
	testdisk.Run(t, "setquota", "-P", "42", "0", "10240", "0", "0", mnt)

	dd := func(name string, count int) ([]byte, error) {
		return RunAs(NobodyUID, NobodyGID, "dd", "if=/dev/zero", "of="+filepath.Join(vol, name),
			"bs=1M", "count="+strconv.Itoa(count), "conv=fsync")
	}
	tests := []struct {
		name      string
		mib       int
		wantQuota bool
	}{
		{"under-limit", 4, false},
		{"over-limit", 20, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := dd(tc.name, tc.mib)
			hitQuota := err != nil && strings.Contains(strings.ToLower(string(out)), syscall.EDQUOT.Error())
			if hitQuota != tc.wantQuota || (err != nil && !hitQuota) {
				t.Fatalf("nobody writing %d MiB: err %v, output %q; want quota error %v", tc.mib, err, out, tc.wantQuota)
			}
		})
	}
	// The limit is on the project, both files together.
	var total int64
	for _, tc := range tests {
		st, err := os.Stat(filepath.Join(vol, tc.name))
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	if total < 9*mib || total > 10*mib {
		t.Errorf("the project holds %d bytes, want about the 10 MiB limit", total)
	}
	t.Logf("the project stopped at %d bytes", total)
	t.Log(testdisk.Run(t, "repquota", "-P", "-s", mnt))
}

func mdstat(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/mdstat")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestVMRAID10 proves md RAID10 over four virtio disks: active with all
// members, holds a filesystem, and one failed member leaves it degraded but
// writable.
func TestVMRAID10(t *testing.T) {
	t.Parallel()
	if !Run(t, Config{Disks: []int64{64 * mib, 64 * mib, 64 * mib, 64 * mib}}) {
		return
	}
	// --assume-clean: the disks are all zeroes, so the initial resync
	// would copy nothing useful and only burn emulated CPU.
	testdisk.Run(t, "mdadm", "--create", "/dev/md0", "--run", "--level=10", "--raid-devices=4", "--assume-clean",
		"/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdd")
	t.Cleanup(func() {
		// A running array must be stopped before poweroff.
		if out, err := exec.Command("mdadm", "--stop", "/dev/md0").CombinedOutput(); err != nil {
			t.Errorf("mdadm --stop: %v: %s", err, out)
		}
	})
	if s := mdstat(t); !strings.Contains(s, "active raid10") || !strings.Contains(s, "[4/4] [UUUU]") {
		t.Fatalf("md0 is not an active, complete RAID10:\n%s", s)
	}
	mnt := mkfsMount(t, "/dev/md0", "ext4", "", "-F", "-q")
	before := bytes.Repeat([]byte("before"), mib/6)
	if err := os.WriteFile(filepath.Join(mnt, "before"), before, 0o644); err != nil {
		t.Fatal(err)
	}
	testdisk.Run(t, "sync")

	testdisk.Run(t, "mdadm", "/dev/md0", "--fail", "/dev/vdb")
	s := mdstat(t)
	if !strings.Contains(s, "[4/3]") || !strings.Contains(s, "(F)") {
		t.Fatalf("after --fail md0 is not degraded:\n%s", s)
	}
	t.Logf("degraded:\n%s", s)
	if detail := testdisk.Run(t, "mdadm", "--detail", "/dev/md0"); !strings.Contains(detail, "degraded") {
		t.Errorf("mdadm --detail does not say degraded:\n%s", detail)
	}
	if n, err := writeFile(filepath.Join(mnt, "after"), 8*mib); err != nil {
		t.Fatalf("write on the degraded array: %d bytes, %v", n, err)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "before"))
	if err != nil || !bytes.Equal(got, before) {
		t.Fatalf("data written before the failure does not read back: %v", err)
	}
}

// directIO opens path with O_DIRECT and returns it with a page-aligned
// 1 MiB buffer (O_DIRECT needs aligned memory; mmap gives it).
func directIO(t *testing.T, path string, flag int) (*os.File, []byte) {
	t.Helper()
	f, err := os.OpenFile(path, flag|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open %s O_DIRECT: %v", path, err)
	}
	buf, err := syscall.Mmap(-1, 0, mib, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); syscall.Munmap(buf) })
	return f, buf
}

// TestVMDmFlakeyEIO proves write errors under a filesystem on demand:
// dm-flakey with error_writes makes a 1 MiB O_DIRECT write fail with EIO
// while O_DIRECT reads of existing data still succeed.
func TestVMDmFlakeyEIO(t *testing.T) {
	t.Parallel()
	if !Run(t, Config{Disks: []int64{64 * mib}}) {
		return
	}
	sectors := strings.TrimSpace(testdisk.Run(t, "blockdev", "--getsz", "/dev/vda"))
	linear := "0 " + sectors + " linear /dev/vda 0"
	// up 0 s, down 3600 s: failing from the moment the table is loaded.
	failing := "0 " + sectors + " flakey /dev/vda 0 0 3600 1 error_writes"
	testdisk.Run(t, "dmsetup", "create", "pool", "--table", linear)
	t.Cleanup(func() {
		if out, err := exec.Command("dmsetup", "remove", "pool").CombinedOutput(); err != nil {
			t.Errorf("dmsetup remove: %v: %s", err, out)
		}
	})
	load := func(table string) {
		// --nolockfs: freezing the filesystem would flush it, and with
		// writes failing that flush fails and the suspend with it.
		testdisk.Run(t, "dmsetup", "suspend", "--nolockfs", "pool")
		testdisk.Run(t, "dmsetup", "reload", "pool", "--table", table)
		testdisk.Run(t, "dmsetup", "resume", "pool")
	}
	// errors=continue: a failed write must not remount the filesystem
	// read-only; dhpp's disks fail with EIO, not with remounts.
	mnt := mkfsMount(t, "/dev/mapper/pool", "ext4", "errors=continue", "-F", "-q")
	data := filepath.Join(mnt, "data")
	if _, err := writeFile(data, mib); err != nil {
		t.Fatal(err)
	}

	load(failing)
	t.Log(testdisk.Run(t, "dmsetup", "table", "pool"))
	w, wbuf := directIO(t, data, os.O_WRONLY)
	for i := range wbuf {
		wbuf[i] = 0x5a
	}
	if n, err := w.WriteAt(wbuf, 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("1 MiB O_DIRECT write on error_writes: %d bytes, %v; want EIO", n, err)
	}
	r, rbuf := directIO(t, data, os.O_RDONLY)
	if n, err := r.ReadAt(rbuf, 0); err != nil || n != mib {
		t.Errorf("O_DIRECT read on error_writes: %d bytes, %v; want 1 MiB", n, err)
	} else if !bytes.Equal(rbuf, bytes.Repeat([]byte{0xa5}, mib)) {
		t.Errorf("O_DIRECT read returned other data than was written")
	}

	load(linear)
	if n, err := w.WriteAt(wbuf, 0); err != nil {
		t.Errorf("O_DIRECT write after the fault is removed: %d bytes, %v", n, err)
	}
}

// TestVMHarnessFailures proves the harness cannot pass a VM test that did
// not pass in the VM: it reruns this test binary on TestVMSelfTestTarget,
// whose guest body fails or hangs, and expects the host test to fail with
// the matching reason.
func TestVMHarnessFailures(t *testing.T) {
	if os.Getenv("VMTEST_SELFTEST") != "" {
		t.Skip("already inside the self-test")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ mode, want string }{
		{"fail", "the test failed inside the VM with exit code 1"},
		{"hang", "did not finish within 15s and was killed"},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(exe, "-test.run", "^TestVMSelfTestTarget$", "-test.v")
			cmd.Env = append(os.Environ(), "VMTEST_SELFTEST="+tc.mode)
			out, err := cmd.CombinedOutput()
			if bytes.Contains(out, []byte("--- SKIP")) {
				t.Skipf("the VM is not available here:\n%s", out)
			}
			if err == nil {
				t.Fatalf("a guest that should %s passed on the host:\n%s", tc.mode, out)
			}
			if !bytes.Contains(out, []byte(tc.want)) {
				t.Fatalf("host output lacks %q:\n%s", tc.want, out)
			}
		})
	}
}

// TestVMSelfTestTarget misbehaves in the VM on purpose; it runs only when
// TestVMHarnessFailures starts it.
func TestVMSelfTestTarget(t *testing.T) {
	mode := os.Getenv("VMTEST_SELFTEST")
	if mode == "" {
		t.Skip("run only by TestVMHarnessFailures")
	}
	cfg := Config{Env: map[string]string{"VMTEST_SELFTEST": mode}}
	if mode == "hang" {
		cfg.Timeout = 15 * time.Second
	}
	if !Run(t, cfg) {
		return
	}
	switch mode {
	case "fail":
		t.Fatal("failing on purpose")
	case "hang":
		time.Sleep(time.Hour)
	}
}
