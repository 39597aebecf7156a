package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// On-disk layout of a pool directory. Everything dhpp creates lives here and
// every path below is resolved through the pool's os.Root, so no symlink or
// ".." planted on the disk can make dhpp create, change or remove anything
// outside the pool.
const (
	dirVolumes  = "volumes"      // volumes/<name>/{volume.json,data|disk.img}
	dirInternal = ".dhpp"        // driver-private, mode 0700
	dirTmp      = ".dhpp/tmp"    // volumes being created (phase Creating)
	dirTrash    = ".dhpp/trash"  // deleted volumes: <name>@<unix-nanos>
	HealthFile  = ".dhpp/health" // the health prober's file (pkg/health)
	dataName    = "data"         // a volume's root directory or subvolume
	imageName   = "disk.img"     // a loop volume's image
)

// PoolConfig names a pool and where its directory is.
type PoolConfig struct {
	Name    string
	Path    string
	Backend BackendKind
	// FsType is the filesystem of loop Filesystem volumes whose request
	// names none (ext4 if empty). ext4 grows online only with
	// CAP_SYS_RESOURCE; xfs needs only CAP_SYS_ADMIN but is at least 300 MiB.
	FsType string
	// BtrfsQuota is how a btrfs pool whose quotas are off gets them:
	// "" (or BtrfsQuotaQgroup) full qgroups, BtrfsQuotaSimple simple quotas
	// (Linux 6.7+; refused where the kernel lacks them). Quotas already on
	// keep the mode they are in.
	BtrfsQuota string
}

// Values of PoolConfig.BtrfsQuota.
const (
	BtrfsQuotaQgroup = "qgroup"
	BtrfsQuotaSimple = "simple"
)

// Pool is a directory on a node's data disk from which volumes are carved.
type Pool struct {
	Name string
	// Path is the absolute, clean path of the pool directory.
	Path   string
	fsType string // default filesystem of loop volumes
	env    *env
	cfg    PoolConfig // as configured, to open a pool that was missing

	// opened is set once the directory is open and its volumes are read.
	// A pool whose directory was missing at start stays unopened (every
	// request on it is refused, see Missing) until openIfPresent finds the
	// directory. The fields below up to backends are written before opened
	// is set and never after, so a reader that saw it set may use them.
	opened atomic.Bool
	openMu sync.Mutex // serialises openIfPresent
	// dev and ino identify the directory that was opened, to notice a
	// different one (or none) at Path later: an unmounted disk.
	dev, ino uint64

	root     *os.Root // the pool directory, for traversal-safe path operations
	rootFile *os.File // an open fd on it, for statfs and ioctls
	st       *store   // what the pool's backends see of it
	backend  backend  // carves new volumes
	// backends serves existing volumes by the backend that made them, each
	// opened once.
	bmu      sync.Mutex
	backends map[BackendKind]backend

	// admitMu serialises admission (see admit): the capacity check and the
	// reservation it leads to are one step, so requests for different
	// volumes cannot all be admitted against the same free space.
	admitMu sync.Mutex

	mu      sync.RWMutex
	volumes map[string]*Volume // live volumes by name
	// quarantined are volume directories whose record cannot be trusted,
	// by name: left alone, their names reserved.
	quarantined map[string]Quarantine
	provisioned int64 // Σ ReservedBytes of the live volumes
	// snaps indexes the pool's snapshots; their stored bytes count as
	// provisioned.
	snaps poolSnapshots
	// reserved is what admitted creates and expansions hold until their
	// record is put (which converts it into provisioned) or they fail
	// (which releases it). Capacity counts it as provisioned and promised.
	reserved int64
	// promisedBytes caches the live volumes' unwritten bytes (Capacity's
	// Promised without reservations), computed at promisedAt. put adds its
	// delta to it and to promisedAdj; drop bumps drops. A recount started
	// before a drop is not cached, one started before a put is cached with
	// that put's delta added.
	promisedBytes int64
	promisedAt    time.Time
	promisedAdj   int64
	drops         uint64

	// holds are the trash entries a restore or the purger works on (untrash.go).
	holds heldEntries
}

