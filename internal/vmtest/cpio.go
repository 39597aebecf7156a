package vmtest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
)

// cpioEntry is one file of the initramfs. Exactly one of data, hostPath,
// link is used, depending on mode's type bits.
type cpioEntry struct {
	mode     uint32 // full st_mode: type bits | permission bits
	data     []byte // contents of a small regular file generated in memory
	hostPath string // regular file copied from the host at write time
	link     string // symlink target
	rdevMaj  uint32 // device numbers of a character/block node
	rdevMin  uint32
}

// archive collects the initramfs tree in memory, keyed by its path inside the
// guest, so a later add replaces an earlier one: the real tools are added after
// busybox's applet links and win over them.
type archive struct {
	entries map[string]cpioEntry
}

func newArchive() *archive { return &archive{entries: map[string]cpioEntry{}} }

// clean turns a guest path into the form cpio stores: relative, no "./".
func clean(p string) string {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" {
		return "."
	}
	return p
}

// dir adds a directory and all its parents, each 0755 unless already present.
func (a *archive) dir(p string, perm uint32) {
	p = clean(p)
	if p != "." {
		a.dir(path.Dir(p), 0o755)
	}
	if e, ok := a.entries[p]; ok && e.mode&syscall.S_IFMT == syscall.S_IFDIR {
		if perm != 0o755 {
			e.mode = syscall.S_IFDIR | perm
			a.entries[p] = e
		}
		return
	}
	a.entries[p] = cpioEntry{mode: syscall.S_IFDIR | perm}
}

func (a *archive) file(p string, perm uint32, data []byte) {
	p = clean(p)
	a.dir(path.Dir(p), 0o755)
	a.entries[p] = cpioEntry{mode: syscall.S_IFREG | perm, data: data}
}

func (a *archive) hostFile(p string, perm uint32, hostPath string) {
	p = clean(p)
	a.dir(path.Dir(p), 0o755)
	a.entries[p] = cpioEntry{mode: syscall.S_IFREG | perm, hostPath: hostPath}
}

func (a *archive) symlink(p, target string) {
	p = clean(p)
	a.dir(path.Dir(p), 0o755)
	a.entries[p] = cpioEntry{mode: syscall.S_IFLNK | 0o777, link: target}
}

func (a *archive) charDev(p string, perm, major, minor uint32) {
	p = clean(p)
	a.dir(path.Dir(p), 0o755)
	a.entries[p] = cpioEntry{mode: syscall.S_IFCHR | perm, rdevMaj: major, rdevMin: minor}
}

// has reports whether p is already in the archive.
func (a *archive) has(p string) bool {
	_, ok := a.entries[clean(p)]
	return ok
}

// writeTo writes the archive as an uncompressed "newc" cpio stream, the format
// the kernel unpacks into its rootfs. Parents sort before children, so every
// directory exists before its contents are unpacked. The root "." entry is
// written explicitly with mode 0755: without it the rootfs keeps mode 0700
// and an unprivileged uid could not reach anything in the guest.
func (a *archive) writeTo(w io.Writer) error {
	a.dir(".", 0o755)
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	bw := bufio.NewWriterSize(w, 1<<20)
	var ino uint32 = 1
	for _, n := range names {
		e := a.entries[n]
		var body []byte
		var size int64
		var src *os.File
		switch e.mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			if e.hostPath != "" {
				f, err := os.Open(e.hostPath)
				if err != nil {
					return fmt.Errorf("initramfs entry %s: %w", n, err)
				}
				st, err := f.Stat()
				if err != nil {
					f.Close()
					return fmt.Errorf("initramfs entry %s: %w", n, err)
				}
				src, size = f, st.Size()
			} else {
				body, size = e.data, int64(len(e.data))
			}
		case syscall.S_IFLNK:
			body, size = []byte(e.link), int64(len(e.link))
		}
		if err := writeHeader(bw, ino, e, size, n); err != nil {
			return err
		}
		ino++
		if src != nil {
			_, err := io.CopyN(bw, src, size)
			src.Close()
			if err != nil {
				return fmt.Errorf("initramfs entry %s: copy: %w", n, err)
			}
		} else if _, err := bw.Write(body); err != nil {
			return err
		}
		if err := pad4(bw, size); err != nil {
			return err
		}
	}
	if err := writeHeader(bw, 0, cpioEntry{}, 0, "TRAILER!!!"); err != nil {
		return err
	}
	return bw.Flush()
}

func writeHeader(w *bufio.Writer, ino uint32, e cpioEntry, size int64, name string) error {
	if size > 0xffffffff {
		return fmt.Errorf("initramfs entry %s: %d bytes is too large for cpio newc", name, size)
	}
	nlink := 1
	if e.mode&syscall.S_IFMT == syscall.S_IFDIR {
		nlink = 2
	}
	// Fields: magic ino mode uid gid nlink mtime filesize devmajor devminor
	// rdevmajor rdevminor namesize check. mtime 0 keeps the archive
	// byte-for-byte reproducible for a given input.
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.mode, 0, 0, nlink, 0, size, 0, 0, e.rdevMaj, e.rdevMin, len(name)+1, 0)
	if _, err := w.WriteString(hdr); err != nil {
		return err
	}
	if _, err := w.WriteString(name + "\x00"); err != nil {
		return err
	}
	return pad4(w, int64(len(hdr)+len(name)+1))
}

func pad4(w *bufio.Writer, n int64) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}
