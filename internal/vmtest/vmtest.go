package vmtest

import (
	"bufio"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Config describes the VM of one test.
type Config struct {
	// Disks are the sizes in bytes of the sparse virtio disks the guest
	// sees as /dev/vda, /dev/vdb, ... (in order).
	Disks []int64
	// MemoryMiB is the guest's memory; 0 means 512.
	MemoryMiB int
	// Timeout bounds the whole VM run, boot included; 0 means 3 minutes.
	// It is also cut short to stay inside the go test deadline. When it
	// expires qemu is killed and the test fails.
	Timeout time.Duration
	// Env is added to the environment of the test binary in the guest.
	Env map[string]string
	// Tools are host programs the test needs beyond the image's (e.g.
	// "fio"): each is linked into the share with the libraries ldd names
	// that the image lacks, and is on the guest's PATH. They stay out of
	// the initramfs, which every VM test boots: fio alone brings 84 MB
	// of libraries.
	Tools []string
	// DiskCache is qemu's cache= mode of the disks; empty means "unsafe"
	// (writes land in the host's page cache, flushes are ignored: fast,
	// and nothing on the disks outlives the test). A benchmark uses
	// "none": O_DIRECT on the image, and a guest flush is an fdatasync
	// of the image on the host, so the guest's fsyncs cost what a disk's do.
	DiskCache string
	// OutDir, if set, is a host directory shared read-write at the same
	// path in the guest: where a guest test writes results the host
	// keeps (reports, samples).
	OutDir string
}

const (
	qbootROM         = "/usr/share/qemu/qboot.rom"
	defaultMemoryMiB = 512
	defaultTimeout   = 3 * time.Minute
	guestBinary      = "vmtest.test"
)

// hostSetup is what every VM of this process shares.
type hostSetup struct {
	qemu          string
	kernelVersion string
	vmlinux       string
	initramfs     string
	libs          map[string]bool // host paths of libraries in the initramfs
}

var (
	setupOnce sync.Once
	setup     *hostSetup
	setupErr  error
)

// Run makes the calling test's body run inside a VM. On the host it
// prepares the VM (packages, kernel, initramfs: once per process, cached on
// disk), boots it with the test binary on a 9p share, runs
// `<binary> -test.run '^<t.Name()>$' -test.v` as root in the guest,
// streams the guest's console into t.Log and fails t unless the guest test
// ran and exited 0. It returns false on the host, where the caller then
// returns, and true inside the VM, where the caller goes on with its body:
//
//	func TestX(t *testing.T) {
//		if !vmtest.Run(t, vmtest.Config{Disks: []int64{64 << 20}}) {
//			return
//		}
//		// runs in the VM, as root, with /dev/vda
//	}
//
// If the VM cannot be had (no root to install qemu, no kernel) the test is
// skipped locally and fails under CI=true.
func Run(t *testing.T, cfg Config) bool {
	t.Helper()
	if InVM() {
		markRan(t)
		return true
	}
	setupOnce.Do(func() {
		start := time.Now()
		setup, setupErr = prepareHost()
		if setupErr == nil {
			logf("host prepared in %.2fs", time.Since(start).Seconds())
		}
	})
	if setupErr != nil {
		skipOrFail(t, "vmtest: cannot prepare the VM: %v", setupErr)
		return false
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("vmtest: find the test binary: %v", err)
	}
	if err := setup.checkBinary(exe); err != nil {
		t.Fatalf("vmtest: %v", err)
	}
	res, err := boot(t, setup, exe, cfg)
	if err != nil {
		t.Fatalf("vmtest: %v", err)
	}
	t.Logf("vmtest: %s: boot %.2fs, total %.2fs, qemu max RSS %d MiB, exit %s",
		t.Name(), res.boot.Seconds(), res.total.Seconds(), res.maxRSSKiB>>10, res.exit)
	switch {
	case res.timedOut:
		t.Errorf("vmtest: the VM did not finish within %v and was killed", res.timeout)
	case res.exit == "":
		t.Errorf("vmtest: the guest left no exit code (kernel panic, crash or qemu error; see the console above)")
	case res.exit != "0":
		t.Errorf("vmtest: the test failed inside the VM with exit code %s", res.exit)
	case res.ran != t.Name():
		t.Errorf("vmtest: the guest exited 0 but never ran %s (ran %q): does -test.run match it?", t.Name(), res.ran)
	}
	return false
}

// prepareHost installs the packages, extracts the kernel and builds (or
// reuses) the initramfs. An exclusive flock on the cache directory keeps
// the test binaries of one `go test ./...` from building it together.
func prepareHost() (*hostSetup, error) {
	if err := ensurePackages(); err != nil {
		return nil, err
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	root, err := cacheDir()
	if err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(root, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	kver, vmlinuz, err := findKernel()
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(vmlinuz)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	// The extracted kernel is keyed by the image's identity: a kernel
	// package upgrade that keeps the version string still changes it.
	vmlinux := filepath.Join(root, fmt.Sprintf("vmlinux-%s-%d-%d", kver, st.Size(), st.ModTime().Unix()))
	if _, err := os.Stat(vmlinux); err != nil {
		start := time.Now()
		if err := extractVmlinux(vmlinuz, vmlinux); err != nil {
			return nil, err
		}
		logf("extracted %s in %.2fs", vmlinux, time.Since(start).Seconds())
	}
	mdadm, mdver, err := ensureMdadm(root)
	if err != nil {
		return nil, err
	}
	key, err := initramfsKey(kver, mdver)
	if err != nil {
		return nil, err
	}
	initrd := filepath.Join(root, "initramfs-"+key+".cpio")
	libsFile := initrd + ".libs"
	var libs []string
	if b, err := os.ReadFile(libsFile); err == nil {
		if _, err := os.Stat(initrd); err == nil {
			libs = strings.Fields(string(b))
			logf("reusing initramfs %s", initrd)
		}
	}
	if libs == nil {
		start := time.Now()
		if libs, err = buildInitramfs(initrd, kver, mdadm); err != nil {
			return nil, err
		}
		sort.Strings(libs)
		if err := os.WriteFile(libsFile, []byte(strings.Join(libs, "\n")+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		logf("built initramfs %s in %.2fs", initrd, time.Since(start).Seconds())
		pruneCache(root, initrd, vmlinux)
	}
	s := &hostSetup{qemu: qemu, kernelVersion: kver, vmlinux: vmlinux, initramfs: initrd, libs: map[string]bool{}}
	for _, l := range libs {
		s.libs[l] = true
	}
	return s, nil
}

// pruneCache removes initramfs images and kernels of earlier keys, so the
// cache holds one set (about 90 MB) instead of growing with each upgrade.
// It runs under the cache lock, right after a new image was built.
func pruneCache(root string, keep ...string) {
	old, _ := filepath.Glob(filepath.Join(root, "initramfs-*"))
	kernels, _ := filepath.Glob(filepath.Join(root, "vmlinux-*"))
	for _, p := range append(old, kernels...) {
		if p == keep[0] || p == keep[0]+".libs" || p == keep[1] {
			continue
		}
		if err := os.Remove(p); err == nil {
			logf("removed stale %s", p)
		}
	}
}

// logf reports host preparation to stderr: it happens once per process,
// outside any one test, and its timings are worth seeing in CI logs.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmtest: "+format+"\n", args...)
}

// cacheDir is $DHPP_VMTEST_CACHE, else <user cache dir>/dhpp-vmtest.
func cacheDir() (string, error) {
	dir := os.Getenv("DHPP_VMTEST_CACHE")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("cache dir: %w", err)
		}
		dir = filepath.Join(base, "dhpp-vmtest")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("cache dir: %w", err)
	}
	return dir, nil
}

// isDynamic reports whether an ELF binary asks for a dynamic loader.
func isDynamic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// checkBinary makes sure the test binary can run in the guest. A static
// binary always can. A dynamically linked one (cgo: a package imported
// net or os/user and a C compiler was found) can only if every library it
// needs is already in the initramfs.
func (s *hostSetup) checkBinary(exe string) error {
	dyn, err := isDynamic(exe)
	if err != nil {
		return err
	}
	if !dyn {
		return nil
	}
	out, err := exec.Command("ldd", exe).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", exe, err)
	}
	var missing []string
	for _, l := range parseLdd(out) {
		if !s.libs[l] {
			missing = append(missing, l)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the test binary %s is dynamically linked and needs %s, which the VM does not have; "+
			"build it static: CGO_ENABLED=0 go test ...", exe, strings.Join(missing, " "))
	}
	return nil
}

// runPattern is the -test.run pattern that selects exactly the test named
// name, subtests included ("TestA/sub" → "^TestA$/^sub$").
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// shellQuote quotes s for the guest's sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// qemuEscape escapes a value inside a qemu option list, where "," separates
// options.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// runScript is the script the guest's /init runs for one test.
func runScript(name, srcDir, outDir string, tools bool, timeout time.Duration, env map[string]string) string {
	var b strings.Builder
	b.WriteString("# written by vmtest on the host for one test\n")
	vars := map[string]string{
		"HOME": "/root", "TMPDIR": "/tmp", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
		// No udev in the guest: dmsetup and mdadm must create their
		// device nodes themselves instead of waiting for udev.
		"DM_DISABLE_UDEV": "1", "MDADM_NO_UDEV": "1",
		guestEnv: "1",
	}
	if inCI() {
		vars["CI"] = "true"
	}
	for k, v := range env {
		vars[k] = v
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(vars[k]))
	}
	// The package directory is shared read-only at its host path, so a
	// test's relative paths (testdata/...) mean the same in the guest.
	if srcDir != "" {
		fmt.Fprintf(&b, "mkdir -p %[1]s && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro src %[1]s && cd %[1]s || cd /tmp\n", shellQuote(srcDir))
	}
	if tools {
		fmt.Fprintf(&b, "cp -a /work/tools %s || exit 97\n", guestToolsDir)
	}
	if outDir != "" {
		fmt.Fprintf(&b, "mkdir -p %[1]s && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out %[1]s || exit 97\n", shellQuote(outDir))
	}
	// The guest test times out (and dumps its goroutines) before the host
	// kills qemu, so a hang shows where it hangs.
	guestTimeout := timeout - 15*time.Second
	if guestTimeout < 10*time.Second {
		guestTimeout = timeout
	}
	fmt.Fprintf(&b, "exec /work/%s -test.run %s -test.v -test.timeout %s\n", guestBinary, shellQuote(runPattern(name)), guestTimeout)
	return b.String()
}