func openPool(cfg PoolConfig, e *env) (*Pool, error) {
	if err := ValidatePoolName(cfg.Name); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(cfg.Path) {
		return nil, fmt.Errorf("%w: pool %q: path %q is not absolute", ErrInvalid, cfg.Name, cfg.Path)
	}
	if cfg.FsType != "" {
		if err := ValidateLoopFsType(cfg.FsType); err != nil {
			return nil, fmt.Errorf("pool %q: %w", cfg.Name, err)
		}
	}
	if cfg.BtrfsQuota != "" && cfg.BtrfsQuota != BtrfsQuotaQgroup && cfg.BtrfsQuota != BtrfsQuotaSimple {
		return nil, fmt.Errorf("%w: pool %q: btrfs quota mode %q (want %q or %q)", ErrInvalid, cfg.Name, cfg.BtrfsQuota, BtrfsQuotaQgroup, BtrfsQuotaSimple)
	}
	p := &Pool{Name: cfg.Name, Path: filepath.Clean(cfg.Path), fsType: cfg.FsType, env: e, cfg: cfg,
		volumes: map[string]*Volume{}, quarantined: map[string]Quarantine{}}
	// The pool directory must exist: creating it would hide an unmounted
	// data disk and fill the root filesystem instead. A missing one leaves
	// the pool unopened rather than failing the driver: the node's other
	// pools keep serving, and this one opens when its directory appears.
	st, err := os.Stat(p.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		klog.ErrorS(err, "Pool directory is missing: is the data disk mounted? The pool is fenced and refuses every request until the directory appears (checked every trash-purge round); dhpp does not create pool directories",
			"pool", p.Name, "path", p.Path)
		return p, nil
	case err != nil:
		return nil, fmt.Errorf("pool %q: %w (is the data disk mounted? dhpp does not create pool directories)", cfg.Name, err)
	case !st.IsDir():
		return nil, fmt.Errorf("%w: pool %q: %s is not a directory", ErrInvalid, cfg.Name, p.Path)
	}
	if err := p.open(); err != nil {
		return nil, err
	}
	return p, nil
}

