package orphans

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/kube/kubetest"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
)

const (
	nodeID = "n1"
	grace  = time.Hour
)

// t0 is when every test volume was created (the Manager's clock).
var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// pv is a PV of this driver for volume name (on node n1, pool default
// unless the name says "other/pool/name").
func pv(name string, mods ...func(*corev1.PersistentVolume)) corev1.PersistentVolume {
	handle := nodeID + "/default/" + name
	if strings.Count(name, "/") == 2 {
		handle = name
	}
	p := corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + strings.ReplaceAll(name, "/", "-"), UID: types.UID("uid-" + strings.ReplaceAll(name, "/", "-")),
			CreationTimestamp: metav1.NewTime(t0)},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: dhpp.DriverName, VolumeHandle: handle}},
			ClaimRef:               &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: "data-" + name, UID: types.UID("claim-" + name)},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	for _, m := range mods {
		m(&p)
	}
	return p
}

func released(p *corev1.PersistentVolume) { p.Status.Phase = corev1.VolumeReleased }
func deleting(p *corev1.PersistentVolume) {
	now := metav1.NewTime(t0)
	p.DeletionTimestamp = &now
}
func otherDriver(p *corev1.PersistentVolume) { p.Spec.CSI.Driver = "other.csi.io" }

// pager is a fake API server: one PV per page, with continue tokens, and
// an error on page failPage (1-based; 0 = none) or on every page (failAll).
type pager struct {
	mu       sync.Mutex
	pvs      []corev1.PersistentVolume
	failPage int
	failAll  bool
	calls    []metav1.ListOptions
}

func (p *pager) ListPersistentVolumes(_ context.Context, opts metav1.ListOptions) (*corev1.PersistentVolumeList, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, opts)
	page := 0
	if opts.Continue != "" {
		fmt.Sscanf(opts.Continue, "page-%d", &page)
	}
	if p.failAll || p.failPage == page+1 {
		return nil, errors.New("the server could not find the requested resource")
	}
	l := &corev1.PersistentVolumeList{}
	if page < len(p.pvs) {
		l.Items = []corev1.PersistentVolume{p.pvs[page]}
	}
	if page+1 < len(p.pvs) {
		l.Continue = fmt.Sprintf("page-%d", page+1)
	}
	return l, nil
}

// event is one posted Event: reason and the object it is on.
type event struct{ reason, on, msg string }

type recorder struct {
	mu  sync.Mutex
	evs []event
}

func (r *recorder) Post(typ, reason, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, event{reason, "Node/" + nodeID, msg})
}

func (r *recorder) PostOn(obj corev1.ObjectReference, typ, reason, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, event{reason, obj.Kind + "/" + obj.Namespace + "/" + obj.Name, msg})
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.evs {
		out = append(out, e.reason+" "+e.on)
	}
	return out
}

// refusing wraps the Manager and refuses to delete some volumes, as a
// mounted volume is refused.
type refusing struct {
	*node.Manager
	busy map[string]bool
}

func (r refusing) DeleteVolume(ctx context.Context, id string) error {
	if r.busy[id] {
		return fmt.Errorf("%w: volume %s is mounted", node.ErrInUse, id)
	}
	return r.Manager.DeleteVolume(ctx, id)
}

