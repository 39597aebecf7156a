package raid

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/driver"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// fakeFinder stands in for Finder: the test sets what the next
// reading returns per pool path.
type fakeFinder struct {
	mu     sync.Mutex
	arrays map[string][]Array
	err    error
}

func (f *fakeFinder) set(path string, arrays []Array, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.arrays[path], f.err = arrays, err
}

func (f *fakeFinder) find(path string) ([]Array, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return f.arrays[path], nil
}

func raid10(degraded int, action string, states ...string) []Array {
	a := Array{Name: "md0", Level: "raid10", State: "clean", RaidDisks: 4, Degraded: degraded, SyncAction: action}
	for i, s := range states {
		a.Members = append(a.Members, ArrayMember{Name: "vd" + string(rune('a'+i)), State: s})
	}
	return []Array{a}
}

// TestArrayHealthThroughDriver drives the array watcher through a member's
// failure, removal, rebuild and recovery, and checks at each step what the
// real driver reports: a degraded pool keeps taking volumes and keeps its
// capacity, its volumes are DEGRADED (reason ArrayDegraded) but not
// abnormal in the legacy condition, its storage is STORAGE_DEGRADED; a
// pool on plain disks next to it is untouched. Fenced and degraded
// together: INACCESSIBLE first, abnormal.
func TestArrayHealthThroughDriver(t *testing.T) {
	ctx := context.Background()
	raidPath, plainPath := t.TempDir(), t.TempDir()
	mgr, err := node.New(node.Config{NodeID: "n1", DefaultSize: 1 << 20, Pools: []node.PoolConfig{
		{Name: "raid", Path: raidPath, Backend: node.BackendDir},
		{Name: "plain", Path: plainPath, Backend: node.BackendDir},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mgr.Close)
	mon, err := health.NewMonitor(health.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range mgr.Pools() {
		if err := mon.AddPool(p.Name, filepath.Join(p.Path, filepath.FromSlash(node.HealthFile))); err != nil {
			t.Fatal(err)
		}
	}
	ff := &fakeFinder{arrays: map[string][]Array{}}
	w := NewWatcher(watched(mgr), time.Hour, ff.find)
	drv, err := driver.New(driver.Config{Manager: mgr, Health: mon, Degradation: w})
	if err != nil {
		t.Fatal(err)
	}
	vols := map[string]string{}
	for _, pool := range []string{"raid", "plain"} {
		r, err := drv.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-" + pool, VolumeCapabilities: mountCapability,
			Parameters: map[string]string{"pool": pool}})
		if err != nil {
			t.Fatal(err)
		}
		vols[pool] = r.GetVolume().GetVolumeId()
	}

	tests := []struct {
		name         string
		arrays       []Array
		readErr      error
		fence        bool
		wantDegraded bool
		wantMsg      string // in the degradation reason
		wantLog      string // "" if this step logs nothing
	}{
		{name: "optimal", arrays: raid10(0, "idle", "in_sync", "in_sync", "in_sync", "in_sync"), wantLog: "RAID arrays under the pool"},
		{name: "unchanged", arrays: raid10(0, "idle", "in_sync", "in_sync", "in_sync", "in_sync")},
		{name: "member failed", arrays: raid10(1, "idle", "in_sync", "faulty", "in_sync", "in_sync"), wantDegraded: true, wantMsg: "1 missing, faulty: vdb", wantLog: "is degraded"},
		{name: "sysfs unreadable keeps the last state", readErr: errors.New("read /sys/block/md0/md/level: no such device"), wantDegraded: true, wantMsg: "faulty: vdb", wantLog: "Cannot read the RAID state"},
		{name: "member removed", arrays: raid10(1, "idle", "in_sync", "in_sync", "in_sync"), wantDegraded: true, wantMsg: "1 missing; array_state clean, sync_action idle", wantLog: "is degraded"},
		{name: "fenced and degraded", arrays: raid10(1, "idle", "in_sync", "in_sync", "in_sync"), fence: true, wantDegraded: true, wantMsg: "1 missing"},
		{name: "rebuilding", arrays: raid10(1, "recover", "in_sync", "spare", "in_sync", "in_sync"), wantDegraded: true, wantMsg: "sync_action recover", wantLog: "is degraded"},
		{name: "rebuilt", arrays: raid10(0, "idle", "in_sync", "in_sync", "in_sync", "in_sync"), wantLog: "no longer degraded"},
	}
	var prev arrayState
	seen := false
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ff.set(raidPath, tt.arrays, tt.readErr)
			if tt.fence {
				if err := mon.Fence("raid", "fenced for the test"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = mon.Unfence("raid") })
			}
			w.Check()
			w.mu.RLock()
			cur := w.state["raid"]
			w.mu.RUnlock()
			if msg, _ := arrayChange(prev, cur, seen); !strings.Contains(msg, tt.wantLog) || (tt.wantLog == "") != (msg == "") {
				t.Errorf("log message %q, want one containing %q", msg, tt.wantLog)
			}
			prev, seen = cur, true

			degraded, why := w.PoolDegraded("raid")
			if degraded != tt.wantDegraded || !strings.Contains(why, tt.wantMsg) {
				t.Fatalf("PoolDegraded = %v, %q; want %v, %q", degraded, why, tt.wantDegraded, tt.wantMsg)
			}
			if d, _ := w.PoolDegraded("plain"); d {
				t.Fatal("the plain pool is reported degraded")
			}
			checkVolume(t, drv, vols["raid"], tt.fence, tt.wantDegraded, tt.wantMsg)
			checkVolume(t, drv, vols["plain"], false, false, "")

			// A degraded pool still takes volumes and offers capacity.
			if !tt.fence {
				if _, err := drv.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-" + strings.ReplaceAll(tt.name, " ", "-"),
					VolumeCapabilities: mountCapability, Parameters: map[string]string{"pool": "raid"}}); err != nil {
					t.Errorf("CreateVolume in the raid pool: %v", err)
				}
				c, err := drv.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": "raid"}})
				if err != nil || c.GetAvailableCapacity() <= 0 {
					t.Errorf("GetCapacity of the raid pool = %v, %v; want > 0", c.GetAvailableCapacity(), err)
				}
			}

			sh, err := drv.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, b := range sh.GetBackendHealth() {
				got = append(got, b.GetStatus().String()+"/"+b.GetReason())
				if !strings.Contains(b.GetMessage(), `pool "raid"`) {
					t.Errorf("storage health %v is not about pool raid", b)
				}
			}
			var want []string
			if tt.fence {
				want = append(want, "STORAGE_UNREACHABLE/PoolFenced")
			}
			if tt.wantDegraded {
				want = append(want, "STORAGE_DEGRADED/ArrayDegraded")
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("NodeGetStorageHealth = %v, want %v", got, want)
			}

			lh, err := drv.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
			if err != nil {
				t.Fatal(err)
			}
			listed := map[string]bool{}
			for _, e := range lh.GetEntries() {
				listed[e.GetVolumeId()] = true
			}
			if listed[vols["raid"]] != (tt.wantDegraded || tt.fence) || listed[vols["plain"]] {
				t.Errorf("ControllerListVolumeHealth lists %v", listed)
			}
		})
	}
}