// open opens the pool's directory, selects its backend and reads its
// volumes, then marks the pool opened.
func (p *Pool) open() error {
	var err error
	if p.root, err = os.OpenRoot(p.Path); err != nil {
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	if p.rootFile, err = p.root.Open("."); err != nil {
		p.Close()
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(p.rootFile.Fd()), &st); err != nil {
		p.Close()
		return fmt.Errorf("pool %q: stat %s: %w", p.Name, p.Path, err)
	}
	p.dev, p.ino = st.Dev, st.Ino
	fsType, err := fsTypeOf(p.rootFile)
	if err != nil {
		p.Close()
		return fmt.Errorf("pool %q: statfs %s: %w", p.Name, p.Path, err)
	}
	p.st = &store{name: p.Name, path: p.Path, fsType: fsType, root: p.root, rootFile: p.rootFile,
		exec: p.env.exec, mounter: p.env.mounter, mountInfoPath: p.env.mountInfoPath, records: p.records}
	if err := p.init(p.cfg.Backend); err != nil {
		p.Close()
		return err
	}
	p.opened.Store(true)
	return nil
}

// openIfPresent opens a pool that was missing at start if its directory
// exists now. It reports whether it opened the pool; an error means the
// directory is there but the pool could not be opened (retried next time).
func (p *Pool) openIfPresent() (bool, error) {
	p.openMu.Lock()
	defer p.openMu.Unlock()
	if p.opened.Load() {
		return false, nil
	}
	st, err := os.Stat(p.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("pool %q: %w", p.Name, err)
	case !st.IsDir():
		return false, fmt.Errorf("pool %q: %s is not a directory", p.Name, p.Path)
	}
	if err := p.open(); err != nil {
		return false, err
	}
	return true, nil
}

// Missing returns nil while the pool's directory is the one the driver
// opened, else an ErrPoolMissing error naming the pool, its path and the
// likely cause. Every request on the pool's volumes checks it: the data of
// a pool whose disk is not mounted may come back, so nothing is answered
// for it, and nothing is written through a descriptor on a disk that is no
// longer where the pool is.
func (p *Pool) Missing() error {
	if !p.opened.Load() {
		return fmt.Errorf("%w: pool %q: its directory %s was missing when the driver started; is the data disk mounted? "+
			"The driver opens the pool when the directory appears (checked every trash-purge round, at most a minute)", ErrPoolMissing, p.Name, p.Path)
	}
	var st unix.Stat_t
	err := unix.Stat(p.Path, &st)
	if err == nil && st.Dev == p.dev && st.Ino == p.ino {
		return nil
	}
	why := "is another directory than the one the driver opened"
	if err != nil {
		why = fmt.Sprintf("is gone (%v)", err)
	}
	return fmt.Errorf("%w: pool %q: its directory %s %s; is the data disk mounted? Remount it there, or restart the driver to open what is there now", ErrPoolMissing, p.Name, p.Path, why)
}

func (p *Pool) init(kind BackendKind) error {
	for _, d := range []struct {
		rel  string
		mode fs.FileMode
	}{{dirInternal, 0o700}, {dirTmp, 0o700}, {dirTrash, 0o700}, {dirVolumes, 0o711}} {
		if err := p.root.Mkdir(d.rel, d.mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("pool %q: create %s: %w", p.Name, d.rel, err)
		}
	}
	b, why, err := selectBackend(p, kind)
	if err != nil {
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	klog.InfoS("Pool backend selected", "pool", p.Name, "path", p.Path, "backend", b.Kind(), "sizeEnforced", b.Enforced(), "reason", why)
	p.backend = b
	p.backends = map[BackendKind]backend{b.Kind(): b}
	return p.recover()
}

// backendFor returns the backend that serves an existing volume (or a
// trashed one), opening it the first time. A backend that cannot be opened
// is not kept: the next call tries again.
func (p *Pool) backendFor(kind BackendKind) (backend, error) {
	p.bmu.Lock()
	defer p.bmu.Unlock()
	if b, ok := p.backends[kind]; ok {
		return b, nil
	}
	b, err := openBackend(p, kind)
	if err != nil {
		return nil, fmt.Errorf("pool %q has volumes of backend %q but cannot serve them: %w", p.Name, kind, err)
	}
	p.backends[kind] = b
	return b, nil
}

// Backend is the kind of backend that carves this pool's new volumes (the
// configured kind while the pool is not opened).
func (p *Pool) Backend() BackendKind {
	if !p.opened.Load() {
		return p.cfg.Backend
	}
	return p.backend.Kind()
}

// Close releases the pool's file descriptors.
func (p *Pool) Close() {
	if p.rootFile != nil {
		p.rootFile.Close()
		p.rootFile = nil
	}
	if p.root != nil {
		p.root.Close()
		p.root = nil
	}
}

// recover rebuilds the pool's state from its directory: volumes/ holds the
// live volumes, anything left in tmp/ is an interrupted creation (it moves to
// the trash, never straight to deletion), and the trash is purged later.
func (p *Pool) recover() error {
	tmp, err := p.readDirNames(dirTmp)
	if err != nil {
		return err
	}
	for _, name := range tmp {
		volName := name
		if i := strings.LastIndexByte(name, '.'); i > 0 {
			volName = name[:i]
		}
		dst := path.Join(dirTrash, trashName(volName, p.env.now()))
		thawLeftover(p.root, path.Join(dirTmp, name)) // a snapshot of a loop volume cut short while frozen
		klog.InfoS("Moving an interrupted volume or snapshot creation to the trash", "pool", p.Name, "entry", name, "trash", dst)
		if err := p.root.Rename(path.Join(dirTmp, name), dst); err != nil {
			return fmt.Errorf("pool %q: recover %s: %w", p.Name, name, err)
		}
	}
	if err := p.recoverSnapshots(); err != nil {
		return err
	}
	names, err := p.readDirNames(dirVolumes)
	if err != nil {
		return err
	}
	vols, quarantined := readRecords(p.root, p.env.nodeID, p.Name, p.Path, names)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, v := range vols {
		if v.Phase == PhaseResizing {
			klog.InfoS("Volume was being resized when the driver stopped; the next expand request completes it", "volume", v.ID, "from", v.CapacityBytes, "to", v.TargetBytes)
		}
		p.volumes[v.Name] = v
		p.provisioned += v.ReservedBytes()
	}
	for _, q := range quarantined {
		p.quarantined[q.Name] = q
	}
	return nil
}

// recoveryWorkers bounds the record reads in flight at start-up. A cold
// start is latency-bound (one small read per volume); a few reads in flight
// let the disk's queue work, which matters at thousands of volumes.
const recoveryWorkers = 16

// readRecords reads the records of the named volume directories
// concurrently. Entries that are not volumes are logged; those whose record
// cannot be trusted are logged and quarantined. Both are left untouched on
// disk: never guess, never delete.
func readRecords(root *os.Root, nodeID, pool, poolPath string, names []string) ([]*Volume, []Quarantine) {
	out := make([]*Volume, len(names))
	bad := make([]*Quarantine, len(names))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(recoveryWorkers, len(names)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := names[i]
				if ValidateVolumeName(name) != nil {
					klog.ErrorS(nil, "Ignoring a foreign entry in the pool's volumes directory", "pool", pool, "entry", name)
					continue
				}
				v, problem := loadVolume(root, nodeID, pool, name)
				if problem != "" {
					q := &Quarantine{Pool: pool, Name: name, Record: filepath.Join(poolPath, dirVolumes, name, recordFile), Problem: problem}
					klog.ErrorS(q.Err(), "Volume quarantined", "pool", pool, "volume", name)
					bad[i] = q
					continue
				}
				out[i] = v
			}
		}()
	}
	for i := range names {
		work <- i
	}
	close(work)
	wg.Wait()
	var quarantined []Quarantine
	for _, q := range bad {
		if q != nil {
			quarantined = append(quarantined, *q)
		}
	}
	return slices.DeleteFunc(out, func(v *Volume) bool { return v == nil }), quarantined
}

