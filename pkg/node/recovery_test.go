package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// These tests use the dir backend on an ordinary temp directory, so they
// run without root: they are about the state machine on disk, not about
// enforcement.

func dirManager(t *testing.T, pool string, clock *fakeClock) *Manager {
	t.Helper()
	m, err := New(Config{NodeID: "node-a", Pools: []PoolConfig{{Name: "default", Path: pool, Backend: BackendDir}}, Now: clock.Now, DefaultSize: mib})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(m.Close)
	return m
}

func mustCreate(t *testing.T, m *Manager, name string, size int64) *Volume {
	t.Helper()
	v, err := m.CreateVolume(context.Background(), CreateRequest{Name: name, RequiredBytes: size, Mode: 0o777})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return v
}

func TestRecoveryFromDisk(t *testing.T) {
	pool := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := dirManager(t, pool, clock)
	mustCreate(t, m, "good", mib)
	resizing := mustCreate(t, m, "resizing", mib)
	mustCreate(t, m, "corrupt", mib)
	m.Close()

	// A crash in the middle of a create leaves a half-built volume in tmp.
	if err := os.MkdirAll(filepath.Join(pool, ".dhpp/tmp/half.built.0a1b2c/data"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of an expand leaves a Resizing record.
	r, err := readRecord(mustRoot(t, pool), "volumes/resizing", "resizing")
	if err != nil {
		t.Fatal(err)
	}
	r.Phase, r.TargetBytes = PhaseResizing, 4*mib
	if err := writeRecord(mustRoot(t, pool), "volumes/resizing", r); err != nil {
		t.Fatal(err)
	}
	// A record someone damaged, and a foreign entry.
	if err := os.WriteFile(filepath.Join(pool, "volumes/corrupt/volume.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(pool, "volumes/.foreign"), 0o755); err != nil {
		t.Fatal(err)
	}

	m = dirManager(t, pool, clock)
	ids := []string{}
	for _, v := range m.ListVolumes() {
		ids = append(ids, v.Name)
	}
	if strings.Join(ids, ",") != "good,resizing" {
		t.Fatalf("recovered volumes %v, want good,resizing", ids)
	}
	if tmp, _ := os.ReadDir(filepath.Join(pool, ".dhpp/tmp")); len(tmp) != 0 {
		t.Fatalf("tmp not cleared: %v", tmp)
	}
	trash, _ := os.ReadDir(filepath.Join(pool, ".dhpp/trash"))
	if len(trash) != 1 || !strings.HasPrefix(trash[0].Name(), "half.built@") {
		t.Fatalf("interrupted create not moved to the trash: %v", trash)
	}
	// Never delete what cannot be understood.
	for _, p := range []string{"volumes/corrupt/data", "volumes/.foreign"} {
		if _, err := os.Stat(filepath.Join(pool, p)); err != nil {
			t.Fatalf("%s was touched: %v", p, err)
		}
	}
	c, _ := m.Pools()[0].Capacity()
	if c.Provisioned != mib+4*mib {
		t.Fatalf("provisioned = %d, want the resize target counted", c.Provisioned)
	}
	// The retried expand completes the interrupted one.
	v, err := m.ExpandVolume(context.Background(), ExpandRequest{VolumeID: resizing.ID, RequiredBytes: 2 * mib})
	if err != nil || v.Phase != PhaseReady || v.CapacityBytes != 4*mib {
		t.Fatalf("ExpandVolume after crash = %+v, %v; want Ready with the interrupted target", v, err)
	}
	// The purge of the interrupted create happens only after the retention.
	if n, _ := m.PurgeTrash(context.Background(), time.Minute); n != 0 {
		t.Fatalf("purged %d entries early", n)
	}
	clock.Add(2 * time.Minute)
	if n, err := m.PurgeTrash(context.Background(), time.Minute); n != 1 || err != nil {
		t.Fatalf("PurgeTrash = %d, %v", n, err)
	}
}

func mustRoot(t *testing.T, dir string) *os.Root {
	t.Helper()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestNothingOutsideThePool plants symlinks that point out of the pool
// where dhpp would otherwise follow them; nothing outside may change.
func TestNothingOutsideThePool(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	outside := t.TempDir()
	victim := filepath.Join(outside, "precious")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := t.TempDir()
	m := dirManager(t, pool, clock)
	v := mustCreate(t, m, "vol", mib)

	// 1. The volume's data directory replaced by a symlink out of the pool:
	// publishing must refuse rather than bind-mount the outside directory.
	data := filepath.Join(pool, "volumes/vol/data")
	if err := os.Remove(data); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, data); err != nil {
		t.Fatal(err)
	}
	err := m.PublishVolume(ctx, PublishRequest{VolumeID: v.ID, TargetPath: filepath.Join(t.TempDir(), "t"), AccessType: AccessMount})
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("PublishVolume through a planted symlink: %v", err)
	}

	// 2. Delete and purge it: the symlink goes, the outside stays.
	if err := m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Hour)
	if _, err := m.PurgeTrash(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	// 3. The trash directory itself replaced by a symlink out of the pool.
	trash := filepath.Join(pool, ".dhpp/trash")
	if err := os.Remove(trash); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, trash); err != nil {
		t.Fatal(err)
	}
	w := mustCreate(t, m, "vol2", mib)
	if err := m.DeleteVolume(ctx, w.ID); err == nil {
		t.Fatalf("DeleteVolume moved a volume through a symlink out of the pool")
	}
	clock.Add(time.Hour)
	_, _ = m.PurgeTrash(ctx, time.Minute)

	if b, err := os.ReadFile(victim); err != nil || string(b) != "keep" {
		t.Fatalf("a file outside the pool changed: %q, %v", b, err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Fatalf("outside directory changed: %v", entries)
	}
}

func TestCapacityChecks(t *testing.T) {
	m := dirManager(t, t.TempDir(), &fakeClock{t: time.Now()})
	c, err := m.Pools()[0].Capacity()
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.CreateVolume(context.Background(), CreateRequest{Name: "huge", RequiredBytes: c.Total + 1})
	if !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("volume larger than the pool: %v, want ErrOutOfRange", err)
	}
	half := (c.Available/2/mib + 1) * mib
	first := mustCreate(t, m, "first-half", half)
	_, err = m.CreateVolume(context.Background(), CreateRequest{Name: "second-half", RequiredBytes: half})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "provisioned") {
		t.Fatalf("volume beyond the available space: %v, want ErrNoSpace naming provisioned bytes", err)
	}
	// A Block volume of a dir pool is an image in the pool: it counts
	// against the same capacity.
	if _, err := m.CreateVolume(context.Background(), CreateRequest{Name: "blk", AccessType: AccessBlock, RequiredBytes: half}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("block volume beyond the dir pool's available space: %v, want ErrNoSpace", err)
	}
	if strings.Contains(err.Error(), "trash") {
		t.Fatalf("refusal with an empty trash mentions it: %v", err)
	}
	// Deleted volumes keep their data in the trash: a refusal says so,
	// or a pool full of trash looks full of volumes.
	if err := m.DeleteVolume(context.Background(), first.ID); err != nil {
		t.Fatal(err)
	}
	_, err = m.CreateVolume(context.Background(), CreateRequest{Name: "too-big", RequiredBytes: c.Total - mib})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "1 deleted volumes or snapshots in the pool's trash") {
		t.Fatalf("refusal with one trash entry: %v, want ErrNoSpace naming the trash", err)
	}
}

