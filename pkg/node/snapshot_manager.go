package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// snapLockKey is the lock key of a snapshot: ':' is not in the volume-name
// alphabet, so it never collides with a volume's.
func snapLockKey(name string) string { return snapTrashPrefix + name }

// SnapshotRequest asks for a snapshot of a volume (CreateSnapshot).
type SnapshotRequest struct {
	Name           string
	SourceVolumeID string
	// Labels are recorded in the new snapshot's record (Snapshot.Labels).
	// A repeated request for an existing snapshot does not change them.
	Labels map[string]string
}

// CreateSnapshot snapshots a volume of this node into its pool, or returns
// the existing snapshot of that name if it is of the same volume (CSI
// idempotency); of another volume is ErrAlreadyExists. A volume of another
// node, or one that does not exist, is ErrNotFound; a malformed ID ErrInvalid.
func (m *Manager) CreateSnapshot(ctx context.Context, req SnapshotRequest) (*Snapshot, error) {
	if err := validateSnapshotName(req.Name); err != nil {
		return nil, err
	}
	vid, p, err := m.resolve(req.SourceVolumeID)
	if errors.Is(err, ErrWrongNode) {
		return nil, fmt.Errorf("%w: %v; its snapshots are taken by the driver on that node", ErrNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	key := snapshotKey(m.nodeID, p.Name, req.Name)
	id := SnapshotID{Node: m.nodeID, Pool: p.Name, Name: key}
	if err := id.validate(); err != nil {
		return nil, err
	}
	unlock, err := m.lock(snapLockKey(key))
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, other := range m.pools {
		if !other.opened.Load() {
			continue
		}
		s := other.lookupSnapshot(snapshotKey(m.nodeID, other.Name, req.Name))
		if s == nil || s.csiName() != req.Name {
			continue
		}
		if s.SourceVolumeID != req.SourceVolumeID {
			return nil, fmt.Errorf("%w: snapshot %q exists of volume %q, not of %q", ErrAlreadyExists, req.Name, s.SourceVolumeID, req.SourceVolumeID)
		}
		return s, nil
	}
	unlockVol, err := m.lock(vid.Name)
	if err != nil {
		return nil, err
	}
	release := onceFunc(unlockVol)
	defer release()
	v, err := p.lookup(vid.Name)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("%w: volume %q does not exist", ErrNotFound, req.SourceVolumeID)
	}
	s := &Snapshot{
		ID: id.String(), Name: key, Pool: p.Name, SourceVolumeID: v.ID, Source: *v.clone(),
		SizeBytes: v.CapacityBytes, CreatedAt: m.env.now().UTC(), Labels: maps.Clone(req.Labels),
	}
	if key != req.Name {
		s.CSIName = req.Name
	}
	s.Source.Phase = PhaseReady // what a restore gets; a Resizing source's data is its old size's
	start := time.Now()
	if err := p.createSnapshot(ctx, s, v, release); err != nil {
		return nil, err
	}
	klog.InfoS("Snapshot created", "snapshot", s.ID, "volume", v.ID, "backend", v.Backend, "method", s.Method,
		"sizeBytes", s.SizeBytes, "storedBytes", s.StoredBytes, "duration", time.Since(start))
	return s.clone(), nil
}

// onceFunc wraps an unlock so it can be called early and again by a defer.
func onceFunc(f func()) func() {
	var once sync.Once
	return func() { once.Do(f) }
}

func (id SnapshotID) validate() error {
	if n := len(id.String()); n > MaxIDLength {
		return fmt.Errorf("%w: the snapshot ID %q would be %d bytes, the CSI limit is %d", ErrInvalid, id.String(), n, MaxIDLength)
	}
	return nil
}

// validateSnapshotName checks a CSI snapshot name (the volume-name rules).
func validateSnapshotName(name string) error {
	if err := ValidateVolumeName(name); err != nil {
		return fmt.Errorf("snapshot name: %w", err)
	}
	return nil
}

// resolveSnapshot parses a snapshot ID and finds its pool on this node:
// ErrInvalid if malformed, ErrWrongNode if another node's (or a pool not
// configured here), ErrPoolMissing if the pool's directory is missing.
func (m *Manager) resolveSnapshot(id string) (SnapshotID, *Pool, error) {
	sid, err := ParseSnapshotID(id)
	if err != nil {
		return sid, nil, err
	}
	if sid.Node != m.nodeID {
		return sid, nil, fmt.Errorf("%w: snapshot %q is on node %q, this is node %q", ErrWrongNode, id, sid.Node, m.nodeID)
	}
	p, ok := m.byName[sid.Pool]
	if !ok {
		return sid, nil, fmt.Errorf("%w: snapshot %q is in pool %q, which is not configured on node %q", ErrWrongNode, id, sid.Pool, m.nodeID)
	}
	if err := p.Missing(); err != nil {
		return sid, nil, fmt.Errorf("snapshot %q: %w", id, err)
	}
	return sid, p, nil
}

// GetSnapshot returns a snapshot of this node; any other ID (malformed,
// another node's, gone) is ErrNotFound.
func (m *Manager) GetSnapshot(id string) (*Snapshot, error) {
	sid, p, err := m.resolveSnapshot(id)
	if errors.Is(err, ErrInvalid) {
		return nil, fmt.Errorf("%w: %q is not a snapshot ID dhpp issues (%v)", ErrNotFound, id, errors.Unwrap(err))
	}
	if errors.Is(err, ErrWrongNode) {
		return nil, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	s := p.lookupSnapshot(sid.Name)
	if s == nil {
		return nil, fmt.Errorf("%w: snapshot %q does not exist", ErrNotFound, id)
	}
	return s, nil
}

// DeleteSnapshot moves a snapshot to its pool's trash. An ID that names no
// snapshot (malformed, or gone) succeeds (CSI idempotency). One of another
// node, or of a pool not configured or missing here, is refused
// (ErrWrongNode, ErrPoolMissing): succeeding would let Kubernetes forget a
// snapshot whose data lives on. Volumes restored from it are independent.
func (m *Manager) DeleteSnapshot(_ context.Context, id string) error {
	sid, p, err := m.resolveSnapshot(id)
	if errors.Is(err, ErrInvalid) {
		klog.V(2).InfoS("DeleteSnapshot of an ID this driver never issued; nothing to delete", "snapshot", id, "reason", err)
		return nil
	}
	if err != nil {
		return err
	}
	unlock, err := m.lock(snapLockKey(sid.Name))
	if err != nil {
		return err
	}
	defer unlock()
	s := p.lookupSnapshot(sid.Name)
	if s == nil {
		return nil
	}
	return p.removeSnapshot(s)
}

// ListSnapshots returns every snapshot of the node, sorted by ID.
func (m *Manager) ListSnapshots() []*Snapshot {
	var out []*Snapshot
	for _, p := range m.pools {
		if p.opened.Load() {
			out = append(out, p.listSnapshots()...)
		}
	}
	sortSnapshots(out)
	return out
}

// source is a new volume's content source, found on this node.
type source struct {
	pool *Pool
	// lockKey is the source's lock key; vol is the form of its data (the
	// source volume, or the snapshot's record of its volume).
	lockKey string
	vol     *Volume
	dir     volumeDir
	size    int64
}

// findSource finds a content source on this node. A source of another node
// is ErrElsewhere: every node's provisioner is asked, and only the node
// holding the data can fill the volume. A source that no node has (gone, or
// a malformed ID) is ErrNotFound.
func (m *Manager) findSource(cs *ContentSource) (*source, error) {
	if cs.SnapshotID != "" {
		sid, p, err := m.resolveSnapshot(cs.SnapshotID)
		switch {
		case errors.Is(err, ErrInvalid):
			return nil, fmt.Errorf("%w: volume_content_source: snapshot %q is not an ID dhpp issues, so no node has it (%v)", ErrNotFound, cs.SnapshotID, errors.Unwrap(err))
		case err != nil && sid.Node != m.nodeID:
			return nil, fmt.Errorf("%w: volume_content_source: %v; the driver on that node makes the volume", ErrElsewhere, err)
		case errors.Is(err, ErrWrongNode):
			return nil, fmt.Errorf("%w: volume_content_source: %v", ErrNotFound, err)
		case err != nil:
			return nil, err
		}
		s := p.lookupSnapshot(sid.Name)
		if s == nil {
			return nil, fmt.Errorf("%w: snapshot %q does not exist", ErrNotFound, cs.SnapshotID)
		}
		return &source{pool: p, lockKey: snapLockKey(s.Name), vol: &s.Source, size: s.SizeBytes,
			dir: volumeDir{st: p.st, rel: path.Join(dirSnapshots, s.Name)}}, nil
	}
	vid, p, err := m.resolve(cs.VolumeID)
	switch {
	case err != nil && vid.Node != "" && vid.Node != m.nodeID:
		return nil, fmt.Errorf("%w: volume_content_source: %v; the driver on that node makes the clone", ErrElsewhere, err)
	case errors.Is(err, ErrWrongNode):
		return nil, fmt.Errorf("%w: volume_content_source: %v", ErrNotFound, err)
	case err != nil:
		return nil, fmt.Errorf("volume_content_source: %w", err)
	}
	v, err := p.lookup(vid.Name)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("%w: volume %q does not exist", ErrNotFound, cs.VolumeID)
	}
	return &source{pool: p, lockKey: vid.Name, vol: v, size: v.CapacityBytes,
		dir: volumeDir{st: p.st, rel: path.Join(dirVolumes, v.Name)}}, nil
}

// createFromSource makes volume id (its name's lock held) filled from src.
// The new volume has the source's form (backend, access type, filesystem)
// and at least its size; a larger one grows (limit, image) before it is
// handed out.
func (m *Manager) createFromSource(ctx context.Context, p *Pool, id VolumeID, req CreateRequest, src *source) (*Volume, error) {
	sv := src.vol
	if req.AccessType != sv.AccessType {
		return nil, fmt.Errorf("%w: %s holds a %s volume, a %s volume was requested", ErrInvalid, req.Source, sv.AccessType, req.AccessType)
	}
	if have := p.volumeFsType(sv); req.AccessType == AccessMount && req.FsType != "" && have != "" && req.FsType != have {
		return nil, fmt.Errorf("%w: %s holds a %s filesystem, %s was requested", ErrInvalid, req.Source, have, req.FsType)
	}
	size, err := ResolveSize(req.RequiredBytes, req.LimitBytes, src.size, src.size)
	if err != nil {
		return nil, fmt.Errorf("%w (%s is %d bytes: a volume made from it is at least as large)", err, req.Source, src.size)
	}
	unlock, err := m.lock(src.lockKey)
	if err != nil {
		return nil, err
	}
	release := onceFunc(unlock)
	defer release()
	// The source as it is now that it is locked.
	if src, err = m.findSource(req.Source); err != nil {
		return nil, err
	}
	v := &Volume{
		ID: id.String(), Name: id.Name, Pool: p.Name, Backend: src.vol.Backend,
		CapacityBytes: size, AccessType: src.vol.AccessType, FsType: src.vol.FsType,
		Mode: req.Mode.Perm(), Phase: PhaseCreating, Labels: req.Labels, CreatedAt: m.env.now().UTC(),
		ContentSource: req.Source,
		Preallocated:  req.Preallocate && src.vol.Backend == BackendLoop,
	}
	if id.Name != req.Name {
		v.CSIName = req.Name
	}
	start := time.Now()
	if err := p.createFrom(ctx, v, src.dir, src.vol, release); err != nil {
		return nil, err
	}
	klog.InfoS("Volume created from a source", "volume", v.ID, "source", req.Source, "bytes", v.CapacityBytes, "backend", v.Backend, "duration", time.Since(start))
	return v.clone(), nil
}

// sameSource reports whether two content sources are the same (both nil
// included).
func sameSource(a, b *ContentSource) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}
