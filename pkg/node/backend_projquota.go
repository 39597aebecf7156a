package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"

	"github.com/dhpp-io/dhpp/pkg/node/projquota"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Project ids dhpp gives its volumes: [projIDFirst, projIDLast]. The range
// is far above the small ids operators hand out by hand (/etc/projid) and
// above the range the kubelet's own quota monitoring starts at (1048577),
// and stays below 2^31 for tools that print ids as signed numbers.
const (
	projIDFirst uint32 = 1 << 30
	projIDLast  uint32 = 1<<31 - 1
)

// projQuotaBackend carves a volume as a directory with its own project id
// and the inherit flag (FS_IOC_FSSETXATTR), whose project has a hard block
// limit of the volume's size (quotactl). It serves both XFS (writes past the
// limit fail with ENOSPC) and ext4 (EDQUOT; root with CAP_SYS_RESOURCE is
// exempt). Usage and inode counts come from the quota: one syscall per
// volume, whatever the number of files. The pool must be mounted with
// prjquota; ext4 also needs the project and quota features.
type projQuotaBackend struct {
	dirStyle
	st   *store
	kind BackendKind
	q    *projquota.FS // set by Open

	mu sync.Mutex
	// used holds every project id known to be taken: ids in volume records
	// (live and trashed, read once before the first allocation) and ids
	// handed out or found charged since.
	used    map[uint32]bool
	scanned bool
	next    uint32
}

func newXFSBackend(st *store, _ PoolConfig) backend  { return newProjQuotaBackend(st, BackendXFS) }
func newExt4Backend(st *store, _ PoolConfig) backend { return newProjQuotaBackend(st, BackendExt4) }

func newProjQuotaBackend(st *store, kind BackendKind) *projQuotaBackend {
	return &projQuotaBackend{st: st, kind: kind, used: map[uint32]bool{}, next: projIDFirst}
}

func (b *projQuotaBackend) Kind() BackendKind { return b.kind }
func (*projQuotaBackend) Enforced() bool      { return true }

// Open checks that the pool is on the filesystem kind names and that the
// kernel enforces project quota there; the error says what to change
// otherwise.
func (b *projQuotaBackend) Open() error {
	kind := b.kind
	q, err := projquota.Open(b.st.rootFile, b.st.mountInfoPath)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	if string(q.Type()) != string(kind) {
		return fmt.Errorf("%w: %s is on %s, not %s", ErrUnsupported, b.st.path, q.Type(), kind)
	}
	st, err := q.State()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	if !st.Enforced {
		m := q.Mount()
		hint := "mount it with -o prjquota"
		if kind == BackendExt4 {
			hint += " (the filesystem needs the project and quota features: mkfs.ext4 -O quota,project, or tune2fs -O quota,project while unmounted)"
		}
		return fmt.Errorf("%w: %s at %s (%s) is mounted without project quota enforcement (options %s): %s for enforced per-volume sizes",
			ErrUnsupported, kind, m.MountPoint, m.Source, strings.Join(m.Options, ","), hint)
	}
	b.q = q
	return nil
}

func (b *projQuotaBackend) Create(_ context.Context, dir volumeDir, v *Volume) error {
	rel, err := makeDataDir(dir, v.Mode)
	if err != nil {
		return err
	}
	d, err := b.st.root.Open(rel)
	if err != nil {
		return err
	}
	defer d.Close()
	id, err := b.allocate()
	if err != nil {
		return err
	}
	// The limit first: a directory with the id but no limit yet would be an
	// unlimited volume for a moment; an id with a limit and no directory
	// is harmless (Destroy or the next allocation's check deals with it).
	if err := b.q.SetLimit(id, uint64(v.CapacityBytes)); err != nil {
		return err
	}
	if err := projquota.SetProject(d, id); err != nil {
		_ = b.q.SetLimit(id, 0)
		return err
	}
	v.ProjectID = id
	return nil
}

