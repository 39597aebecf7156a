package health

import (
	"bytes"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// errMismatch marks a probe whose read-back differs from what it wrote.
var errMismatch = errors.New("read-back differs from written data")

// errWrongDevice marks a refusal to re-create the probe file on a filesystem
// other than the one it was first created on.
var errWrongDevice = errors.New("probe directory is on a different device than at setup")

// fileProber does the I/O of one pool's probe. Its probe method is only ever
// running in one goroutine at a time (the Monitor guarantees at most one
// outstanding I/O per pool); mu turns a violation of that into a wait rather
// than a data race on the buffers.
type fileProber struct {
	path string
	size int

	mu       sync.Mutex
	wbuf     []byte
	rbuf     []byte
	rng      *rand.ChaCha8
	prepared bool
	// direct is false where O_DIRECT was refused with EINVAL (decided once).
	direct bool
	// dev is the st_dev of the probe file's directory when it was prepared.
	dev uint64

	// recreate is set by a manual Unfence: the next probe may re-create a
	// missing probe file, if its directory is still on dev.
	recreate atomic.Bool
	// forceBuffered makes tests exercise the write+fdatasync fallback on
	// filesystems that support O_DIRECT.
	forceBuffered bool
}

func newFileProber(path string, size int) (*fileProber, error) {
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("seed probe data generator: %w", err)
	}
	return &fileProber{
		path:   path,
		size:   size,
		wbuf:   alignedBuf(size),
		rbuf:   alignedBuf(size),
		rng:    rand.NewChaCha8(seed),
		direct: true,
	}, nil
}

// alignedBuf returns n bytes whose start is aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directIOAlign)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (directIOAlign - 1))
	if off != 0 {
		off = directIOAlign - off
	}
	return b[off : off+n : off+n]
}

// allowRecreate lets the next probe re-create a missing probe file.
func (p *fileProber) allowRecreate() { p.recreate.Store(true) }

// probe writes fresh random data to the probe file, reads it back from the
// device and compares. It returns nil for a healthy pool.
func (p *fileProber) probe() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.prepared {
		if err := p.prepare(false); err != nil {
			return err
		}
	}
	fd, err := p.open()
	if errors.Is(err, unix.ENOENT) && p.recreate.Load() {
		if err := p.prepare(true); err != nil {
			return err
		}
		fd, err = p.open()
	}
	if err != nil {
		return err
	}
	if _, err := p.rng.Read(p.wbuf); err != nil {
		unix.Close(fd)
		return fmt.Errorf("generate probe data: %w", err)
	}
	err = p.writeRead(fd)
	if cerr := unix.Close(fd); cerr != nil && err == nil {
		err = fmt.Errorf("close %s: %w", p.path, cerr)
	}
	if err != nil {
		return err
	}
	if i := firstDiff(p.wbuf, p.rbuf); i >= 0 {
		return fmt.Errorf("%s at offset %d: %w", p.path, i, errMismatch)
	}
	return nil
}

// open opens the existing probe file; it never creates it (see the package
// doc: a missing file may mean the data disk is gone).
func (p *fileProber) open() (int, error) {
	flags := unix.O_RDWR | unix.O_CLOEXEC | unix.O_NOFOLLOW
	if p.direct {
		// O_DSYNC: each write also flushes the device cache (FUA), so a
		// device that acknowledges into a dead cache is caught too.
		flags |= unix.O_DIRECT | unix.O_DSYNC
	}
	fd, err := unix.Open(p.path, flags, 0)
	if errors.Is(err, unix.EINVAL) && p.direct {
		p.direct = false
		return p.open()
	}
	if err != nil {
		return -1, fmt.Errorf("open probe file %s: %w", p.path, err)
	}
	return fd, nil
}

func (p *fileProber) writeRead(fd int) error {
	if err := pwriteFull(fd, p.wbuf); err != nil {
		if !(p.direct && errors.Is(err, unix.EINVAL)) {
			return fmt.Errorf("write probe file %s: %w", p.path, err)
		}
		// The filesystem opened with O_DIRECT but rejects the I/O (some
		// FUSE and network filesystems): use the buffered path from now on.
		p.direct = false
		return fmt.Errorf("write probe file %s with O_DIRECT (falling back to fdatasync from the next probe): %w", p.path, err)
	}
	if !p.direct {
		if err := unix.Fdatasync(fd); err != nil {
			return fmt.Errorf("fdatasync probe file %s: %w", p.path, err)
		}
		// Drop the clean pages so the read below has to ask the device;
		// best effort (tmpfs has no device to ask).
		_ = unix.Fadvise(fd, 0, int64(p.size), unix.FADV_DONTNEED)
	}
	clear(p.rbuf)
	if err := preadFull(fd, p.rbuf); err != nil {
		return fmt.Errorf("read back probe file %s: %w", p.path, err)
	}
	return nil
}

