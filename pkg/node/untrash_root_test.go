package node

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

// untrashRetention is the purger's retention in these tests.
const untrashRetention = 15 * time.Minute

// trashOne creates a volume, writes payload into it and deletes it; it
// returns the volume and its trash entry.
func trashOne(t *testing.T, m *Manager, poolPath, name string, size int64, payload []byte) (*Volume, string) {
	t.Helper()
	v := mustCreate(t, m, name, size)
	if err := os.WriteFile(filepath.Join(poolPath, dirVolumes, v.Name, dataName, "payload"), payload, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteVolume(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	p, _ := m.Pool("")
	trash, err := p.Trash()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range trash {
		if e.Volume != nil && e.Volume.ID == v.ID {
			return v, e.Entry
		}
	}
	t.Fatalf("trash after deleting %s = %+v", v.ID, trash)
	return nil, ""
}

// TestUntrash takes a deleted volume back on real btrfs and ext4 pools: the
// same ID, data and size, counted in the index and capacity, new labels in
// its record, and still there after a restart. A repeated request returns
// the same volume.
func TestUntrash(t *testing.T) {
	testdisk.RequireRoot(t)
	for _, tc := range []struct {
		fs       string
		kind     BackendKind
		enforced bool
	}{{"btrfs", BackendBtrfs, true}, {"ext4", BackendDir, false}} {
		t.Run(tc.fs, func(t *testing.T) {
			ctx := context.Background()
			poolPath := newPoolOnDisk(t, tc.fs, 1<<30)
			clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			m := openManager(t, poolPath, tc.kind, clock)
			defer func() { m.Close() }()
			p, _ := m.Pool("")
			payload := bytes.Repeat([]byte("dhpp-restore "), 4096)
			old, entry := trashOne(t, m, poolPath, "pvc-restore", 64*mib, payload)
			before, err := p.Capacity()
			if err != nil {
				t.Fatal(err)
			}
			clock.Add(5 * time.Minute)

			labels := map[string]string{"namespace": "db", "pvc": "data-new", "pv": "pvc-restore"}
			v, err := m.Untrash(ctx, UntrashRequest{Entry: entry, Labels: labels})
			if err != nil {
				t.Fatalf("Untrash: %v", err)
			}
			if v.ID != old.ID || v.CapacityBytes != old.CapacityBytes || v.Backend != tc.kind || v.Labels["pvc"] != "data-new" || v.Labels[LabelRestoredFrom] != entry {
				t.Fatalf("restored %+v, want ID %s, %d bytes, new labels", v, old.ID, old.CapacityBytes)
			}
			got, err := os.ReadFile(filepath.Join(poolPath, dirVolumes, v.Name, dataName, "payload"))
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("data after restore: %d bytes, %v; want the %d bytes written", len(got), err, len(payload))
			}
			if live, err := m.GetVolume(v.ID); err != nil || live.ID != v.ID {
				t.Fatalf("GetVolume after restore = %v, %v", live, err)
			}
			after, err := p.Capacity()
			if err != nil {
				t.Fatal(err)
			}
			if after.Provisioned-before.Provisioned != old.CapacityBytes {
				t.Errorf("provisioned grew by %d, want the volume's %d", after.Provisioned-before.Provisioned, old.CapacityBytes)
			}
			if tr, _ := p.Trash(); len(tr) != 0 {
				t.Errorf("trash after restore = %+v, want empty", tr)
			}
			// The quota still limits it: a write past its size fails.
			if tc.enforced {
				if n, err := writeUntilError(t, filepath.Join(poolPath, dirVolumes, v.Name, dataName, "fill"), 2*old.CapacityBytes); err == nil || !isQuotaErr(err) {
					t.Errorf("wrote %d bytes into a restored %d-byte volume: %v, want a quota error", n, old.CapacityBytes, err)
				}
			}

			again, err := m.Untrash(ctx, UntrashRequest{Entry: entry})
			if err != nil || again.ID != v.ID {
				t.Fatalf("repeated Untrash = %v, %v; want the restored volume", again, err)
			}
			m.Close()
			m = openManager(t, poolPath, tc.kind, clock)
			if live, err := m.GetVolume(v.ID); err != nil || live.Labels["pvc"] != "data-new" {
				t.Fatalf("after restart: %+v, %v", live, err)
			}
		})
	}
}

// TestUntrashRefusals: each refusal names its cause, wraps the sentinel
// the driver maps, and leaves the trash entry where it was.
func TestUntrashRefusals(t *testing.T) {
	testdisk.RequireRoot(t)
	ctx := context.Background()
	poolPath := newPoolOnDisk(t, "btrfs", 1<<30)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := openManager(t, poolPath, BackendBtrfs, clock)
	defer m.Close()
	p, _ := m.Pool("")

	_, purging := trashOne(t, m, poolPath, "pvc-purging", 8*mib, []byte("late"))
	clock.Add(untrashRetention + time.Second)
	release, _ := p.holdEntry(purging) // as the purger does while it purges
	defer release()
	_, taken := trashOne(t, m, poolPath, "pvc-taken", 8*mib, []byte("old"))
	mustCreate(t, m, "pvc-taken", 8*mib) // the name is live again
	_, huge := trashOne(t, m, poolPath, "pvc-huge", 600*mib, []byte("huge"))
	mustCreate(t, m, "pvc-filler", 600*mib) // leaves no room for pvc-huge
	_, bad := trashOne(t, m, poolPath, "pvc-bad", 8*mib, []byte("bad"))
	if err := os.WriteFile(filepath.Join(poolPath, dirTrash, bad, recordFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, entry string
		want        error
	}{
		{"purged", "pvc-gone@1700000000000000000", ErrNotFound},
		{"not an entry name", "../volumes/pvc-taken", ErrInvalid},
		{"no time", "pvc-taken", ErrInvalid},
		{"live volume of that name", taken, ErrAlreadyExists},
		{"being purged", purging, ErrBusy},
		{"no room", huge, ErrNoSpace},
		{"record unreadable", bad, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Untrash(ctx, UntrashRequest{Entry: tc.entry})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Untrash(%s) = %v, want %v", tc.entry, err, tc.want)
			}
			t.Logf("refused: %v", err)
		})
	}
	if tr, _ := p.Trash(); len(tr) != 4 {
		t.Errorf("trash after refusals has %d entries, want the 4 refused ones untouched", len(tr))
	}
	if _, err := m.Untrash(ctx, UntrashRequest{Pool: "nope", Entry: taken}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown pool: %v, want ErrNotFound", err)
	}
}

