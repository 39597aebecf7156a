package vmtest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// recipeVersion is part of the initramfs cache key; bump it whenever the
// way the initramfs is assembled changes in a way the key cannot see.
const recipeVersion = "4"

//go:embed init.sh
var initScript string

// guestModules are the kernel modules the guest loads, in this order, with
// their dependencies ahead of them (from modprobe --show-depends). They are
// exactly the features this host's kernel lacks plus what the VM itself
// needs: virtio disks and PCI, 9p for the share, an entropy source.
var guestModules = []string{
	"virtio_pci", "virtio_blk", "virtio_rng", "9pnet_virtio", "9p",
	"ext4", "xfs", "quota_v2", "raid10", "dm-mod", "dm-flakey", "loop",
}

// guestTools are the host binaries copied into the guest, at the same path,
// with the shared libraries ldd names. busybox provides everything else.
var guestTools = []string{
	"mkfs.xfs", "xfs_quota", "xfs_io", "xfs_repair",
	"mke2fs", "mkfs.ext4", "e2fsck", "tune2fs", "dumpe2fs", "chattr", "lsattr",
	"setquota", "repquota", "quota",
	"dmsetup", "blockdev", "losetup", "wipefs",
}

// toolPackages are the packages whose versions decide the guest userland;
// they go into the cache key.
var toolPackages = []string{"busybox-static", "xfsprogs", "e2fsprogs", "quota", "dmsetup", "kmod", "util-linux", "libc6"}

// initramfsKey is the on-disk cache key: anything that changes what goes
// into the initramfs changes the key.
func initramfsKey(kernelVersion, mdadmVersion string) (string, error) {
	out, err := exec.Command("dpkg-query", append([]string{"-W", "-f=${Package}=${Version}\n"}, toolPackages...)...).Output()
	if err != nil {
		return "", fmt.Errorf("dpkg-query versions: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "recipe=%s\nkernel=%s\nmdadm=%s\n%s\n", recipeVersion, kernelVersion, mdadmVersion, out)
	fmt.Fprintf(h, "modules=%q\ntools=%q\n", guestModules, guestTools)
	h.Write([]byte(initScript))
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// buildInitramfs writes the guest's initramfs to dst and returns the host
// paths of the shared libraries it contains (so a dynamically linked test
// binary can be checked against them).
func buildInitramfs(dst, kernelVersion, mdadmBin string) ([]string, error) {
	a := newArchive()
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "work", "mnt", "root", "var/tmp"} {
		a.dir(d, 0o755)
	}
	a.dir("tmp", 0o1777)
	// The kernel opens /dev/console for init before anything is mounted.
	a.charDev("dev/console", 0o600, 5, 1)
	a.charDev("dev/null", 0o666, 1, 3)

	// busybox first, then the real tools over its applet links.
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox: %w", err)
	}
	if dyn, err := isDynamic(bb); err != nil || dyn {
		return nil, fmt.Errorf("%s must be the static busybox (package busybox-static): dynamic=%v err=%v", bb, dyn, err)
	}
	a.hostFile("bin/busybox", 0o755, bb)
	applets, err := exec.Command(bb, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, p := range strings.Fields(string(applets)) {
		if p != "bin/busybox" {
			a.symlink(p, "/bin/busybox")
		}
	}

	libs := map[string]bool{}
	addBinary := func(guestPath, hostPath string) error {
		a.hostFile(guestPath, 0o755, hostPath)
		dyn, err := isDynamic(hostPath)
		if err != nil {
			return err
		}
		if !dyn {
			return nil
		}
		out, err := exec.Command("ldd", hostPath).Output()
		if err != nil {
			return fmt.Errorf("ldd %s: %w", hostPath, err)
		}
		for _, l := range parseLdd(out) {
			libs[l] = true
		}
		return nil
	}
	for _, tool := range guestTools {
		p, err := lookTool(tool)
		if err != nil {
			return nil, err
		}
		if err := addBinary(p, p); err != nil {
			return nil, err
		}
	}
	if err := addBinary("sbin/mdadm", mdadmBin); err != nil {
		return nil, err
	}
	var libList []string
	for l := range libs {
		a.hostFile(l, 0o755, l)
		libList = append(libList, l)
	}

	mods, err := moduleLoadOrder(kernelVersion, guestModules)
	if err != nil {
		return nil, err
	}
	var modList strings.Builder
	for _, m := range mods {
		guest := strings.TrimSuffix(m.path, ".xz")
		if strings.HasSuffix(m.path, ".xz") {
			raw, err := exec.Command("xz", "-dc", m.path).Output()
			if err != nil {
				return nil, fmt.Errorf("xz -dc %s: %w", m.path, err)
			}
			a.file(guest, 0o644, raw)
		} else if strings.HasSuffix(m.path, ".ko") {
			a.hostFile(guest, 0o644, m.path)
		} else {
			return nil, fmt.Errorf("module %s: only .ko and .ko.xz are supported", m.path)
		}
		fmt.Fprintf(&modList, "%s %s\n", guest, m.args)
	}
	a.file("etc/vmtest/modules", 0o644, []byte(modList.String()))

	if b, err := os.ReadFile("/etc/mke2fs.conf"); err == nil {
		a.file("etc/mke2fs.conf", 0o644, b)
	}
	a.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	a.file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	a.file(guestMarker, 0o644, []byte("dhpp vmtest guest\n"))
	a.file("init", 0o755, []byte(initScript))

	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	if err := a.writeTo(f); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	return libList, nil
}

// lookTool finds a tool in the host's system directories (not $PATH, which
// in a test may point anywhere) and returns its absolute path.
func lookTool(name string) (string, error) {
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("tool %s not found on the host (is its package installed?)", name)
}

// lddLine matches "name => /path (0x...)" and "/path (0x...)".
var lddLine = regexp.MustCompile(`^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$`)

// parseLdd returns the absolute library paths in ldd output, the dynamic
// loader included; the vDSO has no path and is skipped.
func parseLdd(out []byte) []string {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := lddLine.FindStringSubmatch(sc.Text()); m != nil {
			libs = append(libs, m[1])
		}
	}
	return libs
}

type module struct{ path, args string }

// moduleLoadOrder asks modprobe for each module's insmod sequence against
// the guest kernel's modules.dep and merges them in order, without
// duplicates. Built-in modules need no loading and are left out.
// (modprobe takes one module per call: further arguments are parameters.)
func moduleLoadOrder(kernelVersion string, names []string) ([]module, error) {
	seen := map[string]bool{}
	var mods []module
	for _, n := range names {
		out, err := exec.Command("modprobe", "--show-depends", "-S", kernelVersion, n).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("modprobe --show-depends -S %s %s: %w: %s", kernelVersion, n, err, out)
		}
		for _, m := range parseShowDepends(out) {
			// CPU-accelerated crypto (crc32c-intel, ...) needs instructions
			// the emulated qemu64 CPU lacks; insmod would fail with ENODEV.
			// The generic implementation modprobe lists next is used.
			if strings.Contains(m.path, "/kernel/arch/x86/crypto/") {
				continue
			}
			if !seen[m.path] {
				seen[m.path] = true
				mods = append(mods, m)
			}
		}
	}
	return mods, nil
}

func parseShowDepends(out []byte) []module {
	var mods []module
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "insmod" {
			mods = append(mods, module{path: f[1], args: strings.Join(f[2:], " ")})
		}
	}
	return mods
}
