package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPoolTrash lists what DeleteVolume put in the trash, newest first with
// its record, and leaves out or does not follow what dhpp did not make.
func TestPoolTrash(t *testing.T) {
	pool := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := dirManager(t, pool, clock)
	p, err := m.Pool("default")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p.Trash(); err != nil || len(got) != 0 {
		t.Fatalf("empty trash: %v, %v", got, err)
	}
	old := mustCreate(t, m, "pvc-old", mib)
	recent := mustCreate(t, m, "pvc-recent", 2*mib)
	for _, v := range []*Volume{old, recent} {
		if err := m.DeleteVolume(context.Background(), v.ID); err != nil {
			t.Fatal(err)
		}
		clock.Add(time.Minute)
	}
	trash := filepath.Join(pool, ".dhpp", "trash")
	// Not dhpp's: no deletion time in the name. Left out.
	if err := os.Mkdir(filepath.Join(trash, "someone-elses"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A record that is a symlink out of the pool is not followed: the entry
	// is listed without a record.
	outside := filepath.Join(t.TempDir(), "volume.json")
	if err := os.WriteFile(outside, []byte(`{"id":"stolen","capacityBytes":5}`), 0o600); err != nil {
		t.Fatal(err)
	}
	planted := trashName("pvc-planted", clock.Now().Add(time.Hour))
	if err := os.Mkdir(filepath.Join(trash, planted), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(trash, planted, "volume.json")); err != nil {
		t.Fatal(err)
	}

	got, err := p.Trash()
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		entry string
		id    string
		bytes int64
	}{
		{planted, "", 0},
		{trashName("pvc-recent", time.Unix(1_700_000_060, 0)), recent.ID, 2 * mib},
		{trashName("pvc-old", time.Unix(1_700_000_000, 0)), old.ID, mib},
	}
	if len(got) != len(want) {
		t.Fatalf("trash = %+v, want %d entries", got, len(want))
	}
	for i, w := range want {
		g := got[i]
		var id string
		var bytes int64
		if g.Volume != nil {
			id, bytes = g.Volume.ID, g.Volume.CapacityBytes
		}
		if g.Entry != w.entry || id != w.id || bytes != w.bytes {
			t.Errorf("entry %d = %s (id %q, %d bytes), want %s (id %q, %d bytes)", i, g.Entry, id, bytes, w.entry, w.id, w.bytes)
		}
	}
	if !got[2].DeletedAt.Equal(time.Unix(1_700_000_000, 0)) {
		t.Errorf("deleted at %v, want the clock's time of the delete", got[2].DeletedAt)
	}
}

// TestHoldEntryPerPool: an entry held in one pool does not hold the entry
// of the same name in another, and released entries leave nothing behind.
func TestHoldEntryPerPool(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m, err := New(Config{NodeID: "node-a", Now: clock.Now, Pools: []PoolConfig{
		{Name: "one", Path: t.TempDir(), Backend: BackendDir},
		{Name: "two", Path: t.TempDir(), Backend: BackendDir},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	one, two := m.Pools()[0], m.Pools()[1]
	const entry = "pvc-a@1700000000000000000"
	releaseOne, ok := one.holdEntry(entry)
	if !ok {
		t.Fatal("first hold refused")
	}
	if _, ok := one.holdEntry(entry); ok {
		t.Fatal("an entry held was held again in the same pool")
	}
	releaseTwo, ok := two.holdEntry(entry)
	if !ok {
		t.Fatal("an entry of the same name in another pool was refused")
	}
	releaseOne()
	releaseTwo()
	if n1, n2 := one.heldCount(), two.heldCount(); n1 != 0 || n2 != 0 {
		t.Fatalf("held after release: %d and %d, want 0", n1, n2)
	}
	if release, ok := one.holdEntry(entry); !ok {
		t.Fatal("a released entry cannot be held again")
	} else {
		release()
	}
}