// Quarantined lists the pool's quarantined volumes by name.
func (p *Pool) Quarantined() []Quarantine {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]Quarantine, 0, len(p.quarantined))
	for _, q := range p.quarantined {
		out = append(out, q)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// lookup returns the live volume of that name, nil if there is none, or
// the quarantine error if its record cannot be trusted.
func (p *Pool) lookup(name string) (*Volume, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if q, ok := p.quarantined[name]; ok {
		return nil, q.Err()
	}
	if v, ok := p.volumes[name]; ok {
		return v.clone(), nil
	}
	return nil, nil
}

// recheckQuarantined re-reads one quarantined volume (its name's lock
// held): a repaired record makes it a live volume again, a directory moved
// away releases the name. It reports what happened, "" if nothing changed.
func (p *Pool) recheckQuarantined(name string) string {
	p.mu.RLock()
	q, ok := p.quarantined[name]
	p.mu.RUnlock()
	if !ok {
		return ""
	}
	if _, err := p.root.Lstat(path.Join(dirVolumes, name)); errors.Is(err, fs.ErrNotExist) {
		p.mu.Lock()
		delete(p.quarantined, name)
		p.mu.Unlock()
		return "released: its directory is gone"
	}
	v, problem := loadVolume(p.root, p.env.nodeID, p.Name, name)
	if problem != "" {
		if problem != q.Problem {
			q.Problem = problem
			p.mu.Lock()
			p.quarantined[name] = q
			p.mu.Unlock()
		}
		return ""
	}
	// Live first, then out of quarantine: a lookup in between sees the
	// quarantine, never "no such volume".
	p.put(v, nil)
	p.mu.Lock()
	delete(p.quarantined, name)
	p.mu.Unlock()
	return "released: its record is valid again"
}

func (p *Pool) readDirNames(rel string) ([]string, error) {
	d, err := p.root.Open(rel)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %w", p.Name, err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("pool %q: read %s: %w", p.Name, rel, err)
	}
	return names, nil
}

// statfs is the pool filesystem's size and space available to writers.
func (p *Pool) statfs() (total, free int64, err error) {
	if !p.opened.Load() {
		return 0, 0, p.Missing()
	}
	return p.st.statfs()
}

// promisedTTL bounds how stale the promised-bytes figure may be. Summing it
// costs one cheap call per volume; create, expand and delete adjust the
// cached value, so only writes into volumes make it drift, and only for
// this long.
const promisedTTL = time.Second

// Capacity reports the pool's space (see Capacity for the arithmetic).
// Reservations of requests in flight count as provisioned and promised.
func (p *Pool) Capacity() (Capacity, error) {
	total, free, err := p.statfs()
	if err != nil {
		return Capacity{}, err
	}
	prov, reserved, promised := p.commitments()
	c := computeCapacity(total, free, prov+reserved, promised+reserved)
	c.Reserved = reserved
	return c, nil
}

