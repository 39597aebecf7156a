package poolstatus

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
	mount "k8s.io/mount-utils"
)

// fakeHealth is a health monitor whose states the test sets.
type fakeHealth struct {
	mu     sync.Mutex
	states map[string]health.Status
	fenced []string
	cbs    []func(old, new health.Status)
}

func (h *fakeHealth) Status(pool string) (health.Status, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.states[pool]
	return s, ok
}

func (h *fakeHealth) Fence(pool, msg string) error {
	h.mu.Lock()
	old := h.states[pool]
	n := old
	n.State, n.Reason, n.LastError, n.Manual = health.Fenced, health.ReasonManual, msg, true
	h.states[pool] = n
	h.fenced = append(h.fenced, pool+": "+msg)
	cbs := h.cbs
	h.mu.Unlock()
	for _, cb := range cbs {
		cb(old, n)
	}
	return nil
}

func (h *fakeHealth) OnChange(f func(old, new health.Status)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cbs = append(h.cbs, f)
}

func (h *fakeHealth) set(pool string, s health.Status) {
	h.mu.Lock()
	old := h.states[pool]
	h.states[pool] = s
	cbs := h.cbs
	h.mu.Unlock()
	for _, cb := range cbs {
		cb(old, s)
	}
}

const gib = 1 << 30

var since = time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)