// newManager opens a dir-backend pool in a temporary directory with the
// named volumes, all created at t0.
func newManager(t *testing.T, names ...string) (*node.Manager, string) {
	t.Helper()
	dir := t.TempDir()
	m, err := node.New(node.Config{NodeID: nodeID, Pools: []node.PoolConfig{{Name: "default", Path: dir, Backend: node.BackendDir}},
		Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	for _, n := range names {
		if _, err := m.CreateVolume(context.Background(), node.CreateRequest{Name: n, RequiredBytes: 1 << 20,
			Labels: map[string]string{"namespace": "db", "pvc": "data-" + n, "pv": "pv-" + n}}); err != nil {
			t.Fatal(err)
		}
	}
	return m, dir
}

// trashed lists the volume names in the pool's trash.
func trashed(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dir, ".dhpp", "trash"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		name, _, _ := strings.Cut(e.Name(), "@")
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// round is one listing: at (after t0) with the PVs the API server holds.
type round struct {
	at  time.Duration
	pvs []corev1.PersistentVolume
	// failPage fails the listing on that page; failAll on every page.
	failPage int
	failAll  bool

	wantTrash    []string // the pool's trash after the round
	wantOrphans  float64  // dhpp_orphan_volumes{pool="default"}
	wantMissing  float64  // dhpp_missing_volumes{pool="default"}
	wantTrashed  float64  // dhpp_orphan_volumes_trashed_total{pool="default"}
	wantEvents   []string // every Event so far: "reason Kind/..."
	wantFailures float64  // dhpp_pv_list_failures_total
}

// TestCheck drives a Checker through rounds of listings against a real
// Manager (dir pool): what is trashed, reported and counted when.
func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		volumes []string
		busy    []string // DeleteVolume refuses these (mounted)
		noTrash bool     // --orphan-trash=false
		clock   time.Duration
		rounds  []round
	}{
		{
			name: "an orphan is reported and trashed once its PV has been gone for the grace period", volumes: []string{"a", "b"},
			rounds: []round{
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("b")}},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 3*time.Hour + 30*time.Minute, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 4*time.Hour - time.Second, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 4 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantTrash: []string{"b"}, wantTrashed: 1,
					wantEvents: []string{"OrphanVolume Node/n1"}},
				{at: 5 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantTrash: []string{"b"}, wantTrashed: 1,
					wantEvents: []string{"OrphanVolume Node/n1"}},
			},
		},
		{
			name: "a PV seen again restarts the grace", volumes: []string{"a", "b"},
			rounds: []round{
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 2*time.Hour + 50*time.Minute, pvs: []corev1.PersistentVolume{pv("a"), pv("b")}},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 3*time.Hour + 59*time.Minute, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 4 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantTrash: []string{"b"}, wantTrashed: 1,
					wantEvents: []string{"OrphanVolume Node/n1"}},
			},
		},
		{
			name: "failed listings count as nothing: the grace starts at the first good one", volumes: []string{"a", "b"},
			rounds: []round{
				{at: 2 * time.Hour, failAll: true, wantFailures: 1},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantFailures: 1},
				{at: 3*time.Hour + 30*time.Minute, failAll: true, wantFailures: 2},
				{at: 4 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantTrash: []string{"b"}, wantTrashed: 1, wantFailures: 2,
					wantEvents: []string{"OrphanVolume Node/n1"}},
			},
		},
		{
			name: "a listing that fails on a later page judges nothing", volumes: []string{"a", "b"},
			rounds: []round{
				// b's PV is on page 2, which fails: without it b would look orphaned.
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("b")}, failPage: 2, wantFailures: 1},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("b")}, failPage: 2, wantFailures: 2},
				{at: 9 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("b")}, failPage: 2, wantFailures: 3},
			},
		},
		{
			name: "PVs of other drivers do not count", volumes: []string{"a", "b"},
			rounds: []round{
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("b", otherDriver)}},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("b", otherDriver)}, wantTrash: []string{"b"}, wantTrashed: 1,
					wantEvents: []string{"OrphanVolume Node/n1"}},
			},
		},
		{
			name: "a Released PV or one being deleted still holds its volume", volumes: []string{"a", "b"},
			rounds: []round{
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a", released), pv("b", deleting)}},
				{at: 9 * time.Hour, pvs: []corev1.PersistentVolume{pv("a", released), pv("b", deleting)}},
			},
		},
		{
			name: "a volume newer than the clock (skew) is never an orphan", volumes: []string{"a", "b"}, clock: -3 * time.Hour,
			rounds: []round{
				{at: 0, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 4 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantTrash: []string{"b"}, wantTrashed: 1,
					wantEvents: []string{"OrphanVolume Node/n1"}},
			},
		},
		{
			name: "every volume orphaned and more than a few: none trashed, reported once", volumes: []string{"a", "b", "c", "d"},
			rounds: []round{
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("x/default/other")}},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("x/default/other")}, wantOrphans: 4,
					wantEvents: []string{"OrphanTrashRefused Node/n1"}},
				{at: 4 * time.Hour, pvs: []corev1.PersistentVolume{pv("x/default/other")}, wantOrphans: 4,
					wantEvents: []string{"OrphanTrashRefused Node/n1"}},
			},
		},
		{
			name: "an empty listing is the same wrong signal", volumes: []string{"a", "b", "c", "d"},
			rounds: []round{
				{at: 2 * time.Hour},
				{at: 3 * time.Hour, wantOrphans: 4, wantEvents: []string{"OrphanTrashRefused Node/n1"}},
			},
		},
		{
			name: "a few volumes, all orphaned: trashed (a node that comes back with its released replicas)", volumes: []string{"a", "b", "c"},
			rounds: []round{
				{at: 2 * time.Hour},
				{at: 3 * time.Hour, wantTrash: []string{"a", "b", "c"}, wantTrashed: 3,
					wantEvents: []string{"OrphanVolume Node/n1", "OrphanVolume Node/n1", "OrphanVolume Node/n1"}},
			},
		},
		{
			name: "report only: counted and reported once, never trashed", volumes: []string{"a", "b"}, noTrash: true,
			rounds: []round{
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantOrphans: 1, wantEvents: []string{"OrphanVolume Node/n1"}},
				{at: 4 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantOrphans: 1, wantEvents: []string{"OrphanVolume Node/n1"}},
				{at: 5 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("b")}, wantEvents: []string{"OrphanVolume Node/n1"}},
			},
		},
		{
			name: "an orphan the Manager refuses to trash (mounted) stays counted and is retried", volumes: []string{"a", "b"}, busy: []string{"n1/default/b"},
			rounds: []round{
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantOrphans: 1, wantEvents: []string{"OrphanVolume Node/n1"}},
				{at: 4 * time.Hour, pvs: []corev1.PersistentVolume{pv("a")}, wantOrphans: 1, wantEvents: []string{"OrphanVolume Node/n1"}},
			},
		},
		{
			name: "a Bound PV whose volume is not here: Event on its claim after the grace", volumes: []string{"a"},
			rounds: []round{
				{at: 2 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("gone"), pv("gone2", released), pv("gone3", deleting), pv("x/default/elsewhere"), pv("n1/nopool/gone4")}},
				{at: 3*time.Hour - time.Second, pvs: []corev1.PersistentVolume{pv("a"), pv("gone"), pv("gone2", released), pv("gone3", deleting), pv("x/default/elsewhere"), pv("n1/nopool/gone4")}},
				{at: 3 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("gone"), pv("gone2", released), pv("gone3", deleting), pv("x/default/elsewhere"), pv("n1/nopool/gone4")},
					wantMissing: 1, wantEvents: []string{"VolumeMissing PersistentVolumeClaim/db/data-gone", "VolumeMissing PersistentVolumeClaim/db/data-n1/nopool/gone4"}},
				{at: 4 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("gone"), pv("gone2", released), pv("gone3", deleting), pv("x/default/elsewhere"), pv("n1/nopool/gone4")},
					wantMissing: 1, wantEvents: []string{"VolumeMissing PersistentVolumeClaim/db/data-gone", "VolumeMissing PersistentVolumeClaim/db/data-n1/nopool/gone4"}},
				// Released at last: no longer counted.
				{at: 5 * time.Hour, pvs: []corev1.PersistentVolume{pv("a"), pv("gone", released)},
					wantEvents: []string{"VolumeMissing PersistentVolumeClaim/db/data-gone", "VolumeMissing PersistentVolumeClaim/db/data-n1/nopool/gone4"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mgr, dir := newManager(t, tt.volumes...)
			busy := map[string]bool{}
			for _, id := range tt.busy {
				busy[id] = true
			}
			api := &pager{}
			ev := &recorder{}
			var now time.Time
			c := New(Config{NodeID: nodeID, Pools: []string{"default"}, Volumes: refusing{mgr, busy}, API: api, Events: ev,
				Grace: grace, Period: time.Minute, Trash: !tt.noTrash, Now: func() time.Time { return now }})
			reg := prometheus.NewPedanticRegistry()
			if err := reg.Register(c); err != nil {
				t.Fatal(err)
			}
			for i, r := range tt.rounds {
				now = t0.Add(tt.clock + r.at)
				api.mu.Lock()
				api.pvs, api.failPage, api.failAll = r.pvs, r.failPage, r.failAll
				api.mu.Unlock()
				c.Check(context.Background())
				if got := trashed(t, dir); !slices.Equal(got, r.wantTrash) {
					t.Errorf("round %d: trash %v, want %v", i, got, r.wantTrash)
				}
				if got := ev.list(); !slices.Equal(got, r.wantEvents) {
					t.Errorf("round %d: events %v, want %v", i, got, r.wantEvents)
				}
				for _, m := range []struct {
					name string
					want float64
				}{
					{"dhpp_orphan_volumes", r.wantOrphans},
					{"dhpp_missing_volumes", r.wantMissing},
					{"dhpp_orphan_volumes_trashed_total", r.wantTrashed},
					{"dhpp_pv_list_failures_total", r.wantFailures},
				} {
					if got := gather(t, reg, m.name); got != m.want {
						t.Errorf("round %d: %s = %v, want %v", i, m.name, got, m.want)
					}
				}
			}
			// Nothing trashed is gone: each trashed volume's directory
			// is whole in the trash, and every other volume still lives.
			for _, v := range tt.volumes {
				inTrash := slices.Contains(trashed(t, dir), v)
				_, err := mgr.GetVolume(nodeID + "/default/" + v)
				if inTrash == (err == nil) {
					t.Errorf("volume %s: in trash %v, live: %v", v, inTrash, err)
				}
			}
		})
	}
}

