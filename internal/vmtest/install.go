package vmtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// hostPackages are the Debian packages the harness needs on the host: qemu
// to run the VM, a stock Debian kernel with the modules this host's kernel
// lacks, and the userland tools copied into the initramfs.
var hostPackages = []string{
	"qemu-system-x86", "linux-image-amd64", "busybox-static", "xfsprogs",
	"e2fsprogs", "quota", "dmsetup", "xz-utils", "kmod", "util-linux",
}

// missingPackages returns those of pkgs that dpkg does not list as installed.
func missingPackages(pkgs []string) []string {
	out, _ := exec.Command("dpkg-query", append([]string{"-W", "-f=${Package} ${db:Status-Status}\n"}, pkgs...)...).Output()
	installed := parseInstalled(out)
	var missing []string
	for _, p := range pkgs {
		if !installed[p] {
			missing = append(missing, p)
		}
	}
	return missing
}

// parseInstalled reads dpkg-query lines "NAME STATUS" (NAME may carry an
// ":arch" suffix) and returns the names whose status is "installed".
func parseInstalled(out []byte) map[string]bool {
	installed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[1] == "installed" {
			installed[strings.SplitN(f[0], ":", 2)[0]] = true
		}
	}
	return installed
}

// ensurePackages installs whatever of hostPackages is missing. apt waits for
// the dpkg lock instead of failing, because several test binaries of one
// `go test ./...` may get here at the same time. If the package lists are
// stale or absent the install fails; it is retried once after apt-get update.
func ensurePackages() error {
	missing := missingPackages(hostPackages)
	if len(missing) == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("packages %s are not installed and installing them needs root", strings.Join(missing, " "))
	}
	install := func() error {
		args := append([]string{"install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600"}, missing...)
		return runLogged("apt-get", args...)
	}
	if err := install(); err != nil {
		if uerr := runLogged("apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=600"); uerr != nil {
			return fmt.Errorf("apt-get update: %w", uerr)
		}
		if err := install(); err != nil {
			return fmt.Errorf("apt-get install %s: %w", strings.Join(missing, " "), err)
		}
	}
	if still := missingPackages(hostPackages); len(still) > 0 {
		return fmt.Errorf("still not installed after apt-get install: %s", strings.Join(still, " "))
	}
	return nil
}

// runLogged runs a command non-interactively and returns its output with the
// error, so a failure says what apt or dpkg complained about.
func runLogged(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out, 2000))
	}
	return nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// ensureMdadm returns the path of an mdadm binary unpacked from Debian's
// package into the cache, and the package version for the cache key. mdadm
// is downloaded and unpacked rather than installed: installing it would put
// udev rules, a monitor service and an initramfs hook on the host, which has
// no md support anyway and is shared with other engineers' loop devices.
func ensureMdadm(cacheRoot string) (bin, version string, err error) {
	dir := filepath.Join(cacheRoot, "mdadm")
	if bin, version, ok := findMdadm(dir); ok {
		return bin, version, nil
	}
	tmp, err := os.MkdirTemp(cacheRoot, "mdadm-tmp-")
	if err != nil {
		return "", "", fmt.Errorf("mdadm: %w", err)
	}
	defer os.RemoveAll(tmp)
	download := func() error {
		cmd := exec.Command("apt-get", "download", "-q", "mdadm")
		cmd.Dir = tmp
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get download mdadm: %w\n%s", err, tail(out, 2000))
		}
		return nil
	}
	if err := download(); err != nil {
		if os.Geteuid() != 0 {
			return "", "", err
		}
		if uerr := runLogged("apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=600"); uerr != nil {
			return "", "", fmt.Errorf("apt-get update: %w", uerr)
		}
		if err := download(); err != nil {
			return "", "", err
		}
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "mdadm_*.deb"))
	if len(debs) != 1 {
		return "", "", fmt.Errorf("apt-get download mdadm left %d .deb files in %s", len(debs), tmp)
	}
	ver, err := exec.Command("dpkg-deb", "-f", debs[0], "Version").Output()
	if err != nil {
		return "", "", fmt.Errorf("dpkg-deb -f %s Version: %w", debs[0], err)
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.Command("dpkg", "-x", debs[0], root).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("dpkg -x %s: %w\n%s", debs[0], err, out)
	}
	if err := os.WriteFile(filepath.Join(root, "VERSION"), bytes.TrimSpace(ver), 0o644); err != nil {
		return "", "", fmt.Errorf("mdadm: %w", err)
	}
	// Rename is atomic: a concurrent process sees either nothing or the
	// whole tree. If another process won the race, use its copy.
	if err := os.Rename(root, dir); err != nil && !os.IsExist(err) {
		if _, _, ok := findMdadm(dir); !ok {
			return "", "", fmt.Errorf("mdadm: %w", err)
		}
	}
	if bin, version, ok := findMdadm(dir); ok {
		return bin, version, nil
	}
	return "", "", fmt.Errorf("no mdadm binary in the package unpacked at %s", dir)
}

func findMdadm(dir string) (bin, version string, ok bool) {
	v, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		return "", "", false
	}
	for _, p := range []string{"sbin/mdadm", "usr/sbin/mdadm"} {
		if st, err := os.Stat(filepath.Join(dir, p)); err == nil && st.Mode().IsRegular() {
			return filepath.Join(dir, p), string(v), true
		}
	}
	return "", "", false
}
