package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// BenchmarkNodeGetVolumeStats: the whole CSI call (validation, lookup, the
// backend's accounting, the health condition) with 1,000 volumes in the
// pool; the target is under 1 ms whatever the volume count.
func BenchmarkNodeGetVolumeStats(b *testing.B) {
	for _, c := range []struct {
		fs   string
		kind node.BackendKind
	}{{"btrfs", node.BackendBtrfs}, {"ext4", node.BackendDir}} {
		b.Run(c.fs+"/"+string(c.kind), func(b *testing.B) {
			d := testdisk.New(b, c.fs, 16<<30)
			pool := filepath.Join(d.Dir, "dhpp")
			if err := os.Mkdir(pool, 0o755); err != nil {
				b.Fatal(err)
			}
			m, err := node.New(node.Config{NodeID: "bench", Pools: []node.PoolConfig{{Name: "default", Path: pool, Backend: c.kind}}})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			drv, err := New(Config{Manager: m})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			work := b.TempDir()
			var reqs []*csi.NodeGetVolumeStatsRequest
			for i := range 1000 {
				v, err := m.CreateVolume(ctx, node.CreateRequest{Name: fmt.Sprintf("pvc-%04d", i), RequiredBytes: 1 << 20, Mode: 0o777})
				if err != nil {
					b.Fatal(err)
				}
				if i%100 != 0 {
					continue
				}
				// Ten of them published, as the kubelet asks for stats of
				// published volumes only (at their target path).
				target := filepath.Join(work, v.Name)
				if err := m.PublishVolume(ctx, node.PublishRequest{VolumeID: v.ID, TargetPath: target, AccessType: node.AccessMount}); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() {
					if err := m.UnpublishVolume(ctx, v.ID, target); err != nil {
						b.Error(err)
					}
				})
				reqs = append(reqs, &csi.NodeGetVolumeStatsRequest{VolumeId: v.ID, VolumePath: target})
			}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if _, err := drv.NodeGetVolumeStats(ctx, reqs[i%len(reqs)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