// checkVolume checks one volume's health in the CSI 1.13 RPCs and in the
// legacy condition of ControllerGetVolume and NodeGetVolumeStats.
func checkVolume(t *testing.T, drv *driver.Driver, id string, fenced, degraded bool, msg string) {
	t.Helper()
	ctx := context.Background()
	var want []string
	if fenced {
		want = append(want, "INACCESSIBLE/PoolFenced")
	}
	if degraded {
		want = append(want, "DEGRADED/ArrayDegraded")
	}
	ch, err := drv.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	nh, err := drv.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	for rpc, h := range map[string]*csi.VolumeHealth{"ControllerGetVolumeHealth": ch.GetVolumeHealth(), "NodeGetVolumeHealth": nh.GetVolumeHealth()} {
		var got []string
		for _, e := range h.GetHealthStatuses() {
			got = append(got, e.GetStatus().String()+"/"+e.GetReason())
			if e.GetStatus() == csi.VolumeHealthErrorType_DEGRADED && !strings.Contains(e.GetMessage(), msg) {
				t.Errorf("%s(%s): DEGRADED message %q lacks %q", rpc, id, e.GetMessage(), msg)
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s(%s) = %v, want %v", rpc, id, got, want)
		}
	}
	gv, err := drv.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	// Not published: a dir volume is found at its (empty) staging directory.
	staging := t.TempDir()
	st, err := drv.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: staging, StagingTargetPath: staging})
	if err != nil {
		t.Fatal(err)
	}
	abnormal, cmsg := testdisk.LegacyCondition(t, gv.GetStatus())
	nAbnormal, nmsg := testdisk.LegacyCondition(t, st)
	if abnormal != nAbnormal || cmsg != nmsg {
		t.Errorf("ControllerGetVolume condition (%v, %q) differs from NodeGetVolumeStats' (%v, %q)", abnormal, cmsg, nAbnormal, nmsg)
	}
	switch {
	case fenced:
		if !abnormal || !strings.HasPrefix(cmsg, "PoolFenced: ") {
			t.Errorf("legacy condition (%v, %q), want abnormal PoolFenced", abnormal, cmsg)
		}
	case degraded:
		// The legacy field has no "degraded": usable, so not abnormal,
		// but the message says why redundancy is reduced.
		if abnormal || !strings.Contains(cmsg, "redundancy reduced: ArrayDegraded: ") || !strings.Contains(cmsg, msg) {
			t.Errorf("legacy condition (%v, %q), want not abnormal naming %q", abnormal, cmsg, msg)
		}
	default:
		if abnormal || cmsg != "volume is healthy" {
			t.Errorf("legacy condition (%v, %q), want healthy", abnormal, cmsg)
		}
	}
}