func newFake(t *testing.T) (*dynfake.FakeDynamicClient, *fakeHealth, *Publisher, *time.Time) {
	t.Helper()
	client := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schemaGVR]string{v1.GroupVersionResource: v1.Kind + "List"})
	h := &fakeHealth{states: map[string]health.Status{
		"default": {Pool: "default", State: health.Healthy, Since: since, LastDuration: 2340 * time.Microsecond},
	}}
	now := since.Add(time.Hour)
	p, err := New(Config{
		Client:   client,
		NodeName: "node-a",
		NodeUID:  func(context.Context) (string, error) { return "uid-a", nil },
		Pools: func() []PoolInfo {
			return []PoolInfo{{Name: "default", Path: "/var/lib/dhpp/default", Backend: "btrfs", Volumes: 3,
				Capacity: node.Capacity{Total: 10 * gib, Free: 6 * gib, Provisioned: 3 * gib, Available: 5 * gib}}}
		},
		Health:     h,
		MountTable: func() ([]mount.MountInfo, error) { return fakeMounts(mountinfo.Shared), nil },
		Version:    "v-test",
		Now:        func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	p.uid = "uid-a"
	return client, h, p, &now
}

// fakeMounts is a driver's mount table: the root, and the data disk at
// /var/lib/dhpp with the given propagation.
func fakeMounts(propagation string) []mount.MountInfo {
	fields := map[string][]string{mountinfo.Shared: {"shared:5"}, mountinfo.Slave: {"master:5"}, mountinfo.Private: nil}[propagation]
	return []mount.MountInfo{
		{ID: 22, MountPoint: "/", Root: "/", OptionalFields: []string{"shared:1"}},
		{ID: 30, ParentID: 22, MountPoint: "/var/lib/dhpp", Root: "/", OptionalFields: fields},
	}
}

func writes(c *dynfake.FakeDynamicClient) []string {
	var out []string
	for _, a := range c.Actions() {
		if a.GetVerb() == "create" || a.GetVerb() == "update" {
			out = append(out, a.GetVerb()+"/"+a.GetSubresource())
		}
	}
	return out
}

func get(t *testing.T, c *dynfake.FakeDynamicClient, name string) *v1.DhppPool {
	t.Helper()
	u, err := c.Resource(v1.GroupVersionResource).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := v1.FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSyncCreatesObjectOwnedByNode(t *testing.T) {
	client, _, p, _ := newFake(t)
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	obj := get(t, client, "node-a.default")
	if obj.Labels[v1.LabelNode] != "node-a" || obj.Labels[v1.LabelPool] != "default" {
		t.Errorf("labels = %v", obj.Labels)
	}
	if len(obj.OwnerReferences) != 1 || obj.OwnerReferences[0].Kind != "Node" || obj.OwnerReferences[0].UID != "uid-a" {
		t.Errorf("owner references = %+v, want the Node node-a uid-a", obj.OwnerReferences)
	}
	st := obj.Status
	checks := []struct{ name, got, want string }{
		{"backend", st.Backend, "btrfs"},
		{"capacity", st.Capacity, "10Gi"},
		{"used", st.Used, "4Gi"},
		{"free", st.Free, "6Gi"},
		{"available", st.Available, "5Gi"},
		{"provisioned", st.Provisioned, "3Gi"},
		{"state", st.Health.State, "Healthy"},
		{"latency", st.Health.ProbeLatency, "2ms"},
		{"version", st.DriverVersion, "v-test"},
		{"mount", fmt.Sprintf("%+v", st.Mount), "&{Point:/var/lib/dhpp Propagation:shared}"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if !st.SizeEnforced || st.Volumes != 3 || st.UsedBytes != 4*gib {
		t.Errorf("enforced %v volumes %d used %d", st.SizeEnforced, st.Volumes, st.UsedBytes)
	}
}

func TestSyncWritesOnlyOnChangeOrRefresh(t *testing.T) {
	client, h, p, now := newFake(t)
	ctx := context.Background()
	steps := []struct {
		name   string
		change func()
		want   []string // writes by this step
	}{
		{"first round creates and writes the status", func() {}, []string{"create/", "update/status"}},
		{"nothing changed: no write", func() { *now = now.Add(30 * time.Second) }, nil},
		{"probe latency 2.4ms rounds as 2.3ms did: no write", func() {
			s, _ := h.Status("default")
			s.LastDuration = 2400 * time.Microsecond
			h.set("default", s)
		}, nil},
		{"probe latency 2ms -> 9ms, within 10x: no write", func() {
			s, _ := h.Status("default")
			s.LastDuration = 9 * time.Millisecond
			h.set("default", s)
		}, nil},
		{"probe latency 2ms -> 300ms, 10x or more: written", func() {
			s, _ := h.Status("default")
			s.LastDuration = 300 * time.Millisecond
			h.set("default", s)
		}, []string{"update/status"}},
		{"probe latency back to 2ms: written", func() {
			s, _ := h.Status("default")
			s.LastDuration = 2 * time.Millisecond
			h.set("default", s)
		}, []string{"update/status"}},
		{"fenced: written", func() {
			h.set("default", health.Status{Pool: "default", State: health.Fenced, Reason: health.ReasonIOError, LastError: "EIO", Since: since, LastDuration: 2 * time.Millisecond})
		}, []string{"update/status"}},
		{"refresh age reached: written though unchanged", func() { *now = now.Add(DefaultRefresh) }, []string{"update/status"}},
		{"data disk made private: written", func() {
			p.cfg.MountTable = func() ([]mount.MountInfo, error) { return fakeMounts(mountinfo.Private), nil }
		}, []string{"update/status"}},
		{"mount table unreadable: no mount published, written", func() {
			p.cfg.MountTable = func() ([]mount.MountInfo, error) { return nil, errors.New("EACCES") }
		}, []string{"update/status"}},
	}
	for _, s := range steps {
		before := len(writes(client))
		s.change()
		feedCache(t, client, p)
		if err := p.Sync(ctx); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got := writes(client)[before:]
		if strings.Join(got, ",") != strings.Join(s.want, ",") {
			t.Errorf("%s: writes %v, want %v", s.name, got, s.want)
		}
	}
	published := get(t, client, "node-a.default").Status
	if published.Mount != nil {
		t.Errorf("mount %+v published from an unreadable mount table, want none", published.Mount)
	}
	if st := published.Health; st.State != "Fenced" || st.Reason != "io_error" || st.Message != "EIO" {
		t.Errorf("health = %+v", st)
	}
	if published.AvailableBytes != 0 || published.Available != "0" {
		t.Errorf("a fenced pool publishes available %d %q, want 0 as GetCapacity says", published.AvailableBytes, published.Available)
	}
}

func TestSpecFenceFencesThePool(t *testing.T) {
	client, h, p, _ := newFake(t)
	ctx := context.Background()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	obj := get(t, client, "node-a.default")
	obj.Spec.Fence = &v1.Fence{Reason: "replace disk sdb"}
	u, _ := v1.ToUnstructured(obj)
	if _, err := client.Resource(v1.GroupVersionResource).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second round must not fence again
		feedCache(t, client, p)
		if err := p.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"default: " + FenceMessagePrefix + "replace disk sdb"}; strings.Join(h.fenced, "|") != strings.Join(want, "|") {
		t.Errorf("fenced %q, want %q", h.fenced, want)
	}
	if st := get(t, client, "node-a.default").Status.Health; st.State != "Fenced" || !st.Manual {
		t.Errorf("published health = %+v, want Fenced by hand", st)
	}

	// A stale cache that still shows the fence after an unfence cleared it
	// must not fence again: the live object is read first.
	obj = get(t, client, "node-a.default")
	obj.Spec.Fence = nil
	u2, _ := v1.ToUnstructured(obj)
	if _, err := client.Resource(v1.GroupVersionResource).Update(ctx, u2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.set("default", health.Status{Pool: "default", State: health.Healthy, Since: since})
	if err := p.applyFence(ctx, mustFrom(t, u)); err != nil {
		t.Fatal(err)
	}
	if len(h.fenced) != 1 {
		t.Errorf("fenced again from a stale cache: %q", h.fenced)
	}
}

func mustFrom(t *testing.T, u interface {
	UnstructuredContent() map[string]any
}) *v1.DhppPool {
	t.Helper()
	p := &v1.DhppPool{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.UnstructuredContent(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunPublishesHealthChangeAtOnce(t *testing.T) {
	client, h, p, _ := newFake(t)
	p.cfg.Period = time.Hour // only the health change can cause the second write
	p.cfg.MinInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, func() bool { return len(writes(client)) >= 2 })
	h.set("default", health.Status{Pool: "default", State: health.Failing, Reason: health.ReasonTimeout, LastError: "slow", Since: since})
	waitFor(t, func() bool {
		u, err := client.Resource(v1.GroupVersionResource).Get(ctx, "node-a.default", metav1.GetOptions{})
		if err != nil {
			return false
		}
		s, _, _ := unstructuredString(u.Object, "status", "health", "state")
		return s == "Failing"
	})
}

// feedCache does what the informer does when Run runs it: the tests that
// call Sync directly fill its cache from the fake API server first.
func feedCache(t *testing.T, c *dynfake.FakeDynamicClient, p *Publisher) {
	t.Helper()
	l, err := c.Resource(v1.GroupVersionResource).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	items := make([]any, len(l.Items))
	for i := range l.Items {
		items[i] = &l.Items[i]
	}
	if err := p.inf.GetStore().Replace(items, ""); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSyncPrunesRemovedPools: the object of a pool removed from the
// driver's --pool flags goes; another node's object stays.
func TestSyncPrunesRemovedPools(t *testing.T) {
	client, _, p, _ := newFake(t)
	ctx := context.Background()
	for _, o := range []*v1.DhppPool{
		{ObjectMeta: metav1.ObjectMeta{Name: "node-a.old", Labels: map[string]string{v1.LabelNode: "node-a", v1.LabelPool: "old"}}, Spec: v1.DhppPoolSpec{Node: "node-a", Pool: "old"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "node-b.old", Labels: map[string]string{v1.LabelNode: "node-b", v1.LabelPool: "old"}}, Spec: v1.DhppPoolSpec{Node: "node-b", Pool: "old"}},
	} {
		u, _ := v1.ToUnstructured(o)
		if _, err := client.Resource(v1.GroupVersionResource).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The informer watches this node's label only; the test's cache holds
	// everything, so the label check is exercised too.
	feedCache(t, client, p)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := client.Resource(v1.GroupVersionResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range l.Items {
		names = append(names, u.GetName())
	}
	sort.Strings(names)
	if want := []string{"node-a.default", "node-b.old"}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("objects %v, want %v", names, want)
	}
}

func TestSyncReportsAPIErrors(t *testing.T) {
	client, _, p, _ := newFake(t)
	client.PrependReactor("create", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("forbidden: no RBAC")
	})
	err := p.Sync(context.Background())
	if err == nil || !strings.Contains(err.Error(), "forbidden: no RBAC") || !strings.Contains(err.Error(), `pool "default"`) {
		t.Fatalf("Sync error = %v, want the API error naming the pool", err)
	}
}

func TestBuildStatus(t *testing.T) {
	cases := []struct {
		name  string
		pi    PoolInfo
		check func(t *testing.T, st v1.DhppPoolStatus)
	}{
		{"dir backend does not enforce sizes", PoolInfo{Name: "p", Backend: "dir"}, func(t *testing.T, st v1.DhppPoolStatus) {
			if st.SizeEnforced {
				t.Error("dir enforced")
			}
		}},
		{"missing pool says why and has no figures", PoolInfo{Name: "p", Backend: "xfs", Missing: errors.New("pool directory /d missing"),
			Capacity: node.Capacity{Total: gib}}, func(t *testing.T, st v1.DhppPoolStatus) {
			if st.Missing == "" || st.CapacityBytes != 0 {
				t.Errorf("missing %q capacity %d", st.Missing, st.CapacityBytes)
			}
		}},
		{"bytes round down to MiB", PoolInfo{Name: "p", Backend: "xfs", Capacity: node.Capacity{Total: gib + 12345, Free: 5*(1<<20) + 7}}, func(t *testing.T, st v1.DhppPoolStatus) {
			if st.CapacityBytes != gib || st.FreeBytes != 5<<20 || st.UsedBytes != gib-5<<20 {
				t.Errorf("capacity %d free %d used %d", st.CapacityBytes, st.FreeBytes, st.UsedBytes)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.check(t, buildStatus(c.pi, health.Status{State: health.Healthy}, false, "", v1.Trash{}, ""))
		})
	}
}

func TestMountOf(t *testing.T) {
	cases := []struct {
		path, propagation string
		want              string
	}{
		{"/var/lib/dhpp/default", mountinfo.Shared, "&{Point:/var/lib/dhpp Propagation:shared}"},
		{"/var/lib/dhpp/default/", mountinfo.Slave, "&{Point:/var/lib/dhpp Propagation:slave}"},
		{"/var/lib/dhpp", mountinfo.Private, "&{Point:/var/lib/dhpp Propagation:private}"},
		{"/var/lib/dhppx", mountinfo.Private, "&{Point:/ Propagation:shared}"}, // not below the disk's mount
	}
	for _, c := range cases {
		if got := fmt.Sprintf("%+v", MountOf(fakeMounts(c.propagation), c.path)); got != c.want {
			t.Errorf("MountOf(%s, %s) = %s, want %s", c.path, c.propagation, got, c.want)
		}
	}
	if got := MountOf(nil, "/var/lib/dhpp/default"); got != nil {
		t.Errorf("MountOf of an empty table = %+v, want nil", got)
	}
}

func TestFormatting(t *testing.T) {
	bytes := []struct {
		in   int64
		want string
	}{{0, "0"}, {1023, "1023"}, {1024, "1Ki"}, {10 * gib, "10Gi"}, {gib + gib/2, "1.5Gi"}, {977 * gib / 100, "9.77Gi"}, {123 * gib, "123Gi"}, {1 << 40, "1Ti"}}
	for _, b := range bytes {
		if got := Bytes(b.in); got != b.want {
			t.Errorf("Bytes(%d) = %q, want %q", b.in, got, b.want)
		}
	}
	durations := []struct{ in, want time.Duration }{
		{2340 * time.Microsecond, 2 * time.Millisecond}, {870 * time.Microsecond, 900 * time.Microsecond},
		{15 * time.Millisecond, 20 * time.Millisecond}, {time.Second, time.Second}, {0, 0},
	}
	for _, d := range durations {
		if got := oneDigit(d.in); got != d.want {
			t.Errorf("oneDigit(%v) = %v, want %v", d.in, got, d.want)
		}
	}
}

func TestTrashOf(t *testing.T) {
	old, recent := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC), time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)
	labelled := &node.Volume{ID: "n/default/pvc-1", CapacityBytes: gib,
		Labels: map[string]string{"pv": "pvc-1", "namespace": "db", "pvc": "data-db-0"}}
	many := make([]node.TrashedVolume, v1.MaxTrashItems+5)
	for i := range many {
		many[i] = node.TrashedVolume{Entry: "pvc-" + itoa(int64(i)), DeletedAt: recent, Volume: &node.Volume{CapacityBytes: mib}}
	}
	tests := []struct {
		name    string
		entries []node.TrashedVolume
		check   func(t *testing.T, got v1.Trash)
	}{
		{"empty", nil, func(t *testing.T, got v1.Trash) {
			if got.Entries != 0 || got.Bytes != 0 || got.Size != "" || len(got.Items) != 0 {
				t.Errorf("empty trash = %+v", got)
			}
		}},
		{"record and no record", []node.TrashedVolume{
			{Entry: "pvc-2@2", DeletedAt: recent},
			{Entry: "pvc-1@1", DeletedAt: old, Volume: labelled},
			{Entry: "pvc-3@0", DeletedAt: old, Volume: &node.Volume{ID: "n/default/x", CSIName: "pvc-3", CapacityBytes: mib}},
		}, func(t *testing.T, got v1.Trash) {
			if got.Entries != 3 || got.Bytes != gib+mib || len(got.Items) != 3 {
				t.Fatalf("trash = %+v, want 3 entries of 1Gi+1Mi", got)
			}
			e := got.Items[1]
			if e.Entry != "pvc-1@1" || e.Namespace != "db" || e.Claim != "data-db-0" || e.PV != "pvc-1" ||
				e.VolumeID != labelled.ID || e.SizeBytes != gib || !e.PurgeAt.Time.Equal(old.Add(15*time.Minute)) {
				t.Errorf("labelled entry %+v", e)
			}
			if got.Items[0].VolumeID != "" || got.Items[0].SizeBytes != 0 || got.Items[0].Kind != v1.TrashKindVolume {
				t.Errorf("entry without a record %+v", got.Items[0])
			}
			if got.Items[2].PV != "pvc-3" {
				t.Errorf("PV of an unlabelled record = %q, want its CSI name", got.Items[2].PV)
			}
		}},
		{"snapshots: labelled, taken without metadata, unreadable", []node.TrashedVolume{
			{Entry: "snapshot:snap-1@3", DeletedAt: recent, Snapshot: &node.Snapshot{ID: "n/default/snap-1", SourceVolumeID: "n/default/pvc-1",
				SizeBytes: 2 * gib, StoredBytes: mib, Labels: map[string]string{node.SnapshotLabelName: "nightly", node.SnapshotLabelNamespace: "db",
					node.SnapshotLabelContent: "snapcontent-1"}}},
			{Entry: "snapshot:snap-2@2", DeletedAt: recent, Snapshot: &node.Snapshot{ID: "n/default/snap-2", SourceVolumeID: "n/default/pvc-1", SizeBytes: gib}},
			{Entry: "snapshot:snap-3@1", DeletedAt: old},
			{Entry: "pvc-1@0", DeletedAt: old, Volume: labelled},
		}, func(t *testing.T, got v1.Trash) {
			if got.Entries != 4 || got.Bytes != 4*gib || len(got.Items) != 4 {
				t.Fatalf("trash = %+v, want 4 entries of 4Gi (snapshots count their source's size)", got)
			}
			want := []v1.TrashEntry{
				{Entry: "snapshot:snap-1@3", Kind: v1.TrashKindSnapshot, Namespace: "db", VolumeSnapshot: "nightly", SnapshotContent: "snapcontent-1",
					SnapshotID: "n/default/snap-1", SourceVolumeID: "n/default/pvc-1", SizeBytes: 2 * gib},
				{Entry: "snapshot:snap-2@2", Kind: v1.TrashKindSnapshot, SnapshotID: "n/default/snap-2", SourceVolumeID: "n/default/pvc-1", SizeBytes: gib},
				{Entry: "snapshot:snap-3@1", Kind: v1.TrashKindSnapshot},
				{Entry: "pvc-1@0", Kind: v1.TrashKindVolume, VolumeID: labelled.ID, PV: "pvc-1", Namespace: "db", Claim: "data-db-0", SizeBytes: gib},
			}
			for i, w := range want {
				g := got.Items[i]
				g.DeletedAt, g.PurgeAt = metav1.Time{}, metav1.Time{}
				if g != w {
					t.Errorf("item %d = %+v\nwant %+v", i, g, w)
				}
			}
		}},
		{"more than listed", many, func(t *testing.T, got v1.Trash) {
			if got.Entries != len(many) || got.Bytes != int64(len(many))*mib || len(got.Items) != v1.MaxTrashItems {
				t.Errorf("%d entries %d bytes %d items, want %d, %d, %d", got.Entries, got.Bytes, len(got.Items), len(many), int64(len(many))*mib, v1.MaxTrashItems)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.check(t, TrashOf(tt.entries, 15*time.Minute)) })
	}
}

type schemaGVR = schema.GroupVersionResource

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func unstructuredString(obj map[string]any, fields ...string) (string, bool, error) {
	return unstructured.NestedString(obj, fields...)
}
