package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// DefaultVolumeSize is the size of a volume whose request names no size.
const DefaultVolumeSize = 1 << 30

// Config configures a Manager.
type Config struct {
	// NodeID is this node's name; it is the first part of every volume ID.
	NodeID string
	// Pools in order; the first is the default pool.
	Pools []PoolConfig
	// DefaultSize for requests without a capacity range (DefaultVolumeSize if 0).
	DefaultSize int64
	// Mounter, Exec and MountInfoPath are for tests; zero values mean the real ones.
	Mounter       mount.Interface
	Exec          utilexec.Interface
	MountInfoPath string
	Now           func() time.Time
}

// env is what pools and backends share: the node's tools.
type env struct {
	nodeID        string
	mounter       mount.Interface
	exec          utilexec.Interface
	mountInfoPath string
	now           func() time.Time
	// changed receives a token (never blocking) whenever a pool's
	// volumes, snapshots or trash change: see Manager.Changed.
	changed chan struct{}
}

// signalChange tells Changed's consumer that a pool's contents changed. The
// send never blocks: a token already waiting says the same thing, so a slow
// (or absent) consumer costs a CSI call nothing.
func (e *env) signalChange() {
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

// Manager owns the node's pools and is the only way to change them. Each
// operation on a volume holds that volume's lock (by name, so a create and
// a delete of the same name in different pools also exclude each other).
type Manager struct {
	nodeID      string
	pools       []*Pool
	byName      map[string]*Pool
	env         *env
	defaultSize int64
	locks       keyLocks
	// onPoolOpened is told of each pool opened after start (OnPoolOpened).
	onPoolOpened atomic.Pointer[func(*Pool)]
}

// New opens every pool, selects its backend and rebuilds the volume index
// from disk. It fails if a pool cannot be opened, except for a pool whose
// directory does not exist (usually an unmounted data disk): that one is
// kept unopened, refusing every request (see Pool.Missing), so the node's
// other pools serve; the caller fences it, and RunTrashPurger opens it
// when its directory appears.
func New(cfg Config) (*Manager, error) {
	if err := ValidateNodeID(cfg.NodeID); err != nil {
		return nil, err
	}
	if len(cfg.Pools) == 0 {
		return nil, fmt.Errorf("%w: no pool configured", ErrInvalid)
	}
	e := &env{nodeID: cfg.NodeID, mounter: cfg.Mounter, exec: cfg.Exec, mountInfoPath: cfg.MountInfoPath, now: cfg.Now,
		changed: make(chan struct{}, 1)}
	if e.exec == nil {
		e.exec = utilexec.New()
	}
	if e.mounter == nil {
		e.mounter = mount.New("")
	}
	if e.mountInfoPath == "" {
		e.mountInfoPath = "/proc/self/mountinfo"
	}
	if e.now == nil {
		e.now = time.Now
	}
	m := &Manager{nodeID: cfg.NodeID, byName: map[string]*Pool{}, env: e, defaultSize: cfg.DefaultSize}
	if m.defaultSize == 0 {
		m.defaultSize = DefaultVolumeSize
	}
	seenPath := map[string]string{}
	for _, pc := range cfg.Pools {
		if _, dup := m.byName[pc.Name]; dup {
			m.Close()
			return nil, fmt.Errorf("%w: pool %q is configured twice", ErrInvalid, pc.Name)
		}
		if other, dup := seenPath[filepath.Clean(pc.Path)]; dup {
			m.Close()
			return nil, fmt.Errorf("%w: pools %q and %q share the directory %s", ErrInvalid, other, pc.Name, pc.Path)
		}
		start := time.Now()
		p, err := openPool(pc, e)
		if err != nil {
			m.Close()
			return nil, err
		}
		if p.opened.Load() {
			klog.InfoS("Pool ready", "pool", p.Name, "volumes", p.VolumeCount(), "quarantined", len(p.Quarantined()), "recovery", time.Since(start))
		}
		seenPath[p.Path] = p.Name
		m.pools = append(m.pools, p)
		m.byName[p.Name] = p
	}
	return m, nil
}

// Close releases the pools.
func (m *Manager) Close() {
	for _, p := range m.pools {
		p.Close()
	}
}

// Changed returns a channel that receives a value after the contents of
// the node's pools changed: a volume created (also from a snapshot or a
// volume, or taken back from the trash), expanded, or deleted into the
// trash; a snapshot created or deleted into the trash; a trash entry
// purged; a quarantined volume released; a missing pool opened. It is
// for ONE consumer (the DhppPool publisher, pkg/poolstatus), which
// re-reads what it shows when it receives; it does not say what changed.
//
// The channel has capacity 1 and is sent to without blocking, so changes
// that happen while a token waits are merged into it, and a consumer that
// is slow or gone never delays a CSI call. The token is sent after the
// change is visible (Pool.List, Trash, Capacity show it), so a consumer
// that reads after receiving never misses the last change. Nothing is
// sent for what was already on disk when New returned: the consumer's
// first read covers it.
func (m *Manager) Changed() <-chan struct{} { return m.env.changed }

// OnPoolOpened registers f to be called, on the trash purger's goroutine,
// with each pool that was missing at start and has been opened since.
func (m *Manager) OnPoolOpened(f func(*Pool)) { m.onPoolOpened.Store(&f) }

// OpenMissingPools opens the pools whose directory was missing at start
// and exists now, and returns them. RunTrashPurger calls it every round.
func (m *Manager) OpenMissingPools() []*Pool {
	var opened []*Pool
	for _, p := range m.pools {
		ok, err := p.openIfPresent()
		if err != nil {
			klog.ErrorS(err, "Pool directory is back but the pool cannot be opened; retrying next round", "pool", p.Name, "path", p.Path)
			continue
		}
		if !ok {
			continue
		}
		klog.InfoS("Pool directory appeared; pool opened. It stays fenced until unfenced (kubectl annotate node <node> unfence.dhpp.io/<pool>=now)",
			"pool", p.Name, "path", p.Path, "backend", p.Backend(), "volumes", p.VolumeCount(), "quarantined", len(p.Quarantined()))
		opened = append(opened, p)
		m.env.signalChange()
		if f := m.onPoolOpened.Load(); f != nil {
			(*f)(p)
		}
	}
	return opened
}

// RecheckQuarantined re-reads every quarantined record, so an operator's
// repair (or removal of the directory) takes effect without a restart. A
// volume busy with another operation is left for the next round.
func (m *Manager) RecheckQuarantined() {
	for _, p := range m.pools {
		if p.Missing() != nil {
			continue
		}
		for _, q := range p.Quarantined() {
			unlock, err := m.lock(q.Name)
			if err != nil {
				continue
			}
			if what := p.recheckQuarantined(q.Name); what != "" {
				klog.InfoS("Quarantined volume "+what, "pool", p.Name, "volume", q.Name, "record", q.Record)
			}
			unlock()
		}
	}
}

// NodeID is this node's ID.
func (m *Manager) NodeID() string { return m.nodeID }

// Pools lists the pools in configuration order.
func (m *Manager) Pools() []*Pool { return append([]*Pool(nil), m.pools...) }

// Pool returns the named pool; "" is the default (first) pool.
func (m *Manager) Pool(name string) (*Pool, error) {
	if name == "" {
		return m.pools[0], nil
	}
	if p, ok := m.byName[name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w: pool %q is not configured on node %q (pools: %s)", ErrNotFound, name, m.nodeID, strings.Join(m.poolNames(), ", "))
}

func (m *Manager) poolNames() []string {
	names := make([]string, len(m.pools))
	for i, p := range m.pools {
		names[i] = p.Name
	}
	return names
}

func (m *Manager) lock(name string) (func(), error) {
	if !m.locks.tryLock(name) {
		return nil, fmt.Errorf("%w: another operation on volume %q is in progress", ErrBusy, name)
	}
	return func() { m.locks.unlock(name) }, nil
}

// CreateRequest asks for a new volume.
type CreateRequest struct {
	Name                      string
	Pool                      string // "" = default pool
	RequiredBytes, LimitBytes int64
	AccessType                AccessType
	// FsType is the filesystem a Filesystem volume must have: "" for the
	// pool's native form, the pool's own filesystem (native too), or ext4
	// or xfs (an image volume where the pool's is another; see forms.go).
	FsType string
	Mode   fs.FileMode
	Labels map[string]string
	// Preallocate asks for an image volume written through at creation
	// (Volume.Preallocated); a volume that is a directory has nothing to
	// preallocate (its space is guaranteed by the pool's accounting alone),
	// and the request is met as it is.
	Preallocate bool
	// Admit, if set, may refuse the pool the request resolved to before
	// anything else is checked (the driver refuses fenced pools); its
	// error is returned as it is.
	Admit func(pool string) error
	// Source, if set, is what the new volume is filled from (see
	// CreateVolume and createFromSource).
	Source *ContentSource
}

// CreateVolume makes a volume, or returns the existing one of that name if
// it is compatible (CSI idempotency); an incompatible one is ErrAlreadyExists.
func (m *Manager) CreateVolume(ctx context.Context, req CreateRequest) (*Volume, error) {
	var src *source
	if req.Source != nil {
		// The source decides the node and the pool: checked before
		// anything, so a node without it answers ErrElsewhere at once.
		var err error
		if src, err = m.findSource(req.Source); err != nil {
			// A retry of a restore that succeeded before its source was
			// deleted (the answer lost to a crash or timeout) still gets
			// the volume: the provisioner must not be stranded with it.
			if v, verr := m.madeFrom(req); errors.Is(err, ErrNotFound) && v != nil {
				return v, verr
			}
			return nil, err
		}
		if req.Pool == "" {
			req.Pool = src.pool.Name
		} else if req.Pool != src.pool.Name {
			return nil, fmt.Errorf("%w: %s is in pool %q, the request names pool %q: dhpp restores and clones within the source's pool "+
				"(use a StorageClass of pool %q, or one naming no pool)", ErrInvalid, req.Source, src.pool.Name, req.Pool, src.pool.Name)
		}
	}
	p, err := m.Pool(req.Pool)
	if err != nil {
		// Another node may have the pool.
		return nil, fmt.Errorf("%w: parameter %q: %v", ErrElsewhere, "pool", err)
	}
	if req.Admit != nil {
		if err := req.Admit(p.Name); err != nil {
			return nil, err
		}
	}
	if err := ValidateVolumeName(req.Name); err != nil {
		return nil, err
	}
	if req.AccessType == "" {
		req.AccessType = AccessMount
	}
	if err := p.Missing(); err != nil {
		// Another node may serve the volume: ResourceExhausted, as for a
		// full or fenced pool.
		return nil, fmt.Errorf("%w: %v", ErrNoSpace, err)
	}
	key := volumeKey(m.nodeID, p.Name, req.Name)
	id := VolumeID{Node: m.nodeID, Pool: p.Name, Name: key}
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("%w (node and pool names leave no room for a volume name)", err)
	}
	unlock, err := m.lock(key)
	if err != nil {
		return nil, err
	}
	defer unlock()

	// The name may exist in any pool; a quarantined one reserves it.
	for _, other := range m.pools {
		v, err := other.lookup(volumeKey(m.nodeID, other.Name, req.Name))
		if err != nil {
			return nil, err
		}
		if v != nil && v.csiName() == req.Name {
			return v, compatible(v, other.volumeFsType(v), p.Name, req)
		}
	}
	if src != nil {
		return m.createFromSource(ctx, p, id, req, src)
	}
	b, err := p.carver(req.AccessType, req.FsType)
	if err != nil {
		return nil, err
	}
	fsType, minSize, err := b.Resolve(req.AccessType, req.FsType)
	if err != nil {
		return nil, err
	}
	req.FsType = fsType
	size, err := ResolveSize(req.RequiredBytes, req.LimitBytes, m.defaultSize, minSize)
	if err != nil {
		return nil, err
	}
	v := &Volume{
		ID: id.String(), Name: key, Pool: p.Name, Backend: b.Kind(),
		CapacityBytes: size, AccessType: req.AccessType, FsType: req.FsType,
		Mode: req.Mode.Perm(), Phase: PhaseCreating, Labels: req.Labels, CreatedAt: m.env.now().UTC(),
		Preallocated: req.Preallocate && b.Kind() == BackendLoop,
	}
	if key != req.Name {
		v.CSIName = req.Name
	}
	start := time.Now()
	if err := p.create(ctx, v); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Volume created", "volume", v.ID, "bytes", v.CapacityBytes, "backend", v.Backend, "duration", time.Since(start))
	return v.clone(), nil
}

// madeFrom returns the existing volume of the request's name that was
// made from the request's source (nil if none), checked for compatibility.
func (m *Manager) madeFrom(req CreateRequest) (*Volume, error) {
	if req.AccessType == "" {
		req.AccessType = AccessMount
	}
	for _, p := range m.pools {
		if !p.opened.Load() {
			continue
		}
		v, err := p.lookup(volumeKey(m.nodeID, p.Name, req.Name))
		if err != nil || v == nil || v.csiName() != req.Name || !sameSource(v.ContentSource, req.Source) {
			continue
		}
		pool := req.Pool
		if pool == "" {
			pool = v.Pool
		}
		return v, compatible(v, p.volumeFsType(v), pool, req)
	}
	return nil, nil
}

// compatible checks an existing volume v, whose filesystem is fsType (its
// pool's native one if the record names none), against a request for it.
func compatible(v *Volume, fsType, pool string, req CreateRequest) error {
	switch {
	case v.Pool != pool:
		return fmt.Errorf("%w: volume %q exists in pool %q, not %q", ErrAlreadyExists, req.Name, v.Pool, pool)
	case v.AccessType != req.AccessType:
		return fmt.Errorf("%w: volume %q exists as a %s volume, %s was requested", ErrAlreadyExists, req.Name, v.AccessType, req.AccessType)
	case !FitsRange(v.CapacityBytes, req.RequiredBytes, req.LimitBytes):
		return fmt.Errorf("%w: volume %q exists with %d bytes, outside the requested range [%d, %d]", ErrAlreadyExists, req.Name, v.CapacityBytes, req.RequiredBytes, req.LimitBytes)
	case req.AccessType == AccessMount && req.FsType != "" && fsType != "" && req.FsType != fsType:
		return fmt.Errorf("%w: volume %q exists with filesystem %s, %s was requested", ErrAlreadyExists, req.Name, fsType, req.FsType)
	case req.Mode.Perm() != v.Mode:
		return fmt.Errorf("%w: volume %q exists with mode %#o, %#o was requested", ErrAlreadyExists, req.Name, v.Mode, req.Mode.Perm())
	case !sameSource(v.ContentSource, req.Source):
		return fmt.Errorf("%w: volume %q exists filled from %s, %s was requested", ErrAlreadyExists, req.Name, v.ContentSource, req.Source)
	case v.Backend == BackendLoop && v.Preallocated != req.Preallocate:
		return fmt.Errorf("%w: volume %q exists with preallocate=%t, preallocate=%t was requested", ErrAlreadyExists, req.Name, v.Preallocated, req.Preallocate)
	}
	return nil
}

// resolve parses a volume ID and finds the pool it names on this node,
// refusing (ErrPoolMissing) a pool whose directory is missing.
func (m *Manager) resolve(id string) (VolumeID, *Pool, error) {
	vid, err := ParseVolumeID(id)
	if err != nil {
		return VolumeID{}, nil, err
	}
	if vid.Node != m.nodeID {
		return vid, nil, fmt.Errorf("%w: volume %q is on node %q, this is node %q", ErrWrongNode, id, vid.Node, m.nodeID)
	}
	p, ok := m.byName[vid.Pool]
	if !ok {
		return vid, nil, fmt.Errorf("%w: volume %q is in pool %q, which is not configured on node %q (pools: %s); its data, if any, is untouched",
			ErrWrongNode, id, vid.Pool, m.nodeID, strings.Join(m.poolNames(), ", "))
	}
	if err := p.Missing(); err != nil {
		return vid, nil, fmt.Errorf("volume %q: %w", id, err)
	}
	return vid, p, nil
}

// GetVolume returns a live volume; a quarantined one or one in a missing
// pool is an error that says so.
func (m *Manager) GetVolume(id string) (*Volume, error) {
	vid, p, err := m.resolve(id)
	if err != nil {
		if errors.Is(err, ErrWrongNode) {
			return nil, fmt.Errorf("%w: %v", ErrNotFound, err)
		}
		return nil, err
	}
	v, err := p.lookup(vid.Name)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("%w: volume %q does not exist", ErrNotFound, id)
	}
	return v, nil
}