// withState returns a copy of arrays with array_state set to state.
func withState(arrays []Array, state string) []Array {
	out := append([]Array(nil), arrays...)
	for i := range out {
		out[i].State = state
	}
	return out
}

func TestArrayChange(t *testing.T) {
	optimal := arrayState{arrays: raid10(0, "idle", "in_sync", "in_sync")}
	failed := arrayState{arrays: raid10(1, "idle", "in_sync", "faulty")}
	tests := []struct {
		name      string
		old, n    arrayState
		seen      bool
		want      string
		wantError bool
	}{
		{name: "first reading, plain disk", n: arrayState{}, want: ""},
		{name: "first reading, optimal", n: optimal, want: "RAID arrays under the pool"},
		{name: "first reading, degraded", n: failed, want: "is degraded", wantError: true},
		{name: "no change", old: failed, n: failed, seen: true, want: ""},
		{name: "clean to active after writes", old: optimal, n: arrayState{arrays: withState(optimal.arrays, "active")}, seen: true, want: ""},
		{name: "to read-only", old: optimal, n: arrayState{arrays: withState(optimal.arrays, "readonly")}, seen: true, want: "RAID arrays under the pool"},
		{name: "fails", old: optimal, n: failed, seen: true, want: "is degraded", wantError: true},
		{name: "recovers", old: failed, n: optimal, seen: true, want: "no longer degraded"},
		{name: "read error", old: failed, n: arrayState{arrays: failed.arrays, err: "boom"}, seen: true, want: "Cannot read", wantError: true},
		{name: "same read error again", old: arrayState{err: "boom"}, n: arrayState{err: "boom"}, seen: true, want: ""},
		{name: "readable again, unchanged", old: arrayState{arrays: failed.arrays, err: "boom"}, n: failed, seen: true, want: "is degraded", wantError: true},
		{name: "array gone", old: optimal, n: arrayState{}, seen: true, want: "no longer on an md array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, isErr := arrayChange(tt.old, tt.n, tt.seen)
			if (tt.want == "") != (msg == "") || !strings.Contains(msg, tt.want) || isErr != tt.wantError {
				t.Fatalf("arrayChange = %q, error %v; want %q, error %v", msg, isErr, tt.want, tt.wantError)
			}
		})
	}
}

// watched lists mgr's pools for NewWatcher.
func watched(mgr *node.Manager) []Pool {
	var pools []Pool
	for _, p := range mgr.Pools() {
		pools = append(pools, Pool{Name: p.Name, Path: p.Path})
	}
	return pools
}