// allocate hands out a project id no volume record names and nothing on the
// filesystem is charged to or limited by (an id another tool set up, or a
// trashed volume whose record is gone, still has usage or a limit).
func (b *projQuotaBackend) allocate() (uint32, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.scanned {
		b.scanRecords()
		b.scanned = true
	}
	for tries := 0; tries < 10000; tries++ {
		id := b.next
		if b.next == projIDLast {
			b.next = projIDFirst
		} else {
			b.next++
		}
		if b.used[id] {
			continue
		}
		b.used[id] = true
		q, err := b.q.Get(id)
		if err != nil {
			delete(b.used, id)
			return 0, fmt.Errorf("pool %q: check project id %d: %w", b.st.name, id, err)
		}
		if q.Empty() {
			return id, nil
		}
		klog.V(2).InfoS("Skipping a project id in use on the filesystem", "pool", b.st.name, "projectID", id, "bytes", q.BytesUsed, "inodes", q.InodesUsed, "limit", q.BytesLimit)
	}
	return 0, fmt.Errorf("pool %q: no free project id found after 10000 tries", b.st.name)
}

// scanRecords marks the project ids of the pool's live volumes and of the
// trashed ones (whose data, and so whose charge, stays until purged).
func (b *projQuotaBackend) scanRecords() {
	for _, v := range b.st.records() {
		if v.ProjectID != 0 {
			b.used[v.ProjectID] = true
		}
	}
}

func (b *projQuotaBackend) Resize(_ context.Context, _ volumeDir, v *Volume, newSize int64) error {
	if v.ProjectID == 0 {
		return fmt.Errorf("volume %q has no project id in its record", v.ID)
	}
	return b.q.SetLimit(v.ProjectID, uint64(newSize))
}

func (b *projQuotaBackend) Allocated(_ volumeDir, v *Volume) (int64, error) {
	if v.ProjectID == 0 {
		return 0, fmt.Errorf("volume %q has no project id in its record", v.ID)
	}
	q, err := b.q.Get(v.ProjectID)
	return int64(q.BytesUsed), err
}

// Usage reports the project's charged bytes and inodes against the volume's
// size. The quota has no inode limit, so a volume may use every free inode
// of the filesystem: that is what it reports as free.
func (b *projQuotaBackend) Usage(_ volumeDir, v *Volume, _ string) (Usage, error) {
	if v.ProjectID == 0 {
		return Usage{}, fmt.Errorf("volume %q has no project id in its record", v.ID)
	}
	q, err := b.q.Get(v.ProjectID)
	if err != nil {
		return Usage{}, fmt.Errorf("volume %q: project quota: %w", v.ID, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(b.st.rootFile.Fd()), &st); err != nil {
		return Usage{}, fmt.Errorf("pool %q: statfs: %w", b.st.name, err)
	}
	total, used := v.CapacityBytes, int64(q.BytesUsed)
	avail := min(max(total-used, 0), int64(st.Bavail)*st.Bsize) // a full disk is full for every volume
	freeInodes := int64(st.Ffree)
	if q.InodesLimit > 0 {
		freeInodes = min(freeInodes, max(int64(q.InodesLimit)-int64(q.InodesUsed), 0))
	}
	return Usage{
		TotalBytes: total, UsedBytes: used, AvailableBytes: avail,
		HasInodes: true, UsedInodes: int64(q.InodesUsed), FreeInodes: freeInodes,
		TotalInodes: int64(q.InodesUsed) + freeInodes,
	}, nil
}

// Destroy removes the limit of the volume's project before the directory
// is removed (and its usage drops to zero). The id comes from the volume's
// record; without one (a creation that crashed before writing it) from the
// directory itself. Ids outside dhpp's range were not set by dhpp and are
// left alone, and a directory whose id disagrees with its record (someone
// with CAP_SYS_ADMIN changed it) does not make dhpp touch another project.
func (b *projQuotaBackend) Destroy(_ context.Context, dir volumeDir) error {
	d, err := b.st.root.Open(path.Join(dir.rel, dataName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	defer d.Close()
	dirID, _, err := projquota.GetProject(d)
	if err != nil {
		return err
	}
	id := dirID
	if rec, ok := dir.record(); ok && rec.ProjectID != 0 {
		recID := rec.ProjectID
		if recID != dirID {
			klog.InfoS("A volume directory's project id differs from its record; releasing the record's", "pool", b.st.name, "dir", dir.rel, "record", recID, "directory", dirID)
		}
		id = recID
	}
	if id < projIDFirst || id > projIDLast {
		return nil
	}
	return b.q.SetLimit(id, 0)
}
