package metrics

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

// newManager opens a node.Manager with one pool per config, each on its own
// directory that the caller prepared.
func newManager(t testing.TB, pools ...node.PoolConfig) *node.Manager {
	t.Helper()
	m, err := node.New(node.Config{NodeID: "n1", Pools: pools, DefaultSize: mib})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func create(t testing.TB, m *node.Manager, pool, name string, size int64, access node.AccessType) *node.Volume {
	t.Helper()
	v, err := m.CreateVolume(context.Background(), node.CreateRequest{Name: name, Pool: pool, RequiredBytes: size, AccessType: access})
	if err != nil {
		t.Fatalf("create %s in %s: %v", name, pool, err)
	}
	return v
}

// TestCollectorDir needs no root: a dir pool on a temp directory.
func TestCollectorDir(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	m := newManager(t, node.PoolConfig{Name: "a", Path: a, Backend: node.BackendDir}, node.PoolConfig{Name: "b", Path: b, Backend: node.BackendDir})
	create(t, m, "a", "pvc-1", 2*mib, node.AccessMount)
	create(t, m, "a", "pvc-2", 3*mib, node.AccessMount)
	c := NewCollector(m)

	want := `
# HELP dhpp_pool_volumes Number of volumes in the pool.
# TYPE dhpp_pool_volumes gauge
dhpp_pool_volumes{pool="a"} 2
dhpp_pool_volumes{pool="b"} 0
# HELP dhpp_pool_provisioned_bytes Sum of the sizes of the pool's volumes, and of what its snapshots occupied when taken.
# TYPE dhpp_pool_provisioned_bytes gauge
dhpp_pool_provisioned_bytes{pool="a"} 5.24288e+06
dhpp_pool_provisioned_bytes{pool="b"} 0
# HELP dhpp_volume_capacity_bytes Provisioned size of a volume.
# TYPE dhpp_volume_capacity_bytes gauge
dhpp_volume_capacity_bytes{backend="dir",pool="a",volume="pvc-1"} 2.097152e+06
dhpp_volume_capacity_bytes{backend="dir",pool="a",volume="pvc-2"} 3.145728e+06
# HELP dhpp_metrics_collect_errors Pools and volumes whose figures could not be read in this scrape (e.g. a vanished disk); their series are missing from it.
# TYPE dhpp_metrics_collect_errors gauge
dhpp_metrics_collect_errors 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"dhpp_pool_volumes", "dhpp_pool_provisioned_bytes", "dhpp_volume_capacity_bytes", "dhpp_metrics_collect_errors"); err != nil {
		t.Fatal(err)
	}
	// Dir volumes have no per-volume accounting: no used series at all,
	// rather than the whole filesystem's usage under each volume's name.
	if n := testutil.CollectAndCount(c, "dhpp_volume_used_bytes"); n != 0 {
		t.Fatalf("dhpp_volume_used_bytes has %d series for dir volumes, want 0", n)
	}
	// The pool figures are the ones GetCapacity uses.
	mfs := testdisk.Gather(t, c)
	for _, p := range m.Pools() {
		capa, err := p.Capacity()
		if err != nil {
			t.Fatal(err)
		}
		total, _ := testdisk.Gauge(t, mfs, "dhpp_pool_capacity_bytes", map[string]string{"pool": p.Name, "backend": "dir"})
		if total != float64(capa.Total) || total <= 0 {
			t.Errorf("pool %s capacity = %v, want %d", p.Name, total, capa.Total)
		}
		if _, ok := testdisk.Gauge(t, mfs, "dhpp_pool_available_bytes", map[string]string{"pool": p.Name}); !ok {
			t.Errorf("pool %s: no dhpp_pool_available_bytes", p.Name)
		}
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
}

// brokenSource adds a loop volume whose image does not exist, as after a
// disk vanished under the driver.
type brokenSource struct{ *node.Manager }

func (b brokenSource) ListVolumes() []*node.Volume {
	return append(b.Manager.ListVolumes(), &node.Volume{ID: "n1/a/ghost", Name: "ghost", Pool: "a", Backend: node.BackendLoop, CapacityBytes: mib})
}

func TestCollectorUnreadableVolume(t *testing.T) {
	m := newManager(t, node.PoolConfig{Name: "a", Path: t.TempDir(), Backend: node.BackendDir})
	c := NewCollector(brokenSource{m})
	mfs := testdisk.Gather(t, c)
	if v, _ := testdisk.Gauge(t, mfs, "dhpp_metrics_collect_errors", nil); v != 1 {
		t.Fatalf("collect errors = %v, want 1", v)
	}
	if _, ok := testdisk.Gauge(t, mfs, "dhpp_volume_capacity_bytes", map[string]string{"volume": "ghost"}); !ok {
		t.Fatal("the unreadable volume's capacity (from its record) should still be reported")
	}
	if _, ok := testdisk.Gauge(t, mfs, "dhpp_volume_used_bytes", map[string]string{"volume": "ghost"}); ok {
		t.Fatal("an unreadable volume must have no used series")
	}
}

// TestCollectorUsedBytes checks the backends' accounting on real disks:
// btrfs qgroups and loop images' allocated blocks.
func TestCollectorUsedBytes(t *testing.T) {
	testdisk.RequireRoot(t)
	bd := testdisk.New(t, "btrfs", 256*mib)
	ed := testdisk.New(t, "ext4", 256*mib)
	m := newManager(t,
		node.PoolConfig{Name: "bt", Path: bd.Dir, Backend: node.BackendBtrfs},
		node.PoolConfig{Name: "lp", Path: ed.Dir, Backend: node.BackendLoop})
	bv := create(t, m, "bt", "pvc-b", 64*mib, node.AccessMount)
	lv := create(t, m, "lp", "pvc-l", 64*mib, node.AccessBlock)
	const written = 8 * mib
	writeFile(t, filepath.Join(bd.Dir, "volumes", bv.Name, "data", "f"), 0, written)
	writeFile(t, filepath.Join(ed.Dir, "volumes", lv.Name, "disk.img"), 16*mib, written)
	// btrfs updates qgroups when the transaction commits.
	syncfs(t, bd.Dir)

	mfs := testdisk.Gather(t, NewCollector(m))
	tests := []struct {
		volume, backend string
		min, max        float64
	}{
		// qgroup referenced bytes: the data plus a little metadata.
		{"pvc-b", "btrfs", written, written + mib},
		// the image's allocated blocks: the 8 MiB written, nothing else
		// (a Block volume has no filesystem inside).
		{"pvc-l", "loop", written, written + mib},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			got, ok := testdisk.Gauge(t, mfs, "dhpp_volume_used_bytes", map[string]string{"volume": tt.volume, "backend": tt.backend, "pool": map[string]string{"btrfs": "bt", "loop": "lp"}[tt.backend]})
			if !ok {
				t.Fatalf("no dhpp_volume_used_bytes for %s", tt.volume)
			}
			if got < tt.min || got > tt.max {
				t.Fatalf("used = %v, want in [%v, %v]", got, tt.min, tt.max)
			}
		})
	}
	if v, _ := testdisk.Gauge(t, mfs, "dhpp_metrics_collect_errors", nil); v != 0 {
		t.Fatalf("collect errors = %v", v)
	}
}

func writeFile(t testing.TB, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, mib)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for done := int64(0); done < n; done += mib {
		if _, err := f.WriteAt(buf, off+done); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func syncfs(t testing.TB, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// TestCollectorQuarantinedAndMissing: a pool with a damaged record and a
// pool whose directory is missing are reported by their own gauges; the
// missing pool's capacity series are absent without counting as errors.
func TestCollectorQuarantinedAndMissing(t *testing.T) {
	a := t.TempDir()
	m := newManager(t, node.PoolConfig{Name: "a", Path: a, Backend: node.BackendDir})
	create(t, m, "a", "pvc-1", mib, node.AccessMount)
	create(t, m, "a", "pvc-2", mib, node.AccessMount)
	m.Close()
	if err := os.WriteFile(filepath.Join(a, "volumes/pvc-2/volume.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	m = newManager(t, node.PoolConfig{Name: "a", Path: a, Backend: node.BackendDir},
		node.PoolConfig{Name: "b", Path: filepath.Join(t.TempDir(), "unmounted"), Backend: node.BackendDir})
	c := NewCollector(m)
	const want = `
# HELP dhpp_pool_quarantined_volumes Volume directories of the pool whose record cannot be trusted (unreadable, or disagreeing with where it lies): left untouched, their names reserved, every request on them refused until an operator acts.
# TYPE dhpp_pool_quarantined_volumes gauge
dhpp_pool_quarantined_volumes{pool="a"} 1
dhpp_pool_quarantined_volumes{pool="b"} 0
# HELP dhpp_pool_missing 1 while the pool's directory is missing or is not the one the driver opened (an unmounted data disk?): the pool refuses every request; else 0.
# TYPE dhpp_pool_missing gauge
dhpp_pool_missing{pool="a"} 0
dhpp_pool_missing{pool="b"} 1
# HELP dhpp_pool_volumes Number of volumes in the pool.
# TYPE dhpp_pool_volumes gauge
dhpp_pool_volumes{pool="a"} 1
dhpp_pool_volumes{pool="b"} 0
# HELP dhpp_metrics_collect_errors Pools and volumes whose figures could not be read in this scrape (e.g. a vanished disk); their series are missing from it.
# TYPE dhpp_metrics_collect_errors gauge
dhpp_metrics_collect_errors 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"dhpp_pool_quarantined_volumes", "dhpp_pool_missing", "dhpp_pool_volumes", "dhpp_metrics_collect_errors"); err != nil {
		t.Fatal(err)
	}
	mfs := testdisk.Gather(t, c)
	if _, ok := testdisk.Gauge(t, mfs, "dhpp_pool_capacity_bytes", map[string]string{"pool": "b"}); ok {
		t.Error("a missing pool has a capacity series")
	}
	if _, ok := testdisk.Gauge(t, mfs, "dhpp_pool_capacity_bytes", map[string]string{"pool": "a"}); !ok {
		t.Error("the healthy pool lost its capacity series")
	}
}
