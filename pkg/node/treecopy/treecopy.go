// Package treecopy copies a directory tree, or one file's data, the way a
// snapshot or clone of a volume needs it: every regular file reflinked
// (FICLONE) where the filesystem can share extents, else copied keeping its
// holes (SEEK_DATA/SEEK_HOLE); owners, modes, extended attributes,
// timestamps and hard links kept; symlinks copied as symlinks and never
// followed. Every lookup is relative to an open directory descriptor with
// O_NOFOLLOW, so nothing in the source tree can lead the copy outside it.
package treecopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Method says how file data was copied.
type Method string

const (
	// Reflink: FICLONE shared the extents; no data was written.
	Reflink Method = "reflink"
	// Copy: the data was read and written (copy_file_range), holes kept.
	Copy Method = "copy"
)

// Stats counts what a copy did.
type Stats struct {
	Files, Dirs, Others int64
	// Bytes is the data copied (holes excluded), plus the size of each
	// reflinked file.
	Bytes int64
	// Reflinked is the number of files whose data was reflinked.
	Reflinked int64
	// SkippedXattrs counts attributes the target filesystem refused as
	// unsupported (EOPNOTSUPP).
	SkippedXattrs int64
}

// Options tunes a copy.
type Options struct {
	// NoReflink forces a data copy even where reflinks work (benchmarks).
	NoReflink bool
	// Progress, if set, is called about every ProgressEvery with the
	// running totals.
	Progress      func(Stats)
	ProgressEvery time.Duration
}

type copier struct {
	ctx     context.Context
	opt     Options
	st      Stats
	reflink bool // still worth trying
	lastLog time.Time
	links   map[[2]uint64]string // (dev, ino) of a multiply linked file → its path in dst
	dstRoot int
	buf     []byte
}

// Tree copies the contents and the attributes of the directory src into
// the empty directory dst (both open). It returns what it copied and
// whether every file's data was reflinked (Reflink) or some were copied.
func Tree(ctx context.Context, dst, src *os.File, opt Options) (Stats, Method, error) {
	if opt.ProgressEvery == 0 {
		opt.ProgressEvery = 10 * time.Second
	}
	c := &copier{ctx: ctx, opt: opt, reflink: !opt.NoReflink, lastLog: time.Now(),
		links: map[[2]uint64]string{}, dstRoot: int(dst.Fd())}
	var st unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &st); err != nil {
		return c.st, "", fmt.Errorf("stat %s: %w", src.Name(), err)
	}
	if err := c.dir(int(dst.Fd()), int(src.Fd()), ""); err != nil {
		return c.st, "", err
	}
	if err := c.metaFD(int(dst.Fd()), int(src.Fd()), &st); err != nil {
		return c.st, "", err
	}
	c.st.Dirs++
	m := Reflink
	if c.st.Files > c.st.Reflinked {
		m = Copy
	}
	return c.st, m, nil
}

// dir copies the entries of the open directory src into dst; rel is its
// path below the tree's root.
func (c *copier) dir(dst, src int, rel string) error {
	// Read through a duplicate: closing f must not close src.
	dup, err := unix.Dup(src)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(dup), "/"+rel)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("read directory /%s: %w", rel, err)
	}
	for _, name := range names {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		if err := c.entry(dst, src, name, path.Join(rel, name)); err != nil {
			return err
		}
		c.progress()
	}
	return nil
}

func (c *copier) progress() {
	if c.opt.Progress != nil && time.Since(c.lastLog) >= c.opt.ProgressEvery {
		c.lastLog = time.Now()
		c.opt.Progress(c.st)
	}
}

func (c *copier) entry(dst, src int, name, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(src, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat /%s: %w", rel, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return c.subdir(dst, src, name, rel, &st)
	case unix.S_IFREG:
		return c.file(dst, src, name, rel, &st)
	case unix.S_IFLNK:
		target := make([]byte, st.Size+1)
		n, err := unix.Readlinkat(src, name, target)
		if err != nil {
			return fmt.Errorf("readlink /%s: %w", rel, err)
		}
		if err := unix.Symlinkat(string(target[:n]), dst, name); err != nil {
			return fmt.Errorf("symlink /%s: %w", rel, err)
		}
		c.st.Others++
		return metaAt(dst, name, &st)
	default: // fifo, socket, device node
		if err := unix.Mknodat(dst, name, st.Mode&unix.S_IFMT|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("mknod /%s: %w", rel, err)
		}
		c.st.Others++
		return metaAt(dst, name, &st)
	}
}