// gather sums a metric's samples in reg.
func gather(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestListPages: the listing asks the API server's cache (resourceVersion
// "0") for pages of at most pageSize, and continued pages carry only the
// token, as the API server requires.
func TestListPages(t *testing.T) {
	api := &pager{pvs: []corev1.PersistentVolume{pv("a"), pv("b"), pv("c")}}
	c := New(Config{NodeID: nodeID, API: api, Grace: grace})
	got, err := c.listPVs(context.Background())
	if err != nil || len(got) != 3 {
		t.Fatalf("listed %d, %v", len(got), err)
	}
	want := []metav1.ListOptions{
		{ResourceVersion: "0", Limit: pageSize},
		{Limit: pageSize, Continue: "page-1"},
		{Limit: pageSize, Continue: "page-2"},
	}
	if !slices.Equal(api.calls, want) {
		t.Errorf("calls %+v, want %+v", api.calls, want)
	}
}

// TestCheckFakeClientset runs a check through kubetest.FakeAPI (client-go's
// fake clientset behind kube.API) with the Event message contents: the
// orphan's Event names the volume, its claim and how to get it back.
func TestCheckFakeClientset(t *testing.T) {
	mgr, dir := newManager(t, "a", "b")
	keep := pv("a")
	cs := fake.NewClientset(&keep)
	ev := &recorder{}
	var now time.Time
	c := New(Config{NodeID: nodeID, Pools: []string{"default"}, Volumes: mgr, API: kubetest.FakeAPI{C: cs}, Events: ev,
		Grace: grace, Period: time.Minute, Trash: true, Now: func() time.Time { return now }})
	for _, at := range []time.Duration{2 * time.Hour, 3 * time.Hour} {
		now = t0.Add(at)
		c.Check(context.Background())
	}
	if got := trashed(t, dir); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("trash %v, want [b]", got)
	}
	if len(ev.evs) != 1 {
		t.Fatalf("events %v", ev.list())
	}
	for _, part := range []string{"volume n1/default/b", `pool "default"`, "for claim db/data-b", "PV pv-b", "no PersistentVolume for 1h0m0s",
		".dhpp/trash/b@", "move it back to volumes/b"} {
		if !strings.Contains(ev.evs[0].msg, part) {
			t.Errorf("message %q lacks %q", ev.evs[0].msg, part)
		}
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP dhpp_orphan_volumes_trashed_total Orphaned volumes moved to the pool's trash.
# TYPE dhpp_orphan_volumes_trashed_total counter
dhpp_orphan_volumes_trashed_total{pool="default"} 1
`), "dhpp_orphan_volumes_trashed_total"); err != nil {
		t.Error(err)
	}
}
