package node

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node/btrfs"
)

// TestBtrfsQuotaSetting: a btrfs pool gets full qgroups by default and
// simple quotas when configured so; either way a volume's size holds, and
// a pool whose quotas are already on keeps their mode. It also shows what
// the mode means for a restore (see the README's backend section).
func TestBtrfsQuotaSetting(t *testing.T) {
	testdisk.RequireRoot(t)
	for _, tc := range []struct {
		name, setting string
		preset        func(*Pool) error // quotas turned on before the driver opens the pool
		want          btrfs.QuotaMode
	}{
		{"default", "", nil, btrfs.QuotaQgroup},
		{"simple", BtrfsQuotaSimple, nil, btrfs.QuotaSimple},
		{"simple asked, qgroups found", BtrfsQuotaSimple, func(p *Pool) error { return btrfs.EnableQuota(p.rootFile) }, btrfs.QuotaQgroup},
	} {
		t.Run(tc.name, func(t *testing.T) {
			poolPath := newPoolOnDisk(t, "btrfs", 1<<30)
			open := func() *Manager {
				m, err := New(Config{NodeID: "node-a", Now: (&fakeClock{t: time.Unix(1_700_000_000, 0)}).Now,
					Pools: []PoolConfig{{Name: "default", Path: poolPath, Backend: BackendBtrfs, BtrfsQuota: tc.setting}}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(m.Close)
				return m
			}
			if tc.preset != nil {
				m, err := New(Config{NodeID: "node-a", Pools: []PoolConfig{{Name: "default", Path: poolPath, Backend: BackendDir}}})
				if err != nil {
					t.Fatal(err)
				}
				err = tc.preset(m.Pools()[0])
				m.Close()
				if err != nil {
					t.Fatal(err)
				}
			}
			m := open()
			if mode, err := btrfs.Mode(m.Pools()[0].rootFile); mode != tc.want || err != nil {
				t.Fatalf("quota mode = %q, %v; want %q", mode, err, tc.want)
			}
			v := mustCreate(t, m, "pvc-a", 16*mib)
			data := filepath.Join(poolPath, dirVolumes, v.Name, dataName)
			if n, err := writeUntilError(t, filepath.Join(data, "f"), 64*mib); !isQuotaErr(err) || n > 16*mib {
				t.Fatalf("wrote %d bytes into a 16 MiB volume, then %v; want a quota error", n, err)
			}
			// What the restore may write: full qgroups count the extents it
			// shares with the snapshot (the source's 16 MiB file) against
			// it, simple quotas charge them to the source that wrote them.
			ctx := context.Background()
			snap, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap-a", SourceVolumeID: v.ID})
			if err != nil {
				t.Fatal(err)
			}
			r, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-r", RequiredBytes: 16 * mib, Mode: 0o777, Source: &ContentSource{SnapshotID: snap.ID}})
			if err != nil {
				t.Fatal(err)
			}
			rdata := filepath.Join(poolPath, dirVolumes, r.Name, dataName)
			n, err := writeUntilError(t, filepath.Join(rdata, "g"), 64*mib)
			if !isQuotaErr(err) || n > 16*mib {
				t.Fatalf("wrote %d bytes into a 16 MiB restore, then %v; want a quota error", n, err)
			}
			if simple := tc.want == btrfs.QuotaSimple; simple != (n > 8*mib) {
				t.Errorf("%s: the restore took %d new bytes; want about its 16 MiB under simple quotas, little under full qgroups", tc.want, n)
			}
			t.Logf("%s: the restore of a full 16 MiB volume took %d new bytes", tc.want, n)
		})
	}
	if _, err := New(Config{NodeID: "node-a", Pools: []PoolConfig{{Name: "default", Path: t.TempDir(), Backend: BackendBtrfs, BtrfsQuota: "squota"}}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("an unknown btrfs quota mode = %v, want ErrInvalid", err)
	}
}