func TestConcurrentCreateSameName(t *testing.T) {
	m := dirManager(t, t.TempDir(), &fakeClock{t: time.Now()})
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.CreateVolume(context.Background(), CreateRequest{Name: "same", RequiredBytes: mib, Mode: 0o777})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrBusy):
			t.Fatalf("unexpected error %v", err)
		}
	}
	if ok == 0 || len(m.ListVolumes()) != 1 {
		t.Fatalf("%d successes, %d volumes; want at least one success and exactly one volume", ok, len(m.ListVolumes()))
	}
}

func TestWrongNodeAndPool(t *testing.T) {
	m := dirManager(t, t.TempDir(), &fakeClock{t: time.Now()})
	ctx := context.Background()
	for _, id := range []string{"node-b/default/vol", "node-a/other/vol"} {
		if err := m.DeleteVolume(ctx, id); !errors.Is(err, ErrWrongNode) {
			t.Errorf("DeleteVolume(%s) = %v, want ErrWrongNode (refuse, never pretend)", id, err)
		}
		if _, err := m.GetVolume(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetVolume(%s) = %v, want ErrNotFound", id, err)
		}
	}
	if err := m.DeleteVolume(ctx, "node-a/default/never-existed"); err != nil {
		t.Errorf("DeleteVolume of a missing volume = %v, want success", err)
	}
}
