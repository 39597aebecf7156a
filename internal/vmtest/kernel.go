package vmtest

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// findKernel picks the Debian kernel to boot: the newest /boot/vmlinuz-V
// whose modules are installed under /lib/modules/V. (The host's own kernel
// is not a Debian one and has no vmlinuz in /boot.)
func findKernel() (version, vmlinuz string, err error) {
	files, _ := filepath.Glob("/boot/vmlinuz-*")
	var versions []string
	for _, f := range files {
		v := strings.TrimPrefix(filepath.Base(f), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", v, "modules.dep")); err == nil {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		return "", "", fmt.Errorf("no /boot/vmlinuz-* with modules in /lib/modules (is linux-image-amd64 installed?)")
	}
	sort.Strings(versions)
	v := versions[len(versions)-1]
	return v, "/boot/vmlinuz-" + v, nil
}

// xzMagic starts an XZ stream (the x86 bzImage of Debian's kernel carries
// its payload XZ-compressed).
var xzMagic = []byte("\xfd7zXZ\x00")

// extractVmlinux writes the uncompressed ELF kernel embedded in a bzImage
// to dst. qemu boots that ELF directly through its PVH entry point, which
// skips the kernel's own decompressor: under TCG that decompressor alone
// takes seconds.
func extractVmlinux(bzImage, dst string) error {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("read kernel: %w", err)
	}
	off := bytes.Index(data, xzMagic)
	if off < 0 {
		return fmt.Errorf("%s: no XZ payload found (kernel compressed some other way?)", bzImage)
	}
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	// --single-stream stops at the end of the payload and ignores the
	// bzImage trailer that follows it.
	cmd := exec.Command("xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(data[off:])
	cmd.Stdout = out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	runErr := cmd.Run()
	closeErr := out.Close()
	if runErr != nil {
		os.Remove(tmp)
		return fmt.Errorf("xz -dc %s at offset %d: %w: %s", bzImage, off, runErr, stderr.Bytes())
	}
	if closeErr != nil {
		os.Remove(tmp)
		return fmt.Errorf("extract vmlinux: %w", closeErr)
	}
	f, err := elf.Open(tmp)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%s: the XZ payload is not an ELF kernel: %w", bzImage, err)
	}
	f.Close()
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	return nil
}
