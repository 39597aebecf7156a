package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// poolSnapshots is a pool's index of its snapshots.
type poolSnapshots struct {
	byName map[string]*Snapshot
	// stored is Σ StoredBytes: it counts as provisioned (see Capacity).
	stored int64
}

// recoverSnapshots reads snapshots/ (made if missing). An entry whose
// record cannot be trusted is logged and left alone: never guess, never
// delete; it is not listed and its bytes are not counted.
func (p *Pool) recoverSnapshots() error {
	if err := p.root.Mkdir(dirSnapshots, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("pool %q: create %s: %w", p.Name, dirSnapshots, err)
	}
	names, err := p.readDirNames(dirSnapshots)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.snaps = poolSnapshots{byName: map[string]*Snapshot{}}
	for _, name := range names {
		s, problem := loadSnapshot(p.root, p.env.nodeID, p.Name, name)
		if problem != "" {
			klog.ErrorS(nil, "Ignoring a snapshot whose record cannot be trusted; its data is left untouched", "pool", p.Name, "snapshot", name,
				"record", p.st.abs(path.Join(dirSnapshots, name, snapRecord)), "problem", problem)
			continue
		}
		p.snaps.byName[name] = s
		p.snaps.stored += s.StoredBytes
	}
	return nil
}

func (p *Pool) lookupSnapshot(name string) *Snapshot {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if s, ok := p.snaps.byName[name]; ok {
		return s.clone()
	}
	return nil
}

func (p *Pool) listSnapshots() []*Snapshot {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]*Snapshot, 0, len(p.snaps.byName))
	for _, s := range p.snaps.byName {
		out = append(out, s.clone())
	}
	return out
}

// SnapshotCount is the number of the pool's snapshots.
func (p *Pool) SnapshotCount() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.snaps.byName)
}

// createSnapshot captures volume v (the caller holds its lock, which
// release gives up) as snapshot s. The snapshot is built in .dhpp/tmp, made
// durable (syncfs), recorded (fsync) and only then renamed into snapshots/:
// a crash at any point leaves no snapshot, or a complete one.
func (p *Pool) createSnapshot(ctx context.Context, s *Snapshot, v *Volume, release func()) error {
	b, err := p.backendFor(v.Backend)
	if err != nil {
		return err
	}
	src := volumeDir{st: p.st, rel: path.Join(dirVolumes, v.Name)}
	// What a copy may need at most: the source's allocated bytes (a
	// snapshot that shares extents needs almost none, but the method is
	// known only once it is tried).
	need, _ := b.Allocated(src, v)
	r, err := p.admit(0, need)
	if err != nil {
		return err
	}
	defer r.release()
	tmp := path.Join(dirTmp, snapTrashPrefix+s.Name+"."+nonce())
	if err := p.root.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("pool %q: %w", p.Name, err)
	}
	dir := volumeDir{st: p.st, rel: tmp}
	res, err := b.Snapshot(ctx, src, v, dir, release)
	if err == nil {
		s.Method, s.StoredBytes, s.SubvolumeID = res.method, res.stored, res.subvolumeID
		err = p.publishSnapshot(tmp, s)
	}
	if err != nil {
		p.discard(ctx, b, dir)
		return fmt.Errorf("pool %q: snapshot %q of volume %q: %w", p.Name, s.Name, v.ID, err)
	}
	p.mu.Lock()
	p.snaps.byName[s.Name] = s.clone()
	p.snaps.stored += s.StoredBytes
	p.mu.Unlock()
	p.env.signalChange()
	return syncDir(p.root, dirSnapshots)
}

// publishSnapshot makes the snapshot built in tmp durable and renames it
// into snapshots/. The data first (syncfs: copied files and reflinks must
// be on disk before a record says they are there), then the record.
func (p *Pool) publishSnapshot(tmp string, s *Snapshot) error {
	if err := p.syncfs(); err != nil {
		return err
	}
	if err := writeSnapshotRecord(p.root, tmp, s); err != nil {
		return err
	}
	if err := p.root.Rename(tmp, path.Join(dirSnapshots, s.Name)); err != nil {
		return fmt.Errorf("publish snapshot: %w", err)
	}
	return nil
}

// syncfs flushes the pool's filesystem.
func (p *Pool) syncfs() error {
	if err := unix.Syncfs(int(p.rootFile.Fd())); err != nil {
		return fmt.Errorf("pool %q: syncfs: %w", p.Name, err)
	}
	return nil
}

// discard removes a failed snapshot or restore from .dhpp/tmp; what it
// cannot remove, recovery moves to the trash at the next start.
func (p *Pool) discard(ctx context.Context, b backend, dir volumeDir) {
	thawLeftover(p.root, dir.rel)
	if err := b.Destroy(ctx, dir); err != nil {
		klog.ErrorS(err, "Cleaning up a failed snapshot or restore; recovery will trash it", "pool", p.Name, "dir", dir.rel)
		return
	}
	if err := p.root.RemoveAll(dir.rel); err != nil {
		klog.ErrorS(err, "Cleaning up a failed snapshot or restore; recovery will trash it", "pool", p.Name, "dir", dir.rel)
	}
}

// removeSnapshot moves a snapshot to the trash ("snapshot:<name>@<nanos>"),
// where it stays for the retention like a deleted volume.
func (p *Pool) removeSnapshot(s *Snapshot) error {
	rel := path.Join(dirSnapshots, s.Name)
	dst := path.Join(dirTrash, trashName(snapTrashPrefix+s.Name, p.env.now()))
	if err := p.root.Rename(rel, dst); err != nil {
		return fmt.Errorf("pool %q: move snapshot %q to the trash: %w", p.Name, s.Name, err)
	}
	if err := syncDir(p.root, dirSnapshots); err != nil {
		return err
	}
	if err := syncDir(p.root, dirTrash); err != nil {
		return err
	}
	p.mu.Lock()
	if old, ok := p.snaps.byName[s.Name]; ok {
		p.snaps.stored -= old.StoredBytes
		delete(p.snaps.byName, s.Name)
	}
	p.mu.Unlock()
	p.env.signalChange()
	klog.V(2).InfoS("Snapshot moved to the trash", "snapshot", s.ID, "trash", dst)
	return nil
}

// createFrom carves volume v filled from src (a snapshot's or a volume's
// directory holding data of srcVol's form); release gives up the source's
// lock. See build, and buildSpec for how it differs from create.
func (p *Pool) createFrom(ctx context.Context, v *Volume, src volumeDir, srcVol *Volume, release func()) error {
	b, err := p.backendFor(v.Backend)
	if err != nil {
		return err
	}
	return p.build(ctx, v, b, buildSpec{
		what: fmt.Sprintf("create volume %q from %s", v.Name, src.rel),
		fill: func(dir volumeDir) error {
			method, err := b.CreateFrom(ctx, dir, v, src, srcVol, release)
			if err == nil {
				klog.InfoS("Volume filled from its source", "volume", v.ID, "source", src.rel, "method", method)
			}
			return err
		},
		// Too large for this pool stays ErrOutOfRange: no other node has
		// the source, so the provisioner must not try elsewhere.
		tooLargeElsewhere: false,
		syncData:          true,
		// discard also thaws a filesystem left frozen in dir.
		cleanup: func(dir volumeDir) { p.discard(ctx, b, dir) },
	})
}

// sortSnapshots orders snapshots by ID (the order paging relies on).
func sortSnapshots(s []*Snapshot) {
	sort.Slice(s, func(i, j int) bool { return s[i].ID < s[j].ID })
}
