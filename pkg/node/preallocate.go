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
// Writes are direct (the zeros are not worth a place in the page cache)
// when both ends are aligned to 4 KiB, every device's direct-I/O alignment
// at most; image sizes are 1 MiB multiples and holes start and end on the
// pool filesystem's blocks, so that is the rule. It stops at ctx's end.
func writeThrough(ctx context.Context, f *os.File, off, end int64) error {
	if off >= end {
		return nil
	}
	w := f
	if off%directAlign == 0 && end%directAlign == 0 {
		direct, err := reopenDirect(f)
		if err != nil {
			return err
		}
		defer direct.Close()
		w = direct
	}
	buf, err := unix.Mmap(-1, 0, zeroChunk, unix.PROT_READ, unix.MAP_ANON|unix.MAP_PRIVATE) // page-aligned zeros
	if err != nil {
		return fmt.Errorf("preallocate: %w", err)
	}
	defer unix.Munmap(buf)
	for off < end {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("preallocate %s: stopped at byte %d of %d: %w", f.Name(), off, end, err)
		}
		n := int(min(int64(len(buf)), end-off))
		if _, err := w.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("preallocate %s: %w", f.Name(), err)
		}
		off += int64(n)
	}
	if err := w.Sync(); err != nil {
		return fmt.Errorf("preallocate %s: fsync: %w", f.Name(), err)
	}
	return nil
}

// directAlign is the alignment writeThrough needs for direct I/O.
const directAlign = 4096

// reopenDirect opens the file f has open, by its descriptor (never its
// path, which could have been replaced), for O_DIRECT writes.
func reopenDirect(f *os.File) (*os.File, error) {
	fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil && errors.Is(err, unix.ELOOP) {
		// /proc/self/fd/N is a magic link: O_NOFOLLOW refuses it on
		// some kernels. Reopening it follows the open file, not a path.
		fd, err = unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("preallocate %s: reopen for direct I/O: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
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
		if err := writeThrough(ctx, f, hole, data); err != nil {
			return err
		}
		off = data
	}
	return nil
}