// DeleteVolume moves a volume to its pool's trash. Deleting a volume that
// does not exist succeeds (CSI idempotency). A volume ID of another node or
// of a pool not configured here is refused with ErrWrongNode rather than
// "succeeding": that would let Kubernetes forget a volume whose data lives on.
// For the same reason a quarantined volume, or any volume of a pool whose
// directory is missing, is refused (ErrQuarantined, ErrPoolMissing).
func (m *Manager) DeleteVolume(ctx context.Context, id string) error {
	vid, p, err := m.resolve(id)
	if err != nil {
		return err
	}
	unlock, err := m.lock(vid.Name)
	if err != nil {
		return err
	}
	defer unlock()
	v, err := p.lookup(vid.Name)
	if err != nil || v == nil {
		return err
	}
	return p.remove(ctx, v)
}

// CheckExpansion checks an expand request and returns the size it leads
// to, without changing anything (ControllerExpandVolume). Volumes of other
// nodes pass syntactically: the owning node's NodeExpandVolume does the
// work (see pkg/driver).
func (m *Manager) CheckExpansion(id string, required, limit int64) (int64, error) {
	vid, p, err := m.resolve(id)
	if errors.Is(err, ErrWrongNode) {
		return ResolveSize(required, limit, required, sizeGranularity)
	}
	if err != nil {
		return 0, err
	}
	v, err := p.lookup(vid.Name)
	if err != nil {
		return 0, err
	}
	size, err := expansionSize(id, v, required, limit)
	if err != nil || size <= v.CapacityBytes {
		return size, err
	}
	return size, p.checkFits(size, size-v.ReservedBytes())
}

