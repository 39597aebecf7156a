package crash

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// Snapshots in the crash loop: workers snapshot published filesystem
// volumes, restore snapshots into new volumes (which then carry the
// snapshot's files in the model, so every later publish and restart reads
// them back), and delete snapshots. After each restart the checker wants
// the listed snapshots to be exactly those promised (a cut-off one may or
// may not be there, but never half: listed means ready, and a snapshot
// directory is never left without being listed), deleted ones in the
// trash, retried calls to converge, and no filesystem left frozen by a
// snapshot cut off while it held the freeze.

// snap is the model of one snapshot.
type snap struct {
	name, pool, id string
	src            *vol   // the volume it was taken of (its history gets the calls)
	files          []file // the source's fsynced files when it was taken
	fileSeq        int
	size           int64 // size_bytes the driver answered (0 until known)
	exists         tri
	deleted        tri
	pending        string
}

func (s *snap) live() bool { return s.exists == yes && s.deleted == no }

type snapList struct {
	mu    sync.Mutex
	snaps []*snap
}

func (l *snapList) add(s *snap) {
	l.mu.Lock()
	l.snaps = append(l.snaps, s)
	l.mu.Unlock()
}

func (l *snapList) all() []*snap {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*snap(nil), l.snaps...)
}

func (h *harness) createSnapshot(s *snap) (outcome, *csi.Snapshot, error) {
	var got *csi.Snapshot
	o, err := h.call(s.src, "CreateSnapshot", "("+s.name+")", func(ctx context.Context, inc *incarnation) error {
		resp, err := inc.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: s.name, SourceVolumeId: s.src.id})
		got = resp.GetSnapshot()
		return err
	})
	return o, got, err
}

func (h *harness) deleteSnapshot(s *snap) (outcome, error) {
	return h.call(s.src, "DeleteSnapshot", "("+s.name+")", func(ctx context.Context, inc *incarnation) error {
		_, err := inc.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.id})
		return err
	})
}

// snapshot takes a snapshot of a published filesystem volume.
func (w *worker) snapshot(v *vol) {
	h := w.h
	w.seq++
	s := &snap{name: fmt.Sprintf("%s-s%03d", v.name, w.seq), pool: v.pool, src: v,
		files: slices.Clone(v.files), fileSeq: v.fileSeq}
	s.id = h.nodeID + "/" + s.pool + "/snapshots/" + s.name
	h.snaps.add(s)
	w.snaps = append(w.snaps, s)
	o, got, err := h.createSnapshot(s)
	switch o {
	case ok:
		s.exists = yes
		h.checkSnapAnswer(s, got)
	case uncertain:
		s.exists, s.pending = maybe, "create"
	case failed:
		s.exists = no
		if codeOf(err) != codes.ResourceExhausted {
			h.fail(v, "CreateSnapshot %s failed: %v", s.name, err)
		}
	}
}

// checkSnapAnswer checks a CreateSnapshot answer against the model.
func (h *harness) checkSnapAnswer(s *snap, got *csi.Snapshot) {
	if got.GetSnapshotId() != s.id || got.GetSourceVolumeId() != s.src.id || !got.GetReadyToUse() ||
		got.GetSizeBytes() < s.src.capMin || got.GetSizeBytes() > s.src.capMax {
		h.fail(s.src, "CreateSnapshot %s answered %v; want ID %s of %s, ready, size in [%d, %d]", s.name, got, s.id, s.src.id, s.src.capMin, s.src.capMax)
		return
	}
	s.size = got.GetSizeBytes()
}

// restore makes a new volume from one of the worker's live snapshots, a
// little larger than the snapshot half the time.
func (w *worker) restore(s *snap) {
	w.seq++
	size := s.size + int64(w.rng.IntN(2)*(4+w.rng.IntN(8)))<<20
	v := w.h.newVol(fmt.Sprintf("w%d-%03d", w.id, w.seq), s.pool, false, size)
	v.source = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s.id}}}
	v.files, v.fileSeq = slices.Clone(s.files), s.fileSeq
	w.vols = append(w.vols, v)
	w.createVol(v)
}

func (w *worker) deleteSnap(s *snap) {
	switch o, err := w.h.deleteSnapshot(s); o {
	case ok:
		s.deleted = yes
	case uncertain:
		s.deleted, s.pending = maybe, "delete"
	case failed:
		w.h.fail(s.src, "DeleteSnapshot %s failed: %v", s.name, err)
	}
}

// liveSnap returns one of the worker's settled live snapshots, or nil.
func (w *worker) liveSnap() *snap {
	w.snaps = slices.DeleteFunc(w.snaps, func(s *snap) bool { return s.exists == no || s.deleted == yes })
	var live []*snap
	for _, s := range w.snaps {
		if s.live() && s.pending == "" && s.size > 0 {
			live = append(live, s)
		}
	}
	if len(live) == 0 {
		return nil
	}
	return live[w.rng.IntN(len(live))]
}

