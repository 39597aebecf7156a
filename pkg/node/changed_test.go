package node

import (
	"context"
	"testing"
	"time"
)

// TestChangedSignalsEachKindOfChange runs every kind of change of a pool's
// volumes, snapshots and trash, and checks that each leaves exactly one
// token on Changed, visible to a reader by the time it arrives, and that
// requests changing nothing (idempotent repeats, reads, refusals) leave none.
func TestChangedSignalsEachKindOfChange(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := dirManager(t, t.TempDir(), clock)
	p, err := m.Pool("")
	if err != nil {
		t.Fatal(err)
	}
	var vol *Volume
	var snap *Snapshot
	var entry string
	steps := []struct {
		name    string
		do      func() error
		changes bool
		// visible, if set, checks the change is readable when the token
		// has arrived.
		visible func() bool
	}{
		{"nothing yet (what New read from disk is not a change)", func() error { return nil }, false, nil},
		{"create", func() (err error) {
			vol, err = m.CreateVolume(ctx, CreateRequest{Name: "pvc-a", RequiredBytes: mib, Mode: 0o777})
			return err
		}, true, func() bool { return p.VolumeCount() == 1 }},
		{"create again (idempotent)", func() error {
			_, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-a", RequiredBytes: mib, Mode: 0o777})
			return err
		}, false, nil},
		{"create refused", func() error {
			if _, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-a", RequiredBytes: 2 * mib, LimitBytes: 2 * mib, Mode: 0o777}); err == nil {
				t.Error("an incompatible create of an existing name succeeded")
			}
			return nil
		}, false, nil},
		{"reads", func() error {
			m.ListVolumes()
			m.RecheckQuarantined()
			if _, err := p.Capacity(); err != nil {
				return err
			}
			_, err := p.Trash()
			return err
		}, false, nil},
		{"expand", func() error {
			_, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: vol.ID, RequiredBytes: 4 * mib})
			return err
		}, true, func() bool { v, _ := m.GetVolume(vol.ID); return v != nil && v.CapacityBytes == 4*mib }},
		{"expand to the same size", func() error {
			_, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: vol.ID, RequiredBytes: 4 * mib})
			return err
		}, false, nil},
		{"snapshot", func() (err error) {
			snap, err = m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap-a", SourceVolumeID: vol.ID})
			return err
		}, true, func() bool { return p.SnapshotCount() == 1 }},
		{"snapshot again (idempotent)", func() error {
			_, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap-a", SourceVolumeID: vol.ID})
			return err
		}, false, nil},
		{"restore from the snapshot", func() error {
			_, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-b", RequiredBytes: 4 * mib, Mode: 0o777, Source: &ContentSource{SnapshotID: snap.ID}})
			return err
		}, true, func() bool { return p.VolumeCount() == 2 }},
		{"delete the snapshot", func() error { return m.DeleteSnapshot(ctx, snap.ID) }, true,
			func() bool { return p.SnapshotCount() == 0 }},
		{"delete the snapshot again", func() error { return m.DeleteSnapshot(ctx, snap.ID) }, false, nil},
		{"delete the volume", func() error { return m.DeleteVolume(ctx, vol.ID) }, true,
			func() bool { return p.VolumeCount() == 1 }},
		{"delete the volume again", func() error { return m.DeleteVolume(ctx, vol.ID) }, false, nil},
		{"restore from the trash", func() error {
			trash, err := p.Trash()
			if err != nil {
				return err
			}
			for _, e := range trash {
				if e.Volume != nil && e.Volume.ID == vol.ID {
					entry = e.Entry
				}
			}
			_, err = m.Untrash(ctx, UntrashRequest{Entry: entry})
			return err
		}, true, func() bool { return p.VolumeCount() == 2 }},
		{"purge with nothing expired", func() error {
			_, err := m.PurgeTrash(ctx, time.Hour)
			return err
		}, false, nil},
		{"purge", func() error {
			clock.Add(2 * time.Hour)
			n, err := m.PurgeTrash(ctx, time.Hour)
			if n != 1 { // the snapshot's entry; the volume's was restored
				t.Errorf("purged %d entries, want 1", n)
			}
			return err
		}, true, func() bool { tr, _ := p.Trash(); return len(tr) == 0 }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		select {
		case <-m.Changed():
			if !s.changes {
				t.Errorf("%s: signalled a change", s.name)
			} else if s.visible != nil && !s.visible() {
				t.Errorf("%s: signalled before the change was visible", s.name)
			}
		default:
			if s.changes {
				t.Errorf("%s: no change signalled", s.name)
			}
		}
		select {
		case <-m.Changed():
			t.Errorf("%s: a second token waits: the channel must hold at most one", s.name)
		default:
		}
	}
}

// TestChangedNeverBlocks: with nobody reading, changes go on at full speed
// and merge into the one waiting token.
func TestChangedNeverBlocks(t *testing.T) {
	m := dirManager(t, t.TempDir(), &fakeClock{t: time.Unix(1_700_000_000, 0)})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, name := range []string{"pvc-1", "pvc-2", "pvc-3", "pvc-4", "pvc-5"} {
			v := mustCreate(t, m, name, mib)
			if err := m.DeleteVolume(context.Background(), v.ID); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("creates and deletes blocked with nobody reading Changed")
	}
	if cap(m.Changed()) != 1 || len(m.Changed()) != 1 {
		t.Fatalf("Changed holds %d of %d tokens after ten changes, want 1 of 1", len(m.Changed()), cap(m.Changed()))
	}
}