func (c *copier) subdir(dst, src int, name, rel string, st *unix.Stat_t) error {
	if err := unix.Mkdirat(dst, name, 0o700); err != nil {
		return fmt.Errorf("mkdir /%s: %w", rel, err)
	}
	s, err := unix.Openat(src, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /%s: %w", rel, err)
	}
	defer unix.Close(s)
	d, err := unix.Openat(dst, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open copy of /%s: %w", rel, err)
	}
	defer unix.Close(d)
	if err := c.dir(d, s, rel); err != nil {
		return err
	}
	c.st.Dirs++
	// Attributes last: the times would change with every entry made, and a
	// read-only mode would stop the entries from being made.
	return c.metaFD(d, s, st)
}

func (c *copier) file(dst, src int, name, rel string, st *unix.Stat_t) error {
	key := [2]uint64{st.Dev, st.Ino}
	if st.Nlink > 1 {
		if first, ok := c.links[key]; ok {
			if err := unix.Linkat(c.dstRoot, first, dst, name, 0); err != nil {
				return fmt.Errorf("link /%s to /%s: %w", rel, first, err)
			}
			return nil
		}
		c.links[key] = rel
	}
	s, err := unix.Openat(src, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /%s: %w", rel, err)
	}
	defer unix.Close(s)
	d, err := unix.Openat(dst, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create copy of /%s: %w", rel, err)
	}
	defer unix.Close(d)
	reflinked, n, err := c.data(d, s, st.Size)
	if err != nil {
		return fmt.Errorf("copy /%s: %w", rel, err)
	}
	c.st.Files++
	c.st.Bytes += n
	if reflinked {
		c.st.Reflinked++
	}
	return c.metaFD(d, s, st)
}

// data copies one file's data, reflinking it while that works.
func (c *copier) data(dst, src int, size int64) (reflinked bool, n int64, err error) {
	if c.reflink {
		err := unix.IoctlFileClone(dst, src)
		if err == nil {
			return true, size, nil
		}
		if !NoReflink(err) {
			return false, 0, fmt.Errorf("FICLONE: %w", err)
		}
		c.reflink = false // the filesystem cannot: copy from now on
	}
	if c.buf == nil {
		c.buf = make([]byte, 1<<20)
	}
	n, err = SparseCopy(c.ctx, dst, src, size, c.buf, !c.opt.NoReflink)
	return false, n, err
}

// NoReflink reports whether a FICLONE error means that the files cannot
// share extents here (the filesystem has no reflink, or not between these
// two files), as opposed to an I/O error.
func NoReflink(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM)
}

// Clone makes dst (empty) share src's data: FICLONE where the filesystem
// can (reflink), else a copy that keeps holes, in the kernel
// (copy_file_range) if kernelCopy. copy_file_range shares extents on XFS
// and btrfs: a caller that must share none passes both false. It returns the method used and the bytes of data copied
// (or shared).
func Clone(ctx context.Context, dst, src *os.File, reflink, kernelCopy bool) (Method, int64, error) {
	st, err := src.Stat()
	if err != nil {
		return "", 0, err
	}
	if reflink {
		err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
		if err == nil {
			return Reflink, st.Size(), nil
		}
		if !NoReflink(err) {
			return "", 0, fmt.Errorf("FICLONE %s: %w", src.Name(), err)
		}
	}
	n, err := SparseCopy(ctx, int(dst.Fd()), int(src.Fd()), st.Size(), make([]byte, 1<<20), kernelCopy)
	return Copy, n, err
}