// listSnapshots pages through ListSnapshots with a small page size.
func (h *harness) listSnapshots() map[string]*csi.Snapshot {
	inc := h.d.current()
	out := map[string]*csi.Snapshot{}
	token := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		resp, err := inc.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 5, StartingToken: token})
		cancel()
		if err != nil {
			h.t.Fatalf("ListSnapshots after restart #%d: %v", h.kills.Load(), err)
		}
		for _, e := range resp.GetEntries() {
			out[e.GetSnapshot().GetSnapshotId()] = e.GetSnapshot()
		}
		if token = resp.GetNextToken(); token == "" {
			return out
		}
	}
}

// checkSnapshotsRecovered compares the restarted driver's snapshots with
// the model, before anything is retried.
func (h *harness) checkSnapshotsRecovered() {
	listed := h.listSnapshots()
	known := map[string]bool{}
	for _, s := range h.snaps.all() {
		known[s.id] = true
		got, isListed := listed[s.id]
		dir := filepath.Join(h.poolPath(s.pool), "snapshots", s.name)
		_, statErr := os.Lstat(dir)
		switch {
		case s.src.broken:
		case s.deleted == yes && isListed:
			h.fail(s.src, "snapshot %s was deleted but is listed again after restart #%d", s.id, h.kills.Load())
		case s.deleted == yes && !snapTrashed(h.poolPath(s.pool), s.name):
			h.fail(s.src, "snapshot %s was deleted, but the trash holds no snapshot:%s@* with its record after restart #%d", s.id, s.name, h.kills.Load())
		case s.exists == no && isListed:
			h.fail(s.src, "CreateSnapshot %s failed, yet it is listed after restart #%d", s.id, h.kills.Load())
		case s.live() && !isListed:
			h.fail(s.src, "snapshot %s was created and not deleted, but is not listed after restart #%d", s.id, h.kills.Load())
		case isListed && !got.GetReadyToUse():
			h.fail(s.src, "snapshot %s is listed not ready after restart #%d: a snapshot is complete or absent", s.id, h.kills.Load())
		case isListed && s.size > 0 && got.GetSizeBytes() != s.size:
			h.fail(s.src, "snapshot %s lists %d bytes after restart #%d, it answered %d", s.id, got.GetSizeBytes(), h.kills.Load(), s.size)
		case !isListed && statErr == nil:
			h.fail(s.src, "snapshot %s is not listed after restart #%d but %s exists: a half-made snapshot was left in place", s.id, h.kills.Load(), dir)
		}
	}
	for id := range listed {
		if !known[id] {
			h.failf("after restart #%d the driver lists snapshot %s, which the test never took", h.kills.Load(), id)
		}
	}
}

// resolveSnapshots retries the snapshot calls a kill cut off.
func (h *harness) resolveSnapshots() {
	for _, s := range h.snaps.all() {
		if s.pending == "" || s.src.broken {
			continue
		}
		op := s.pending
		s.pending = ""
		switch op {
		case "create":
			o, got, err := h.createSnapshot(s)
			if o != ok {
				h.fail(s.src, "retried CreateSnapshot %s after restart #%d: %v", s.name, h.kills.Load(), err)
				continue
			}
			s.exists = yes
			h.checkSnapAnswer(s, got)
		case "delete":
			if o, err := h.deleteSnapshot(s); o != ok {
				h.fail(s.src, "retried DeleteSnapshot %s after restart #%d: %v", s.name, h.kills.Load(), err)
				continue
			}
			s.deleted = yes
		}
	}
}

// checkNotFrozen: no published loop filesystem is left frozen (a snapshot
// cut off while it held the freeze; recovery must thaw it). FITHAW on a
// filesystem that is not frozen fails with EINVAL; success means it was.
func (h *harness) checkNotFrozen(v *vol) {
	if !h.isLoop(v) || v.block || v.pub != yes {
		return
	}
	f, err := os.Open(v.target)
	if err != nil {
		return
	}
	defer f.Close()
	const fithaw = 0xc0045878
	if err := unix.IoctlSetInt(int(f.Fd()), fithaw, 0); err == nil {
		h.fail(v, "volume %s was left frozen after restart #%d (thawed by the test)", v.id, h.kills.Load())
	} else if !errors.Is(err, unix.EINVAL) {
		h.note(v, "FITHAW check", err)
	}
}

// snapTrashed reports whether the trash holds a deleted snapshot's entry
// with its record.
func snapTrashed(poolPath, name string) bool {
	m, _ := filepath.Glob(filepath.Join(poolPath, ".dhpp", "trash", "snapshot:"+name+"@*", "snapshot.json"))
	return len(m) > 0
}
