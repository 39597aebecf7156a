package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"

	"k8s.io/klog/v2"
)

// LabelRestoredFrom is the record label of a volume taken back from the
// trash: the trash entry it came from. It lets a repeated restore of the
// same entry (after a crash, or a lost answer) find the volume it already
// restored instead of reporting the entry gone.
const LabelRestoredFrom = "restoredFrom"

// heldEntries are the trash entries of a pool that a restore or the purger
// is working on: the two exclude each other per entry, so the purger never
// removes an entry being restored, nor a restore renames back an entry
// half purged. It lives in the Pool (no package-level index of pools) and
// holds only the entries in work: a release deletes its entry.
type heldEntries struct {
	mu   sync.Mutex
	held map[string]bool
}

// holdEntry takes entry of p for a restore or a purge; ok is false while
// the other holds it.
func (p *Pool) holdEntry(entry string) (release func(), ok bool) {
	h := &p.holds
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held[entry] {
		return nil, false
	}
	if h.held == nil {
		h.held = map[string]bool{}
	}
	h.held[entry] = true
	return func() {
		h.mu.Lock()
		delete(h.held, entry)
		h.mu.Unlock()
	}, true
}

// heldCount is how many of p's trash entries are held now.
func (p *Pool) heldCount() int {
	p.holds.mu.Lock()
	defer p.holds.mu.Unlock()
	return len(p.holds.held)
}

// purgeUnlessRestoring purges an expired trash entry unless a restore
// holds it or has taken it away; done says whether it purged.
func (p *Pool) purgeUnlessRestoring(ctx context.Context, entry string) (done bool, err error) {
	release, ok := p.holdEntry(entry)
	if !ok {
		klog.InfoS("Not purging a trash entry being restored", "pool", p.Name, "entry", entry)
		return false, nil
	}
	defer release()
	rel := path.Join(dirTrash, entry)
	if _, err := p.root.Lstat(rel); errors.Is(err, fs.ErrNotExist) {
		return false, nil // restored since the trash was listed
	}
	return true, p.purge(ctx, rel)
}

// UntrashRequest asks to take a deleted volume back from a pool's trash.
type UntrashRequest struct {
	Pool string // "" = the default pool
	// Entry is the trash entry's name, "<name>@<unix nanos>".
	Entry string
	// Labels replace the record's labels of the same keys (the claim and PV
	// the volume is restored for: "namespace", "pvc", "pv").
	Labels map[string]string
}

