package node

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Preallocation: an image volume whose blocks have all been written once.
//
// A sparse image (dhpp's default: thin, so a pool holds more volumes than
// their data) pays an allocation in the pool's filesystem, and that
// filesystem's journal commit, the first time each of its blocks is
// written, because the loop device turns the volume's flush into an fsync
// of the image. For an append+fdatasync workload (a database's log) every
// write is such a first write: measured at 2-4x the latency of a plain
// directory (docs/benchmarks.md, "What lowers the translog cost of loop
// volumes"). fallocate does not help: it makes unwritten extents, whose
// first write is again a transaction of the pool's filesystem. An image
// written through once runs the same workload at 1.0-1.4x.
//
// The cost is paid at creation (and expansion): the whole size is written,
// at the disk's sequential speed, and occupies the pool at once; snapshots
// of it on a pool that cannot reflink store its whole size.

// zeroChunk is the size of each direct write: large enough to run at the
// disk's sequential speed, small enough to notice a cancellation soon.
const zeroChunk = 4 << 20

// writeThrough writes zeros over [off, end) of f and makes them durable.
// It stops at ctx's end.
func writeThrough(ctx context.Context, f *os.File, off, end int64) error {
	z, err := newZeroWriter(f)
	if err != nil {
		return err
	}
	err = z.write(ctx, off, end)
	return z.finish(err)
}

// zeroWriter writes zeros into a file, directly where it can (the zeros
// are not worth a place in the page cache), and syncs once at the end,
// however many ranges it wrote.
type zeroWriter struct {
	f, direct *os.File
	buf       []byte // zeroChunk page-aligned zeros, as O_DIRECT needs
}

// directAlign is the alignment a range needs for direct writes: 4 KiB is
// every device's direct-I/O alignment at most. Image sizes are 1 MiB
// multiples and holes start and end on the pool filesystem's blocks, so
// ranges are aligned as a rule; others are written through the page cache.
const directAlign = 4096

func newZeroWriter(f *os.File) (*zeroWriter, error) {
	// Reopened through /proc/self/fd: the same open file, never whatever
	// its path names now.
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("preallocate %s: reopen for direct I/O: %w", f.Name(), err)
	}
	buf, err := unix.Mmap(-1, 0, zeroChunk, unix.PROT_READ, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("preallocate %s: %w", f.Name(), err)
	}
	return &zeroWriter{f: f, direct: os.NewFile(uintptr(fd), f.Name()), buf: buf}, nil
}

func (z *zeroWriter) write(ctx context.Context, off, end int64) error {
	w := z.f
	if off%directAlign == 0 && end%directAlign == 0 {
		w = z.direct
	}
	for off < end {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("preallocate %s: stopped at byte %d of %d: %w", z.f.Name(), off, end, err)
		}
		n := int(min(int64(len(z.buf)), end-off))
		if _, err := w.WriteAt(z.buf[:n], off); err != nil {
			return fmt.Errorf("preallocate %s: %w", z.f.Name(), err)
		}
		off += int64(n)
	}
	return nil
}

// finish releases the writer and, if err is nil, makes what it wrote
// durable: fsync flushes the file, whichever descriptor wrote.
func (z *zeroWriter) finish(err error) error {
	if err == nil {
		if err = z.f.Sync(); err != nil {
			err = fmt.Errorf("preallocate %s: fsync: %w", z.f.Name(), err)
		}
	}
	z.direct.Close()
	unix.Munmap(z.buf)
	return err
}

// fillHoles writes through every part of f that no write has reached yet:
// holes, and unwritten extents (which SEEK_HOLE reports as holes on ext4
// and XFS). It makes a clone or restore, copied keeping its source's holes,
// preallocated. Extents a reflink shares with the source (btrfs pools)
// stay shared: their first overwrite still allocates (copy-on-write).
func fillHoles(ctx context.Context, f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	z, err := newZeroWriter(f)
	if err != nil {
		return err
	}
	return z.finish(z.fillHoles(ctx, size))
}

func (z *zeroWriter) fillHoles(ctx context.Context, size int64) error {
	f := z.f
	for off := int64(0); off < size; {
		hole, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("preallocate %s: seek hole: %w", f.Name(), err)
		}
		if hole >= size {
			break
		}
		data, err := unix.Seek(int(f.Fd()), hole, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // a hole to the end
		} else if err != nil {
			return fmt.Errorf("preallocate %s: seek data: %w", f.Name(), err)
		}
		if err := z.write(ctx, hole, data); err != nil {
			return err
		}
		off = data
	}
	return nil
}