// expansionSize is the size an expand request for v (nil if there is no
// such volume) leads to: its current size if the request would shrink it.
func expansionSize(id string, v *Volume, required, limit int64) (int64, error) {
	if v == nil {
		return 0, fmt.Errorf("%w: volume %q does not exist", ErrNotFound, id)
	}
	if required == 0 {
		return 0, fmt.Errorf("%w: capacity_range.required_bytes must be set to expand", ErrInvalid)
	}
	size, err := ResolveSize(required, limit, v.CapacityBytes, sizeGranularity)
	if err != nil {
		return 0, err
	}
	return max(size, v.CapacityBytes), nil // shrinking is not expanding: keep the size
}

// ExpandRequest asks to grow a volume on this node (NodeExpandVolume).
type ExpandRequest struct {
	VolumeID string
	// VolumePath, if set, must be where the volume is (see VolumeStats);
	// StagingPath is the request's staging path, if any.
	VolumePath, StagingPath string
	// RequiredBytes and LimitBytes are the capacity range (0: unset).
	RequiredBytes, LimitBytes int64
	// KeepSize: the request has no capacity range, so there is no new
	// size; the volume (and path) is only checked and returned.
	KeepSize bool
}

// ExpandVolume grows a volume on this node to at least RequiredBytes. The
// admission (Pool.expand) checks that the growth fits.
func (m *Manager) ExpandVolume(ctx context.Context, req ExpandRequest) (*Volume, error) {
	var out *Volume
	err := m.withVolume(req.VolumeID, func(v *Volume, b backend, dir volumeDir) error {
		if req.VolumePath != "" {
			if err := m.checkVolumePath(v, b, dir, req.VolumePath, req.StagingPath); err != nil {
				return err
			}
		}
		out = v
		if req.KeepSize {
			return nil
		}
		size, err := expansionSize(req.VolumeID, v, req.RequiredBytes, req.LimitBytes)
		if err != nil || size <= v.CapacityBytes && v.Phase == PhaseReady {
			return err
		}
		if v.Phase == PhaseResizing && v.TargetBytes > size {
			size = v.TargetBytes // finish what an interrupted resize started
		}
		out, err = m.byName[v.Pool].expand(ctx, v, size)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ListVolumes returns every live volume of the node, sorted by ID (the
// order ListVolumes pagination relies on).
func (m *Manager) ListVolumes() []*Volume {
	var out []*Volume
	for _, p := range m.pools {
		out = append(out, p.list()...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// volumeOp looks a volume up and returns it with its backend and directory.
func (m *Manager) volumeOp(id string) (*Volume, backend, volumeDir, error) {
	v, err := m.GetVolume(id)
	if err != nil {
		return nil, nil, volumeDir{}, err
	}
	p := m.byName[v.Pool]
	b, err := p.backendFor(v.Backend)
	if err != nil {
		return nil, nil, volumeDir{}, err
	}
	return v, b, volumeDir{st: p.st, rel: path.Join(dirVolumes, v.Name)}, nil
}

// withVolume runs fn holding the volume's lock, with the volume as it is
// once the lock is held (looked up after locking, so never stale).
func (m *Manager) withVolume(id string, fn func(v *Volume, b backend, dir volumeDir) error) error {
	vid, err := ParseVolumeID(id)
	if err != nil {
		return err
	}
	unlock, err := m.lock(vid.Name)
	if err != nil {
		return err
	}
	defer unlock()
	v, b, dir, err := m.volumeOp(id)
	if err != nil {
		return err
	}
	return fn(v, b, dir)
}

// PurgeTrash purges every pool's trash of entries older than retention.
func (m *Manager) PurgeTrash(ctx context.Context, retention time.Duration) (int, error) {
	total := 0
	var errs []error
	for _, p := range m.pools {
		if p.Missing() != nil {
			continue // not through a descriptor on a disk no longer there
		}
		n, err := p.PurgeTrash(ctx, retention)
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// RunTrashPurger purges the trash periodically until ctx is done. It checks
// a few times per retention period so entries go soon after they expire.
// Each round also opens pools whose directory has appeared and re-reads
// quarantined records.
func (m *Manager) RunTrashPurger(ctx context.Context, retention time.Duration) {
	every := min(max(retention/4, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		m.OpenMissingPools()
		m.RecheckQuarantined()
		if n, err := m.PurgeTrash(ctx, retention); err != nil {
			klog.ErrorS(err, "Purging trash; will retry", "purged", n)
		} else if n > 0 {
			klog.InfoS("Purged trashed volumes", "count", n, "retention", retention)
		}
		for _, p := range m.pools {
			if p.Missing() == nil {
				p.Maintain()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
