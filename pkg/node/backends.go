package node

import "fmt"

// newBackend makes a backend of the given kind for the pool, or explains why
// the pool's filesystem or this node cannot have it.
func newBackend(p *Pool, kind BackendKind) (backend, error) {
	switch kind {
	case BackendBtrfs:
		return newBtrfsBackend(p)
	case BackendLoop:
		return newLoopBackend(p)
	case BackendDir:
		return dirBackend{pool: p}, nil
	}
	return nil, fmt.Errorf("%w: backend %q", ErrUnsupported, kind)
}

// selectBackend resolves the configured kind. For auto it takes the
// strongest the pool supports, in this order, and says why:
//
//	btrfs — the filesystem is btrfs: subvolume + qgroup, enforced, O(1) usage;
//	loop  — any other filesystem with loop devices: enforced by image size;
//	dir   — nothing else works: sizes are recorded but NOT enforced.
//
// (XFS/ext4 project quota, once supported, go between btrfs and loop.)
func selectBackend(p *Pool, kind BackendKind) (backend, string, error) {
	if kind != BackendAuto && kind != "" {
		b, err := newBackend(p, kind)
		return b, "configured", err
	}
	b, btrfsErr := newBackend(p, BackendBtrfs)
	if btrfsErr == nil {
		return b, "auto: the pool is on btrfs; subvolumes with qgroup limits enforce sizes", nil
	}
	b, loopErr := newBackend(p, BackendLoop)
	if loopErr == nil {
		return b, fmt.Sprintf("auto: btrfs not usable (%v); loop images enforce sizes on any filesystem", btrfsErr), nil
	}
	b, _ = newBackend(p, BackendDir)
	return b, fmt.Sprintf("auto: btrfs not usable (%v) and %v; falling back to plain directories, SIZES ARE NOT ENFORCED", btrfsErr, loopErr), nil
}
