package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMissingPoolAtStart: a pool whose directory does not exist (an
// unmounted data disk) does not stop the manager. The other pool serves;
// every request on the missing one is refused, naming it, its path and the
// likely cause, never answered OK; it opens, volumes and all, once its
// directory appears.
func TestMissingPoolAtStart(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	// The "data disk": a pool with a volume on it, not mounted yet.
	disk := t.TempDir()
	old := dirManager(t, disk, clock)
	held := mustCreate(t, old, "held", mib)
	old.Close()
	missing := filepath.Join(t.TempDir(), "mnt", "pool")

	m, err := New(Config{NodeID: "node-a", Now: clock.Now, DefaultSize: mib, Pools: []PoolConfig{
		{Name: "default", Path: missing, Backend: BackendDir},
		{Name: "other", Path: t.TempDir(), Backend: BackendDir},
	}})
	if err != nil {
		t.Fatalf("New with a missing pool directory: %v", err)
	}
	t.Cleanup(m.Close)
	gone := m.Pools()[0]
	if err := gone.Missing(); !errors.Is(err, ErrPoolMissing) || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "is the data disk mounted?") {
		t.Fatalf("Missing() = %v", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the driver created the missing pool directory: %v", err)
	}
	// The other pool serves.
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "elsewhere", Pool: "other", RequiredBytes: mib, Mode: 0o777}); err != nil {
		t.Fatal(err)
	}
	id := "node-a/default/held"
	refused := []struct {
		name string
		call func() error
		want error
	}{
		{"CreateVolume", func() error {
			_, err := m.CreateVolume(ctx, CreateRequest{Name: "new", RequiredBytes: mib, Mode: 0o777})
			return err
		}, ErrNoSpace},
		{"Capacity", func() error { _, err := gone.Capacity(); return err }, ErrPoolMissing},
		{"DeleteVolume", func() error { return m.DeleteVolume(ctx, id) }, ErrPoolMissing},
		{"DeleteVolume of an unknown name", func() error { return m.DeleteVolume(ctx, "node-a/default/never") }, ErrPoolMissing},
		{"GetVolume", func() error { _, err := m.GetVolume(id); return err }, ErrPoolMissing},
		{"ExpandVolume", func() error {
			_, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: id, RequiredBytes: 2 * mib})
			return err
		}, ErrPoolMissing},
		{"StageVolume", func() error {
			return m.StageVolume(ctx, StageRequest{VolumeID: id, StagingPath: filepath.Join(t.TempDir(), "s"), AccessType: AccessMount})
		}, ErrPoolMissing},
		{"UnstageVolume", func() error { return m.UnstageVolume(ctx, id, filepath.Join(t.TempDir(), "s")) }, ErrPoolMissing},
		{"PublishVolume", func() error {
			return m.PublishVolume(ctx, PublishRequest{VolumeID: id, TargetPath: filepath.Join(t.TempDir(), "t"), AccessType: AccessMount})
		}, ErrPoolMissing},
		{"UnpublishVolume", func() error { return m.UnpublishVolume(ctx, id, filepath.Join(t.TempDir(), "t")) }, ErrPoolMissing},
	}
	for _, r := range refused {
		if err := r.call(); !errors.Is(err, r.want) || !strings.Contains(err.Error(), missing) {
			t.Errorf("%s = %v; want %v naming %s", r.name, err, r.want, missing)
		}
	}
	if n, err := m.PurgeTrash(ctx, time.Minute); n != 0 || err != nil {
		t.Fatalf("PurgeTrash with a missing pool = %d, %v", n, err)
	}
	if opened := m.OpenMissingPools(); len(opened) != 0 {
		t.Fatalf("opened %v while the directory is still missing", opened)
	}

	// The disk is mounted: the pool opens with its volumes.
	var told []string
	m.OnPoolOpened(func(p *Pool) { told = append(told, p.Name) })
	if err := os.MkdirAll(filepath.Dir(missing), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(disk, missing); err != nil {
		t.Fatal(err)
	}
	if opened := m.OpenMissingPools(); len(opened) != 1 || opened[0] != gone || strings.Join(told, ",") != "default" {
		t.Fatalf("OpenMissingPools = %v, hook told %v", opened, told)
	}
	if err := gone.Missing(); err != nil {
		t.Fatal(err)
	}
	if v, err := m.GetVolume(held.ID); err != nil || v.Name != "held" {
		t.Fatalf("GetVolume after the pool opened = %+v, %v", v, err)
	}
	if err := m.DeleteVolume(ctx, held.ID); err != nil {
		t.Fatal(err)
	}
	if opened := m.OpenMissingPools(); len(opened) != 0 {
		t.Fatalf("opened again: %v", opened)
	}
}

// TestPoolVanishesWhileRunning: once the directory at a pool's path is not
// the one the driver opened (the disk unmounted, or the directory moved),
// requests on its volumes are refused instead of acting through the old
// descriptor; they work again when it is back.
func TestPoolVanishesWhileRunning(t *testing.T) {
	ctx := context.Background()
	pool := filepath.Join(t.TempDir(), "pool")
	if err := os.Mkdir(pool, 0o755); err != nil {
		t.Fatal(err)
	}
	m := dirManager(t, pool, &fakeClock{t: time.Unix(1_700_000_000, 0)})
	v := mustCreate(t, m, "vol", mib)
	aside := pool + ".aside"
	if err := os.Rename(pool, aside); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteVolume(ctx, v.ID); !errors.Is(err, ErrPoolMissing) || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("DeleteVolume with the pool gone = %v, want ErrPoolMissing", err)
	}
	// An empty directory in its place (the mount point of an unmounted disk).
	if err := os.Mkdir(pool, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := m.GetVolume(v.ID); !errors.Is(err, ErrPoolMissing) || !strings.Contains(err.Error(), "another directory") {
		t.Fatalf("GetVolume with another directory at the pool's path = %v, want ErrPoolMissing", err)
	}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "new", RequiredBytes: mib, Mode: 0o777}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("CreateVolume = %v, want ErrNoSpace", err)
	}
	if err := os.Remove(pool); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(aside, pool); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("DeleteVolume with the pool back = %v", err)
	}
}

// TestPoolStartErrors: only a missing directory is tolerated at start;
// anything else wrong with a pool still stops the driver.
func TestPoolStartErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		want string
	}{
		{"not a directory", file, "is not a directory"},
		{"parent is a file", filepath.Join(file, "pool"), "not a directory"},
		{"relative", "relative/pool", "is not absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(Config{NodeID: "node-a", Pools: []PoolConfig{{Name: "default", Path: tt.path, Backend: BackendDir}}})
			if err == nil {
				m.Close()
				t.Fatalf("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want %q", err, tt.want)
			}
		})
	}
}