type result struct {
	exit      string // exit code written by the guest, "" if none
	ran       string // test name the guest recorded as run
	timedOut  bool
	timeout   time.Duration
	boot      time.Duration // qemu start until the guest was ready to run the test
	total     time.Duration
	maxRSSKiB int64
}

// boot runs one VM for t and waits for it to end.
func boot(t *testing.T, s *hostSetup, exe string, cfg Config) (*result, error) {
	t.Helper()
	dir := t.TempDir()
	share := filepath.Join(dir, "share")
	// 0755: tests in the guest act as nobody, who must reach /work.
	if err := os.Mkdir(share, 0o755); err != nil {
		return nil, fmt.Errorf("share dir: %w", err)
	}
	if err := linkOrCopy(exe, filepath.Join(share, guestBinary)); err != nil {
		return nil, err
	}
	if err := s.shareTools(share, cfg.Tools); err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	if dl, ok := t.Deadline(); ok {
		if left := time.Until(dl) - 5*time.Second; left < timeout {
			timeout = left
		}
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("no time left before the go test deadline")
	}
	src, _ := os.Getwd()
	if err := os.WriteFile(filepath.Join(share, "vmtest-run.sh"), []byte(runScript(t.Name(), src, cfg.OutDir, len(cfg.Tools) > 0, timeout, withTools(cfg))), 0o644); err != nil {
		return nil, fmt.Errorf("run script: %w", err)
	}
	mem := cfg.MemoryMiB
	if mem <= 0 {
		mem = defaultMemoryMiB
	}
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-smp", "1", "-m", strconv.Itoa(mem),
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", s.vmlinux, "-initrd", s.initramfs,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=4",
		"-device", "virtio-rng-pci",
		"-virtfs", "local,path=" + qemuEscape(share) + ",mount_tag=work,security_model=none",
	}
	// qboot is a minimal firmware that jumps straight to the kernel; under
	// TCG it saves a second or more of SeaBIOS on every boot.
	if _, err := os.Stat(qbootROM); err == nil {
		args = append(args, "-bios", qbootROM)
	}
	if src != "" {
		args = append(args, "-virtfs", "local,path="+qemuEscape(src)+",mount_tag=src,security_model=none,readonly=on")
	}
	if cfg.OutDir != "" {
		args = append(args, "-virtfs", "local,path="+qemuEscape(cfg.OutDir)+",mount_tag=out,security_model=none")
	}
	cache := cfg.DiskCache
	if cache == "" {
		cache = "unsafe"
	}
	for i, size := range cfg.Disks {
		p := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		if err := sparseFile(p, size); err != nil {
			return nil, err
		}
		args = append(args, "-drive", "file="+qemuEscape(p)+",format=raw,if=virtio,cache="+cache)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.qemu, args...)
	// If the test process dies, qemu dies with it instead of lingering.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw

	res := &result{timeout: timeout}
	start := time.Now()
	ready := make(chan time.Duration, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			if strings.HasPrefix(line, "vmtest: ready") {
				select {
				case ready <- time.Since(start):
				default:
				}
			}
			t.Log("vm| " + line)
		}
		io.Copy(io.Discard, pr)
	}()
	if err := cmd.Start(); err != nil {
		pw.Close()
		<-done
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	waitErr := cmd.Wait()
	pw.Close()
	<-done
	res.total = time.Since(start)
	select {
	case res.boot = <-ready:
	default:
	}
	if ctx.Err() == context.DeadlineExceeded {
		res.timedOut = true
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.maxRSSKiB = ru.Maxrss
	}
	if b, err := os.ReadFile(filepath.Join(share, "vmtest-exit")); err == nil {
		res.exit = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(share, filepath.Base(ranFile))); err == nil {
		res.ran = string(b)
	}
	if waitErr != nil && !res.timedOut && res.exit == "" {
		t.Logf("vmtest: qemu: %v", waitErr)
	}
	return res, nil
}

// linkOrCopy puts a file (the test binary, a tool) into the share: a hard link when both are
// on one filesystem, a copy otherwise.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// sparseFile creates a disk image of size bytes that uses no space until
// the guest writes to it.
func sparseFile(path string, size int64) error {
	if size <= 0 || size%512 != 0 {
		return fmt.Errorf("disk size %d must be a positive multiple of 512", size)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("disk image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("disk image: %w", err)
	}
	return f.Close()
}
