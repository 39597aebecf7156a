package node

import (
	"fmt"

	"github.com/dhpp-io/dhpp/pkg/node/projquota"
	"k8s.io/klog/v2"
)

// backendKinds are the backends dhpp has, in the order messages list them,
// each with its pure constructor, which only records the pool's store (and
// configuration); Open prepares a backend. Adding a backend is its file
// and a line here.
var backendKinds = []struct {
	kind BackendKind
	new  func(*store, PoolConfig) backend
}{
	{BackendBtrfs, newBtrfsBackend},
	{BackendXFS, newXFSBackend},
	{BackendExt4, newExt4Backend},
	{BackendLoop, newLoopBackend},
	{BackendDir, newDirBackend},
}

// constructor returns the constructor of a backend kind.
func constructor(kind BackendKind) (func(*store, PoolConfig) backend, bool) {
	for _, k := range backendKinds {
		if k.kind == kind {
			return k.new, true
		}
	}
	return nil, false
}

// openBackend makes a backend of the given kind for the pool and opens it,
// or explains why the pool's filesystem or this node cannot have it.
func openBackend(p *Pool, kind BackendKind) (backend, error) {
	newB, ok := constructor(kind)
	if !ok {
		return nil, fmt.Errorf("%w: backend %q", ErrUnsupported, kind)
	}
	b := newB(p.st, p.cfg)
	if err := b.Open(); err != nil {
		return nil, err
	}
	return b, nil
}

// selectBackend resolves the configured kind. For auto it takes the
// strongest the pool supports, in this order, and says why:
//
//	btrfs    — the filesystem is btrfs: subvolume + qgroup, enforced, O(1) usage;
//	xfs/ext4 — XFS or ext4 mounted with prjquota: project quota, enforced,
//	           O(1) usage, no image or loop device per volume;
//	loop     — any other filesystem with loop devices: enforced by image size;
//	dir      — nothing else works: sizes are recorded but NOT enforced.
func selectBackend(p *Pool, kind BackendKind) (backend, string, error) {
	if kind != BackendAuto && kind != "" {
		b, err := openBackend(p, kind)
		return b, "configured", err
	}
	b, btrfsErr := openBackend(p, BackendBtrfs)
	if btrfsErr == nil {
		return b, "auto: the pool is on btrfs; subvolumes with qgroup limits enforce sizes", nil
	}
	b, pqKind, pqErr := projQuotaAuto(p)
	if pqErr == nil {
		return b, fmt.Sprintf("auto: the pool is on %s mounted with prjquota; project quotas enforce sizes", pqKind), nil
	}
	notPQ := "not on XFS or ext4"
	if pqKind != "" {
		// XFS or ext4 without prjquota: the operator can have enforced
		// quotas without loop images by changing the mount; say so loudly.
		klog.InfoS("The pool's filesystem supports project quota but it is not enforced; mounting it with prjquota would give enforced per-volume quotas",
			"pool", p.Name, "path", p.Path, "filesystem", pqKind, "reason", pqErr)
		notPQ = fmt.Sprintf("%s project quota not usable, mounting with prjquota would give enforced quotas (%v)", pqKind, pqErr)
	}
	b, loopErr := openBackend(p, BackendLoop)
	if loopErr == nil {
		return b, fmt.Sprintf("auto: btrfs not usable (%v); %s; loop images enforce sizes on any filesystem", btrfsErr, notPQ), nil
	}
	b, _ = openBackend(p, BackendDir)
	return b, fmt.Sprintf("auto: btrfs not usable (%v), %s and %v; falling back to plain directories, SIZES ARE NOT ENFORCED", btrfsErr, notPQ, loopErr), nil
}

// projQuotaAuto tries the project-quota backend of the pool's filesystem.
// kind is "" when the filesystem is neither XFS nor ext4.
func projQuotaAuto(p *Pool) (backend, BackendKind, error) {
	q, err := projquota.Open(p.rootFile, p.st.mountInfoPath)
	if err != nil {
		return nil, "", err
	}
	k := BackendKind(q.Type())
	b, err := openBackend(p, k)
	return b, k, err
}