// prepare creates the probe file at full size, with its blocks allocated and
// written, so that later probes overwrite in place and never need free space.
// With recreating set it first checks that the directory is still on the
// device it was on at the first preparation.
func (p *fileProber) prepare(recreating bool) error {
	dir := filepath.Dir(p.path)
	if recreating {
		dev, err := nearestDev(dir)
		if err != nil {
			return fmt.Errorf("check device of %s: %w", dir, err)
		}
		if dev != p.dev {
			return fmt.Errorf("not re-creating %s: nearest existing directory is on device %d:%d, the probe file was on %d:%d (is the data disk unmounted?): %w",
				p.path, unix.Major(dev), unix.Minor(dev), unix.Major(p.dev), unix.Minor(p.dev), errWrongDevice)
		}
	}
	// Only the probe's own directory is created: a missing pool directory
	// is a fault to report, not something to re-create on another disk.
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create probe directory: %w", err)
	}
	fd, err := unix.Open(p.path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("create probe file %s: %w", p.path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat probe file %s: %w", p.path, err)
	}
	if st.Size == 0 {
		// btrfs: without NOCOW every overwrite allocates new blocks, so a
		// full filesystem would fail the probe. Only settable while empty;
		// other filesystems do not know the flag, which is fine.
		setNoCOW(fd)
	}
	if err := unix.Fallocate(fd, 0, 0, int64(p.size)); err != nil &&
		!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("preallocate probe file %s: %w", p.path, err)
	}
	// Write every block once: fallocate leaves "unwritten" extents whose
	// first write still changes metadata.
	if _, err := p.rng.Read(p.wbuf); err != nil {
		return fmt.Errorf("generate probe data: %w", err)
	}
	if err := pwriteFull(fd, p.wbuf); err != nil {
		return fmt.Errorf("initialise probe file %s: %w", p.path, err)
	}
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync probe file %s: %w", p.path, err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	var dst unix.Stat_t
	if err := unix.Stat(dir, &dst); err != nil {
		return fmt.Errorf("stat probe directory %s: %w", dir, err)
	}
	p.dev = dst.Dev
	p.prepared = true
	p.recreate.Store(false)
	if p.forceBuffered {
		p.direct = false
	}
	return nil
}

// nearestDev is the st_dev of dir or of its nearest existing ancestor.
func nearestDev(dir string) (uint64, error) {
	for {
		var st unix.Stat_t
		err := unix.Stat(dir, &st)
		if err == nil {
			return st.Dev, nil
		}
		parent := filepath.Dir(dir)
		if !errors.Is(err, unix.ENOENT) || parent == dir {
			return 0, fmt.Errorf("stat %s: %w", dir, err)
		}
		dir = parent
	}
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open probe directory %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync probe directory %s: %w", dir, err)
	}
	return nil
}

// fsNoCOWFlag is FS_NOCOW_FL from linux/fs.h (x/sys does not define it).
const fsNoCOWFlag = 0x00800000

// setNoCOW sets FS_NOCOW_FL, best effort.
func setNoCOW(fd int) {
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return
	}
	_ = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsNoCOWFlag))
}

func pwriteFull(fd int, b []byte) error {
	for off := 0; off < len(b); {
		n, err := unix.Pwrite(fd, b[off:], int64(off))
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		off += n
	}
	return nil
}

func preadFull(fd int, b []byte) error {
	for off := 0; off < len(b); {
		n, err := unix.Pread(fd, b[off:], int64(off))
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		off += n
	}
	return nil
}

// firstDiff is the first offset where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// classify maps a probe error to the Reason used in metrics and Status.
func classify(err error) Reason {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, errMismatch):
		return ReasonMismatch
	case errors.Is(err, unix.EROFS):
		return ReasonReadOnly
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return ReasonNoSpace
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, errWrongDevice):
		return ReasonMissing
	case errors.Is(err, unix.EIO), errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV),
		errors.Is(err, unix.EUCLEAN), errors.Is(err, unix.EBADMSG), errors.Is(err, unix.EREMOTEIO),
		errors.Is(err, unix.ESTALE), errors.Is(err, unix.ENOTCONN), errors.Is(err, unix.ESHUTDOWN),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.ErrShortWrite):
		// EUCLEAN/EBADMSG: ext4/xfs/btrfs found corrupt metadata;
		// ESTALE/ENOTCONN: a network or FUSE backend went away; ESHUTDOWN:
		// XFS shut the filesystem down after an I/O error.
		return ReasonIOError
	}
	return ReasonOther
}