// commitments returns, as of one instant, the live volumes' provisioned
// bytes, the bytes reserved by requests in flight, and the live volumes'
// unwritten bytes (from the cache, or recounted when it is stale).
func (p *Pool) commitments() (provisioned, reserved, promised int64) {
	p.mu.RLock()
	// Snapshots never grow: their bytes are provisioned and written.
	provisioned, reserved = p.provisioned+p.snaps.stored, p.reserved
	if !p.promisedAt.IsZero() && time.Since(p.promisedAt) < promisedTTL {
		defer p.mu.RUnlock()
		return provisioned, reserved, p.promisedBytes
	}
	vols := make([]*Volume, 0, len(p.volumes))
	for _, v := range p.volumes {
		vols = append(vols, v)
	}
	adj, drops := p.promisedAdj, p.drops
	p.mu.RUnlock()
	// The sum is consistent with the provisioned and reserved bytes read
	// above: a volume put since then was still counted as reserved.
	promised = p.unwritten(vols)
	p.mu.Lock()
	if p.drops == drops {
		p.promisedBytes, p.promisedAt = promised+p.promisedAdj-adj, time.Now()
	}
	p.mu.Unlock()
	return provisioned, reserved, promised
}

// unwritten sums, over vols, the reserved bytes not yet written.
func (p *Pool) unwritten(vols []*Volume) int64 {
	var sum int64
	for _, v := range vols {
		used := int64(0)
		if b, err := p.backendFor(v.Backend); err == nil {
			if u, err := b.Allocated(volumeDir{st: p.st, rel: path.Join(dirVolumes, v.Name)}, v); err == nil {
				used = u
			}
		}
		sum += max(v.ReservedBytes()-used, 0)
	}
	return sum
}

// VolumeCount is the number of live volumes in the pool.
func (p *Pool) VolumeCount() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.volumes)
}

func (p *Pool) get(name string) *Volume {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if v, ok := p.volumes[name]; ok {
		return v.clone()
	}
	return nil
}

// put records a volume's new state. If r is not nil, its reservation is
// converted in the same step: the bytes move from reserved to provisioned,
// so Capacity never sees them twice or not at all.
func (p *Pool) put(v *Volume, r *reservation) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delta := v.ReservedBytes()
	if old, ok := p.volumes[v.Name]; ok {
		delta -= old.ReservedBytes()
	}
	p.volumes[v.Name] = v.clone()
	p.provisioned += delta
	// New or grown reservations are unwritten at first, except for what
	// the request itself wrote (mkfs metadata), which free space already
	// shows: counting it as promised too would refuse space that exists.
	unwritten := delta
	if r != nil {
		unwritten -= min(r.written, max(delta, 0))
		p.reserved -= r.bytes
		r.bytes = 0
	}
	p.promisedBytes = max(p.promisedBytes+unwritten, 0)
	p.promisedAdj += unwritten
	p.env.signalChange()
}

func (p *Pool) drop(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.volumes[name]; ok {
		p.provisioned -= old.ReservedBytes()
		delete(p.volumes, name)
		p.promisedAt = time.Time{} // its unwritten part is unknown here: recount
		p.drops++
		p.env.signalChange()
	}
}

func (p *Pool) list() []*Volume {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]*Volume, 0, len(p.volumes))
	for _, v := range p.volumes {
		out = append(out, v.clone())
	}
	return out
}

// checkFits refuses a size the pool can never hold (ErrOutOfRange) or cannot
// hold now (ErrNoSpace); extra is the growth being asked for. It reserves
// nothing: requests that change the pool go through admit.
func (p *Pool) checkFits(size, extra int64) error {
	c, err := p.Capacity()
	if err != nil {
		return err
	}
	if size > c.Total {
		return fmt.Errorf("%w: %d bytes requested, pool %q is only %d bytes in total", ErrOutOfRange, size, p.Name, c.Total)
	}
	if extra > c.Available {
		return fmt.Errorf("%w: %d bytes requested, pool %q has %d bytes available (%d total, %d free on disk, %d provisioned of which %d not yet written; %d of them held by requests in flight)%s",
			ErrNoSpace, extra, p.Name, c.Available, c.Total, c.Free, c.Provisioned, c.Promised, c.Reserved, p.trashNote())
	}
	return nil
}