// SparseCopy copies the data regions of src (size bytes long) into dst at
// the same offsets and makes dst size bytes long: holes stay holes. It
// returns the bytes of data copied. kernelCopy lets it use
// copy_file_range, which may share extents instead of copying them.
func SparseCopy(ctx context.Context, dst, src int, size int64, buf []byte, kernelCopy bool) (int64, error) {
	var copied int64
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return copied, err
		}
		start, err := unix.Seek(src, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole from off to the end
		}
		if err != nil {
			return copied, fmt.Errorf("SEEK_DATA: %w", err)
		}
		end, err := unix.Seek(src, start, unix.SEEK_HOLE)
		if err != nil {
			return copied, fmt.Errorf("SEEK_HOLE: %w", err)
		}
		end = min(end, size)
		if err := copyRange(ctx, dst, src, start, end, buf, kernelCopy); err != nil {
			return copied, err
		}
		copied += end - start
		off = end
	}
	if err := unix.Ftruncate(dst, size); err != nil {
		return copied, fmt.Errorf("truncate: %w", err)
	}
	return copied, nil
}

// copyRange copies [start, end) of src into dst, in the kernel where it
// can (copy_file_range), else through buf.
func copyRange(ctx context.Context, dst, src int, start, end int64, buf []byte, kernelCopy bool) error {
	const chunk = 64 << 20
	for off := start; off < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		if kernelCopy {
			in, out := off, off
			n, err := unix.CopyFileRange(src, &in, dst, &out, int(min(end-off, chunk)), 0)
			if err == nil && n > 0 {
				off += int64(n)
				continue
			}
			if err != nil && !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("copy_file_range: %w", err)
			}
			kernelCopy = false // none here: plain reads and writes
		}
		m, err := unix.Pread(src, buf[:min(int64(len(buf)), end-off)], off)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if m == 0 {
			return fmt.Errorf("read: %w at offset %d", io.ErrUnexpectedEOF, off)
		}
		if _, err := unix.Pwrite(dst, buf[:m], off); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		off += int64(m)
	}
	return nil
}

// metaFD gives the open entry dst the owner, mode, extended attributes
// and times of the open entry src (its stat is st).
func (c *copier) metaFD(dst, src int, st *unix.Stat_t) error {
	if err := unix.Fchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	// After chown, which clears set-id bits.
	if err := unix.Fchmod(dst, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if err := c.xattrs(dst, src); err != nil {
		return err
	}
	ts := [2]unix.Timespec{st.Atim, st.Mtim}
	// utimensat(fd, NULL, ...) sets the times of fd itself.
	if _, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(dst), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0); e != 0 {
		return fmt.Errorf("set times: %w", e)
	}
	return nil
}

// metaAt gives the entry name in directory dir (a symlink or special
// file) the owner, mode and times of st. Their extended attributes are not
// copied: opening a FIFO would block, and user.* attributes cannot exist
// on symlinks.
func metaAt(dir int, name string, st *unix.Stat_t) error {
	if err := unix.Fchownat(dir, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown %s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Fchmodat(dir, name, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", name, err)
		}
	}
	return unix.UtimesNanoAt(dir, name, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
}

// xattrs copies every extended attribute of src to dst (ACLs, security
// labels, user attributes). One the target refuses as unsupported is
// counted and skipped; any other failure fails the copy.
func (c *copier) xattrs(dst, src int) error {
	size, err := unix.Flistxattr(src, nil)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return nil
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	if size == 0 {
		return nil
	}
	list := make([]byte, size)
	if size, err = unix.Flistxattr(src, list); err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(list[:size]), "\x00"), "\x00") {
		n, err := unix.Fgetxattr(src, name, nil)
		if errors.Is(err, unix.ENODATA) {
			continue // removed in between
		}
		if err != nil {
			return fmt.Errorf("get xattr %s: %w", name, err)
		}
		val := make([]byte, n)
		if n, err = unix.Fgetxattr(src, name, val); err != nil {
			return fmt.Errorf("get xattr %s: %w", name, err)
		}
		if err := unix.Fsetxattr(dst, name, val[:n], 0); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				c.st.SkippedXattrs++
				continue
			}
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}