// TestUntrashCrash: a crash between the record rewrite and the rename
// leaves a trash entry that a restarted driver lists and restores; a
// crash after the rename leaves a live volume that recovery reads.
func TestUntrashCrash(t *testing.T) {
	testdisk.RequireRoot(t)
	ctx := context.Background()
	poolPath := newPoolOnDisk(t, "btrfs", 1<<30)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := openManager(t, poolPath, BackendBtrfs, clock)
	defer func() { m.Close() }()
	v1, e1 := trashOne(t, m, poolPath, "pvc-crash-1", 8*mib, []byte("one"))
	v2, e2 := trashOne(t, m, poolPath, "pvc-crash-2", 8*mib, []byte("two"))

	// Step 1 done for e1 (record rewritten), not step 2.
	rec, err := readTrashedRecord(m.pools[0].root, filepath.Join(dirTrash, e1))
	if err != nil {
		t.Fatal(err)
	}
	rec.Labels = map[string]string{LabelRestoredFrom: e1}
	if err := writeRecord(m.pools[0].root, filepath.Join(dirTrash, e1), rec); err != nil {
		t.Fatal(err)
	}
	// Both steps done for e2, the index not updated.
	if err := os.Rename(filepath.Join(poolPath, dirTrash, e2), filepath.Join(poolPath, dirVolumes, v2.Name)); err != nil {
		t.Fatal(err)
	}
	m.Close()
	m = openManager(t, poolPath, BackendBtrfs, clock)
	if _, err := m.GetVolume(v2.ID); err != nil {
		t.Fatalf("volume renamed back before the crash: %v, want it live after restart", err)
	}
	p, _ := m.Pool("")
	if tr, _ := p.Trash(); len(tr) != 1 || tr[0].Entry != e1 || tr[0].Volume == nil {
		t.Fatalf("trash after restart = %+v, want %s with its record", tr, e1)
	}
	got, err := m.Untrash(ctx, UntrashRequest{Entry: e1})
	if err != nil || got.ID != v1.ID {
		t.Fatalf("Untrash after crash = %v, %v", got, err)
	}
	data, err := os.ReadFile(filepath.Join(poolPath, dirVolumes, v1.Name, dataName, "payload"))
	if err != nil || string(data) != "one" {
		t.Fatalf("data = %q, %v", data, err)
	}
}

// TestPurgeSkipsEntryBeingRestored: the purger leaves an expired entry
// that a restore holds, and purges it once released; an entry restored
// past its retention, before the purger got to it, comes back whole.
func TestPurgeSkipsEntryBeingRestored(t *testing.T) {
	testdisk.RequireRoot(t)
	ctx := context.Background()
	poolPath := newPoolOnDisk(t, "btrfs", 1<<30)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := openManager(t, poolPath, BackendBtrfs, clock)
	defer m.Close()
	p, _ := m.Pool("")
	_, held := trashOne(t, m, poolPath, "pvc-held", 8*mib, []byte("held"))
	v, late := trashOne(t, m, poolPath, "pvc-late", 8*mib, []byte("late"))
	clock.Add(untrashRetention + time.Minute)

	release, ok := p.holdEntry(held)
	if !ok {
		t.Fatal("hold")
	}
	if got, err := m.Untrash(ctx, UntrashRequest{Entry: late}); err != nil || got.ID != v.ID {
		t.Fatalf("Untrash of an expired entry not purged yet = %v, %v", got, err)
	}
	if n, err := m.PurgeTrash(ctx, untrashRetention); err != nil || n != 0 {
		t.Fatalf("PurgeTrash with the only expired entry held = %d, %v; want 0", n, err)
	}
	if tr, _ := p.Trash(); len(tr) != 1 || tr[0].Entry != held {
		t.Fatalf("trash = %+v, want %s kept", tr, held)
	}
	release()
	if n, err := m.PurgeTrash(ctx, untrashRetention); err != nil || n != 1 {
		t.Fatalf("PurgeTrash after release = %d, %v; want 1", n, err)
	}
	if n := p.heldCount(); n != 0 {
		t.Errorf("%d trash entries still held after the restore and the purge, want 0", n)
	}
	if data, err := os.ReadFile(filepath.Join(poolPath, dirVolumes, v.Name, dataName, "payload")); err != nil || string(data) != "late" {
		t.Errorf("restored data %q, %v", data, err)
	}
}