// trashNote tells whoever reads a refusal for lack of space that deleted
// volumes still hold some of it: the trash keeps their data for the
// retention period, and a pool full of trash looks like a pool full of
// volumes otherwise. It is read only on that error path.
func (p *Pool) trashNote() string {
	entries, err := p.Trash()
	if err != nil || len(entries) == 0 {
		return ""
	}
	return fmt.Sprintf("; %d deleted volumes or snapshots in the pool's trash hold part of the used space until they are purged (kubectl dhpp trash)", len(entries))
}

// reservation is capacity held for a create or expansion in flight.
type reservation struct {
	pool  *Pool
	bytes int64 // still held; put and release zero it
	// written is what the request wrote into the volume's storage (the
	// blocks mkfs allocated in a loop image), measured before put.
	written int64
}

// admit checks that a volume of size bytes, growing the pool's commitments
// by extra bytes, fits, and reserves extra in the same step. The caller
// must call release when done; put(v, r) converts the reservation first.
func (p *Pool) admit(size, extra int64) (*reservation, error) {
	p.admitMu.Lock()
	defer p.admitMu.Unlock()
	if err := p.checkFits(size, extra); err != nil {
		return nil, err
	}
	r := &reservation{pool: p, bytes: max(extra, 0)}
	p.mu.Lock()
	p.reserved += r.bytes
	p.mu.Unlock()
	return r, nil
}

// release gives back what the reservation still holds (nothing once put
// has converted it). It is safe to call more than once.
func (r *reservation) release() {
	r.pool.mu.Lock()
	r.pool.reserved -= r.bytes
	r.bytes = 0
	r.pool.mu.Unlock()
}

// create carves a new, empty volume (see build).
func (p *Pool) create(ctx context.Context, v *Volume) error {
	b, err := p.backendFor(v.Backend) // the native one, or loop for an image volume
	if err != nil {
		return err
	}
	return p.build(ctx, v, b, buildSpec{
		what: fmt.Sprintf("create volume %q", v.Name),
		fill: func(dir volumeDir) error { return b.Create(ctx, dir, v) },
		// Larger than this pool: a larger one on another node may take it.
		tooLargeElsewhere: true,
		// A new volume's storage is durable with its record's fsync (which
		// commits the mkdirs before it on every journaling filesystem), or
		// made so by the backend (a loop image's mkfs).
		syncData: false,
		cleanup: func(dir volumeDir) {
			if err := b.Destroy(ctx, dir); err != nil {
				return // its remains stay in tmp: recovery trashes them
			}
			if err := p.root.RemoveAll(dir.rel); err != nil {
				klog.ErrorS(err, "Cleaning up a failed volume creation; recovery will trash it", "pool", p.Name, "dir", dir.rel)
			}
		},
	})
}

// buildSpec is what differs between the builds of a new empty volume
// (create) and of one filled from a snapshot or a volume (createFrom).
type buildSpec struct {
	what string // "create volume ...", for errors
	// fill makes the volume's storage in dir, a fresh directory in tmp.
	fill func(dir volumeDir) error
	// tooLargeElsewhere turns a size larger than the pool into ErrElsewhere
	// (another node's larger pool may take it). Only for a new empty
	// volume: a restore or clone can be served by the source's node alone.
	tooLargeElsewhere bool
	// syncData flushes the pool's filesystem (syncfs) before the record is
	// written: copied data and reflinks must be on disk before a record
	// says the volume is complete.
	syncData bool
	// cleanup removes a failed build's directory from tmp; what it leaves,
	// recovery moves to the trash at the next start.
	cleanup func(dir volumeDir)
}

