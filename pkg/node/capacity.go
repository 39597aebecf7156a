package node

import "fmt"

// Sizes are rounded up to whole MiB: it keeps loop images aligned for any
// filesystem block size and makes reported sizes readable.
const sizeGranularity = 1 << 20

// ResolveSize turns a CSI CapacityRange into the size to provision.
//
// Rules (CSI spec, CreateVolume and ControllerExpandVolume):
//   - required and limit must not be negative; limit 0 means "no limit";
//   - limit < required is a malformed request (ErrInvalid);
//   - neither set: defaultSize;
//   - only limit set: min(defaultSize, limit);
//   - the result is at least minSize and rounded up to the granularity; if
//     that exceeds the limit the range cannot be satisfied (ErrOutOfRange).
func ResolveSize(required, limit, defaultSize, minSize int64) (int64, error) {
	if required < 0 {
		return 0, fmt.Errorf("%w: capacity_range.required_bytes is negative (%d)", ErrInvalid, required)
	}
	if limit < 0 {
		return 0, fmt.Errorf("%w: capacity_range.limit_bytes is negative (%d)", ErrInvalid, limit)
	}
	if limit > 0 && limit < required {
		return 0, fmt.Errorf("%w: capacity_range.limit_bytes (%d) is less than required_bytes (%d)", ErrInvalid, limit, required)
	}
	size := required
	if size == 0 {
		size = defaultSize
		if limit > 0 && limit < size {
			size = limit
		}
	}
	if size < minSize {
		size = minSize
	}
	size = roundUp(size, sizeGranularity)
	if limit > 0 && size > limit {
		return 0, fmt.Errorf("%w: the smallest size this pool can provision within the range is %d bytes (minimum %d, rounded to %d), above limit_bytes %d",
			ErrOutOfRange, size, minSize, sizeGranularity, limit)
	}
	return size, nil
}

// FitsRange reports whether an existing volume of size satisfies a capacity
// range, as CreateVolume idempotency requires.
func FitsRange(size, required, limit int64) bool {
	return size >= required && (limit == 0 || size <= limit)
}

func roundUp(n, unit int64) int64 {
	if r := n % unit; r != 0 {
		// Saturate instead of overflowing for absurd requests; the capacity
		// check rejects them with a precise message.
		if n > (1<<63-1)-(unit-r) {
			return 1<<63 - 1 - (1<<63-1)%unit
		}
		return n + unit - r
	}
	return n
}

// Capacity describes a pool's space as GetCapacity and metrics report it.
type Capacity struct {
	// Total is the pool filesystem's size.
	Total int64
	// Free is what statfs says is available to unprivileged writers.
	Free int64
	// Provisioned is the sum of the sizes of the pool's live volumes, of
	// the bytes reserved by creates and expansions in flight, and of what
	// the pool's snapshots occupied when they were taken.
	Provisioned int64
	// Reserved is the part of Provisioned (and of Promised) held by creates
	// and expansions that were admitted and have not finished yet.
	Reserved int64
	// Promised is the part of Provisioned that volumes have not written yet:
	// space that is free on disk but already belongs to a volume.
	Promised int64
	// Available is what a new volume may get without taking space promised
	// to another: Free − Promised, and never more than Total − Provisioned.
	// Volumes are thin (sparse images, quotas) but their sizes are promises;
	// subtracting only the unwritten part keeps foreign data on the disk and
	// the volumes' own data from being counted twice.
	Available int64
}

func computeCapacity(total, free, provisioned, promised int64) Capacity {
	avail := max(min(free-promised, total-provisioned), 0)
	return Capacity{Total: total, Free: free, Provisioned: provisioned, Promised: promised, Available: avail}
}