// Untrash takes a trashed volume back into its pool, under its old name and
// volume ID, with its data and record, without a restart: the entry is
// renamed back from .dhpp/trash/<name>@<nanos> to volumes/<name> and the
// volume counted in the pool's index and capacity.
//
// Crash safety: the record (with the new labels and LabelRestoredFrom) is
// rewritten atomically inside the trash entry first, then one rename moves
// it. A crash before the rename leaves a trash entry (restorable again, or
// purged in time); after it, a live volume that recovery reads at start.
//
// The purger and a restore hold the entry while they work on it
// (holdEntry), so an entry is restorable until the purger takes it, even
// past its retention, and never both.
//
// It refuses, touching nothing: an entry that is gone (purged: ErrNotFound)
// or being purged (ErrBusy); a live or quarantined volume of
// the same name (ErrAlreadyExists); an entry whose record cannot be trusted
// (ErrInvalid); a pool whose directory is missing (ErrPoolMissing); a
// volume that no longer fits (ErrNoSpace). Fencing is the caller's check.
func (m *Manager) Untrash(ctx context.Context, req UntrashRequest) (*Volume, error) {
	p, err := m.Pool(req.Pool)
	if err != nil {
		return nil, err
	}
	if err := p.Missing(); err != nil {
		return nil, err
	}
	name, _, ok := parseTrashName(req.Entry)
	if !ok || strings.ContainsAny(req.Entry, "/\x00") || ValidateVolumeName(name) != nil {
		return nil, fmt.Errorf("%w: %q is not a trash entry name (<volume>@<unix nanos>, as `kubectl dhpp trash` lists them)", ErrInvalid, req.Entry)
	}
	unlock, err := m.lock(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	release, ok := p.holdEntry(req.Entry)
	if !ok {
		return nil, fmt.Errorf("%w: trash entry %q of pool %q is being purged", ErrBusy, req.Entry, p.Name)
	}
	defer release()
	rel := path.Join(dirTrash, req.Entry)
	if _, err := p.root.Lstat(rel); errors.Is(err, fs.ErrNotExist) {
		if v := p.restoredFrom(name, req.Entry); v != nil {
			return v, nil // restored already: the answer was lost
		}
		return nil, fmt.Errorf("%w: trash entry %q is not in pool %q on node %q: it was purged (or never there)", ErrNotFound, req.Entry, p.Name, m.nodeID)
	} else if err != nil {
		return nil, fmt.Errorf("pool %q: %w", p.Name, err)
	}
	if err := p.checkNameFree(name); err != nil {
		return nil, err
	}
	v, err := readTrashedRecord(p.root, rel)
	if err != nil {
		return nil, fmt.Errorf("%w: trash entry %q has no readable record (%v): it cannot be restored automatically", ErrInvalid, req.Entry, unwrapPath(err))
	}
	if problem := v.mismatch(m.nodeID, p.Name, name); problem != "" {
		return nil, fmt.Errorf("%w: the record of trash entry %q %s: it cannot be restored automatically", ErrInvalid, req.Entry, problem)
	}
	return p.untrash(ctx, v, rel, req)
}

// checkNameFree refuses a name a live or quarantined volume holds, or that
// a directory in volumes/ occupies.
func (p *Pool) checkNameFree(name string) error {
	live, err := p.lookup(name)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrAlreadyExists, err)
	}
	if live != nil {
		return fmt.Errorf("%w: pool %q already has a live volume %q (ID %s): delete it first, or leave this entry in the trash", ErrAlreadyExists, p.Name, name, live.ID)
	}
	if _, err := p.root.Lstat(path.Join(dirVolumes, name)); err == nil {
		return fmt.Errorf("%w: pool %q has a directory volumes/%s the driver does not serve: move it away first", ErrAlreadyExists, p.Name, name)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	return nil
}

// restoredFrom returns the live volume name restored from entry, if any.
func (p *Pool) restoredFrom(name, entry string) *Volume {
	v := p.get(name)
	if v == nil || v.Labels[LabelRestoredFrom] != entry {
		return nil
	}
	return v
}

// untrash admits v's size, rewrites its record in the trash entry at rel,
// and renames the entry back into volumes/.
func (p *Pool) untrash(ctx context.Context, v *Volume, rel string, req UntrashRequest) (*Volume, error) {
	b, err := p.backendFor(v.Backend)
	if err != nil {
		return nil, err
	}
	r, err := p.admit(v.ReservedBytes(), v.ReservedBytes())
	if err != nil {
		return nil, fmt.Errorf("restore trash entry %q: %w", req.Entry, err)
	}
	defer r.release()
	// What the volume holds is on disk already: not promised again.
	if n, err := b.Allocated(volumeDir{st: p.st, rel: rel}, v); err == nil {
		r.written = n
	}
	if v.Labels == nil {
		v.Labels = map[string]string{}
	}
	for k, val := range req.Labels {
		v.Labels[k] = val
	}
	v.Labels[LabelRestoredFrom] = req.Entry
	if err := writeRecord(p.root, rel, v); err != nil {
		return nil, fmt.Errorf("pool %q: restore trash entry %q: %w", p.Name, req.Entry, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := p.root.Rename(rel, path.Join(dirVolumes, v.Name)); err != nil {
		return nil, fmt.Errorf("pool %q: move trash entry %q back to volumes/: %w", p.Name, req.Entry, err)
	}
	// In volumes/ now: it counts even if an fsync below fails.
	p.put(v, r)
	klog.InfoS("Volume restored from the trash", "volume", v.ID, "entry", req.Entry, "bytes", v.CapacityBytes)
	if err := syncDir(p.root, dirVolumes); err != nil {
		return v.clone(), err
	}
	return v.clone(), syncDir(p.root, dirTrash)
}