// build makes volume v (phase Creating) with backend b in .dhpp/tmp and
// publishes it by rename into volumes/ only when it is complete, so a
// crash at any point leaves either no volume (recovery trashes the
// remains) or a complete one. The steps: admit its size, make the
// directory, fill it, (syncfs,) write the record, rename, count it, fsync
// volumes/. Two fsyncs (three with syncData) make it durable: the
// record's, and volumes/'s after the rename that publishes the volume.
func (p *Pool) build(ctx context.Context, v *Volume, b backend, spec buildSpec) error {
	r, err := p.admit(v.CapacityBytes, v.CapacityBytes)
	if spec.tooLargeElsewhere && errors.Is(err, ErrOutOfRange) {
		return fmt.Errorf("%w: %w", ErrElsewhere, err)
	}
	if err != nil {
		return err
	}
	defer r.release()
	tmp := path.Join(dirTmp, v.Name+"."+nonce())
	if err := p.root.Mkdir(tmp, 0o711); err != nil {
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	dir := volumeDir{st: p.st, rel: tmp}
	if err := p.fillAndRecord(v, b, dir, spec, r); err != nil {
		spec.cleanup(dir)
		return fmt.Errorf("pool %q: %s: %w", p.Name, spec.what, err)
	}
	// The volume is in volumes/ now, so it counts even if the fsync
	// fails: a retried CreateVolume then finds it.
	p.put(v, r)
	return syncDir(p.root, dirVolumes)
}

// fillAndRecord is build's part that leaves remains in tmp if it fails:
// it fills dir, records v there as Ready and renames dir into volumes/.
func (p *Pool) fillAndRecord(v *Volume, b backend, dir volumeDir, spec buildSpec, r *reservation) error {
	if err := spec.fill(dir); err != nil {
		return err
	}
	if n, err := b.Allocated(dir, v); err == nil {
		r.written = n // what filling wrote is on disk already: not promised
	}
	if spec.syncData {
		if err := p.syncfs(); err != nil {
			return err
		}
	}
	if err := Transition(v.Phase, PhaseReady); err != nil {
		return err
	}
	v.Phase = PhaseReady
	if err := writeNewRecord(p.root, dir.rel, v); err != nil {
		return err
	}
	if err := p.root.Rename(dir.rel, path.Join(dirVolumes, v.Name)); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	return nil
}

// remove moves a volume to the trash. The data stays on disk until the
// retention has passed, so a mistaken delete can be undone by moving the
// directory back (see docs).
func (p *Pool) remove(ctx context.Context, v *Volume) error {
	if err := Transition(v.Phase, PhaseDeleted); err != nil {
		return err
	}
	rel := path.Join(dirVolumes, v.Name)
	if users, err := p.usersOf(ctx, v, rel); err != nil {
		return err
	} else if len(users) > 0 {
		return fmt.Errorf("%w: volume %q is still mounted at %s; unpublish it first", ErrInUse, v.ID, strings.Join(users, ", "))
	}
	dst := path.Join(dirTrash, trashName(v.Name, p.env.now()))
	if err := p.root.Rename(rel, dst); err != nil {
		return fmt.Errorf("pool %q: move volume %q to the trash: %w", p.Name, v.Name, err)
	}
	if err := syncDir(p.root, dirVolumes); err != nil {
		return err
	}
	if err := syncDir(p.root, dirTrash); err != nil {
		return err
	}
	p.drop(v.Name)
	klog.V(2).InfoS("Volume moved to the trash", "volume", v.ID, "trash", dst)
	return nil
}

// expand grows a volume to newSize. The record first says Resizing with the
// target, then the backend applies it, then the record says Ready: a crash
// in between leaves a Resizing volume that the retried expand completes.
func (p *Pool) expand(ctx context.Context, v *Volume, newSize int64) (*Volume, error) {
	b, err := p.backendFor(v.Backend)
	if err != nil {
		return nil, err
	}
	r, err := p.admit(newSize, newSize-v.ReservedBytes())
	if err != nil {
		return nil, err
	}
	defer r.release()
	rel := path.Join(dirVolumes, v.Name)
	next := v.clone()
	if err := Transition(v.Phase, PhaseResizing); err != nil {
		return nil, err
	}
	next.Phase, next.TargetBytes = PhaseResizing, newSize
	if err := writeRecord(p.root, rel, next); err != nil {
		return nil, err
	}
	// From here the record holds the target: the reservation becomes part
	// of the volume's ReservedBytes, and stays so if the resize fails.
	p.put(next, r)
	if err := b.Resize(ctx, volumeDir{st: p.st, rel: rel}, next, newSize); err != nil {
		return nil, fmt.Errorf("pool %q: resize volume %q to %d bytes: %w", p.Name, v.Name, newSize, err)
	}
	next.Phase, next.CapacityBytes, next.TargetBytes = PhaseReady, newSize, 0
	if err := writeRecord(p.root, rel, next); err != nil {
		return nil, err
	}
	p.put(next, nil)
	return next.clone(), nil
}

// Maintain runs the periodic work of the pool's backends that have some
// (btrfs: checks that qgroup accounting is consistent, else starts a
// rescan). The trash purger calls it on every round.
func (p *Pool) Maintain() {
	p.bmu.Lock()
	var ms []maintainer
	for _, b := range p.backends {
		if m, ok := b.(maintainer); ok {
			ms = append(ms, m)
		}
	}
	p.bmu.Unlock()
	for _, m := range ms {
		m.Maintain()
	}
}

func trashName(name string, t time.Time) string {
	return name + "@" + strconv.FormatInt(t.UnixNano(), 10)
}

func parseTrashName(entry string) (name string, deleted time.Time, ok bool) {
	i := strings.LastIndexByte(entry, '@')
	if i <= 0 {
		return "", time.Time{}, false
	}
	ns, err := strconv.ParseInt(entry[i+1:], 10, 64)
	if err != nil {
		return "", time.Time{}, false
	}
	return entry[:i], time.Unix(0, ns), true
}

// PurgeTrash removes trashed volumes older than retention and returns how
// many it removed. A trash entry that is still mounted or attached anywhere
// is kept and reported: purging it would delete data a pod still sees.
func (p *Pool) PurgeTrash(ctx context.Context, retention time.Duration) (int, error) {
	entries, err := p.readDirNames(dirTrash)
	if err != nil {
		return 0, err
	}
	sort.Strings(entries)
	purged := 0
	var errs []error
	for _, entry := range entries {
		if ctx.Err() != nil {
			break
		}
		_, deleted, ok := parseTrashName(entry)
		if !ok {
			klog.ErrorS(nil, "Leaving an unrecognised trash entry alone", "pool", p.Name, "entry", entry)
			continue
		}
		if p.env.now().Sub(deleted) < retention {
			continue
		}
		done, err := p.purgeUnlessRestoring(ctx, entry) // untrash.go
		if err != nil {
			errs = append(errs, err)
		} else if done {
			purged++
		}
	}
	return purged, errors.Join(errs...)
}

func (p *Pool) purge(ctx context.Context, rel string) error {
	dir := volumeDir{st: p.st, rel: rel}
	// The record says which backend made the volume; without one (a crash
	// during creation), every backend is asked to release what it may
	// have left.
	var kinds []BackendKind
	v, err := readTrashedRecord(p.root, rel)
	if s, serr := readSnapshotRecord(p.root, rel); err != nil && serr == nil && knownBackend(s.Source.Backend) {
		v, err = &Volume{Name: path.Base(rel)}, nil
		kinds = []BackendKind{s.Source.Backend}
	} else if err == nil {
		kinds = []BackendKind{v.Backend}
	} else {
		v = &Volume{Name: path.Base(rel)}
		for _, k := range backendKinds {
			kinds = append(kinds, k.kind)
		}
	}
	if users, err := p.usersOf(ctx, v, rel); err != nil {
		return err
	} else if len(users) > 0 {
		return fmt.Errorf("pool %q: not purging %s: still in use at %s", p.Name, rel, strings.Join(users, ", "))
	}
	for _, k := range kinds {
		b, err := p.backendFor(k)
		if err != nil {
			continue // e.g. no btrfs here: nothing of that kind to release
		}
		if err := b.Destroy(ctx, dir); err != nil {
			return fmt.Errorf("pool %q: purge %s: %w", p.Name, rel, err)
		}
	}
	err = p.root.RemoveAll(rel)
	p.env.signalChange() // even a partial removal changed the trash
	if err != nil {
		return fmt.Errorf("pool %q: purge %s: %w", p.Name, rel, err)
	}
	klog.V(2).InfoS("Purged a trashed volume", "pool", p.Name, "entry", rel)
	return nil
}

// records lists the records of the pool's live volumes and of its trashed
// ones (see store.records).
func (p *Pool) records() []*Volume {
	out := p.list()
	entries, err := p.readDirNames(dirTrash)
	if err != nil {
		klog.ErrorS(err, "Cannot list the trash for its volume records", "pool", p.Name)
		return out
	}
	for _, e := range entries {
		if v, err := readTrashedRecord(p.root, path.Join(dirTrash, e)); err == nil {
			out = append(out, v)
		}
	}
	return out
}

func readTrashedRecord(root *os.Root, rel string) (*Volume, error) {
	name, _, _ := parseTrashName(path.Base(rel))
	return readRecord(root, rel, name)
}

func nonce() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