// newWatchedPool is an array watcher with the given period over one dir
// pool "p" at path, whose arrays the test sets through ff.
func newWatchedPool(t *testing.T, period time.Duration) (ff *fakeFinder, w *Watcher, path string) {
	t.Helper()
	ff = &fakeFinder{arrays: map[string][]Array{}}
	mgr, err := node.New(node.Config{NodeID: "n1", Pools: []node.PoolConfig{{Name: "p", Path: t.TempDir(), Backend: node.BackendDir}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mgr.Close)
	return ff, NewWatcher(watched(mgr), period, ff.find), mgr.Pools()[0].Path
}

// TestArrayWatcherRun: Run re-reads each period and stops with its context.
func TestArrayWatcherRun(t *testing.T) {
	ff, w, path := newWatchedPool(t, 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	ff.set(path, raid10(1, "idle", "in_sync", "faulty"), nil)
	testdisk.WaitFor(t, "the watcher to see the degradation", func() bool { d, _ := w.PoolDegraded("p"); return d })
	if pa := w.PoolArrays(); len(pa) != 1 || pa[0].Pool != "p" || len(pa[0].Arrays) != 1 {
		t.Errorf("PoolArrays = %+v", pa)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestArrayWatcherDegradationNotices walks a RAID10 under a pool through
// a disk failure, a second failure, a rebuild with progress and recovery,
// and checks what the Node Event callback hears at each reading: changes
// in redundancy only, never rebuild progress or read errors.
func TestArrayWatcherDegradationNotices(t *testing.T) {
	ff, w, path := newWatchedPool(t, time.Hour)

	// Degraded before the callback is registered (a driver restart): it
	// hears of it at registration.
	ff.set(path, raid10(1, "idle", "in_sync", "faulty", "in_sync", "in_sync"), nil)
	w.Check()
	var got []string
	w.OnDegradation(func(pool string, degraded bool, detail string) {
		got = append(got, fmt.Sprintf("%s degraded=%t %s", pool, degraded, detail))
	})
	if len(got) != 1 || !strings.HasPrefix(got[0], "p degraded=true md0") || !strings.Contains(got[0], "faulty: vdb") {
		t.Fatalf("at registration: %q, want one degraded notice naming vdb", got)
	}

	steps := []struct {
		name    string
		arrays  []Array
		readErr error
		want    string // substring of the one expected notice; "" for none
	}{
		{name: "unchanged", arrays: raid10(1, "idle", "in_sync", "faulty", "in_sync", "in_sync")},
		{name: "array_state flips to active", arrays: withState(raid10(1, "idle", "in_sync", "faulty", "in_sync", "in_sync"), "active")},
		{name: "sysfs unreadable", readErr: errors.New("boom")},
		{name: "a second disk fails", arrays: raid10(2, "idle", "in_sync", "faulty", "faulty", "in_sync"), want: "degraded=true md0 (raid10, 4 devices): degraded, 2 missing, faulty: vdb vdc"},
		{name: "faulty disks removed, replacements rebuilding", arrays: raid10(2, "recover", "in_sync", "spare", "spare", "in_sync")},
		{name: "rebuild continues", arrays: withState(raid10(2, "recover", "in_sync", "spare", "spare", "in_sync"), "active")},
		{name: "one slot rebuilt", arrays: raid10(1, "recover", "in_sync", "in_sync", "spare", "in_sync"), want: "degraded=true md0 (raid10, 4 devices): degraded, 1 missing;"},
		{name: "rebuilt", arrays: raid10(0, "idle", "in_sync", "in_sync", "in_sync", "in_sync"), want: "degraded=false md0 (raid10, 4 devices): optimal"},
		{name: "still optimal", arrays: raid10(0, "idle", "in_sync", "in_sync", "in_sync", "in_sync")},
	}
	for _, st := range steps {
		got = nil
		ff.set(path, st.arrays, st.readErr)
		w.Check()
		switch {
		case st.want == "" && len(got) != 0:
			t.Errorf("%s: notices %q, want none", st.name, got)
		case st.want != "" && (len(got) != 1 || !strings.Contains(got[0], st.want)):
			t.Errorf("%s: notices %q, want one containing %q", st.name, got, st.want)
		}
	}
}

var mountCapability = []*csi.VolumeCapability{{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}}
