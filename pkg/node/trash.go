package node

import (
	"errors"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"
)

// TrashedVolume is one entry of a pool's trash: a deleted volume that the
// purger has not removed yet, so its data can still be recovered.
type TrashedVolume struct {
	// Entry is the entry's name in the trash ("<name>@<unix nanos>").
	Entry string
	// DeletedAt is when the volume was moved to the trash.
	DeletedAt time.Time
	// Volume is the volume's record; nil when the entry has none (a volume
	// whose creation was cut short by a crash, or a snapshot).
	Volume *Volume
	// Snapshot is set instead when the entry is a deleted snapshot
	// ("snapshot:<name>@<unix nanos>"); such entries are not volumes and
	// cannot be restored as one.
	Snapshot *Snapshot
}

// Trash lists the pool's trash, newest first, read through the pool's root.
// Entries dhpp did not make are left out, as the purger leaves them alone.
func (p *Pool) Trash() ([]TrashedVolume, error) {
	entries, err := p.readDirNames(dirTrash)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // a pool that never deleted anything
	}
	if err != nil {
		return nil, err
	}
	out := make([]TrashedVolume, 0, len(entries))
	for _, e := range entries {
		_, deleted, ok := parseTrashName(e)
		if !ok {
			continue
		}
		t := TrashedVolume{Entry: e, DeletedAt: deleted}
		if v, err := readTrashedRecord(p.root, path.Join(dirTrash, e)); err == nil {
			t.Volume = v
		} else if s, err := readSnapshotRecord(p.root, path.Join(dirTrash, e)); err == nil && strings.HasPrefix(e, snapTrashPrefix) {
			t.Snapshot = s
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].DeletedAt.Equal(out[j].DeletedAt) {
			return out[i].DeletedAt.After(out[j].DeletedAt)
		}
		return out[i].Entry < out[j].Entry
	})
	return out, nil
}
