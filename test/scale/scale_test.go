package scale

import (
	"strings"
	"testing"

	"github.com/dhpp-io/dhpp/test/e2e/bench"
)

const apiMetrics = `# HELP apiserver_watch_events_total [ALPHA] Number of events sent in watch clients
# TYPE apiserver_watch_events_total counter
apiserver_watch_events_total{group="",kind="PersistentVolumeClaim",version="v1"} 1200
apiserver_watch_events_total{group="",kind="PersistentVolume",version="v1"} 300
# HELP apiserver_watch_events_sizes [ALPHA] Watch event size distribution in bytes
# TYPE apiserver_watch_events_sizes histogram
apiserver_watch_events_sizes_bucket{group="",kind="PersistentVolumeClaim",version="v1",le="1024"} 100
apiserver_watch_events_sizes_bucket{group="",kind="PersistentVolumeClaim",version="v1",le="+Inf"} 1200
apiserver_watch_events_sizes_sum{group="",kind="PersistentVolumeClaim",version="v1"} 1.5e+06
apiserver_watch_events_sizes_count{group="",kind="PersistentVolumeClaim",version="v1"} 1200
apiserver_watch_events_total{group="storage.k8s.io",resource="csistoragecapacities",version="v1"} 7
# HELP apiserver_longrunning_requests [STABLE] Gauge of all active long-running apiserver requests
# TYPE apiserver_longrunning_requests gauge
apiserver_longrunning_requests{component="apiserver",group="",resource="persistentvolumeclaims",scope="cluster",subresource="",verb="WATCH",version="v1"} 7
apiserver_longrunning_requests{component="apiserver",group="",resource="persistentvolumeclaims",scope="namespace",subresource="",verb="WATCH",version="v1"} 2
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="namespace",subresource="exec",verb="CONNECT",version="v1"} 1
`

func TestParseWatchStats(t *testing.T) {
	got, err := ParseWatchStats(strings.NewReader(apiMetrics))
	if err != nil {
		t.Fatal(err)
	}
	if s := got["persistentvolumeclaims"]; s != (WatchStats{Events: 1200, Bytes: 1.5e6, Watchers: 9}) {
		t.Errorf("PVC stats %+v", s)
	}
	if s := got["persistentvolumes"]; s != (WatchStats{Events: 300}) {
		t.Errorf("PV stats %+v", s)
	}
	if s := got["csistoragecapacities"]; s.Events != 7 {
		t.Errorf("resource-labelled stats %+v", s)
	}
	d := WatchStats{Events: 1500, Bytes: 2e6, Watchers: 10}.Sub(got["persistentvolumeclaims"])
	if d != (WatchStats{Events: 300, Bytes: 0.5e6, Watchers: 10}) {
		t.Errorf("Sub = %+v", d)
	}
	if _, err := ParseWatchStats(strings.NewReader("not metrics {")); err == nil {
		t.Error("garbage parsed without error")
	}
}

func TestProcWindow(t *testing.T) {
	p := func(pid int, start, cpu uint64, rss int64, exe string) bench.ProcSample {
		return bench.ProcSample{PID: pid, StartTicks: start, CPUTicks: cpu, RSS: rss, Executable: exe}
	}
	first := []bench.ProcSample{p(1, 10, 100, 0, "csi-provisioner"), p(2, 10, 500, 0, "csi-provisioner"), p(3, 10, 50, 0, "csi-resizer")}
	last := []bench.ProcSample{
		p(1, 10, 110, 40<<20, "csi-provisioner"), // 10 ticks in 10 s: 10 mcores
		p(2, 10, 530, 60<<20, "csi-provisioner"), // 30 mcores
		p(3, 99, 20, 20<<20, "csi-resizer"),      // restarted: counts from 0, 20 mcores
	}
	got := procWindow(first, last, 10)
	if len(got) != 2 {
		t.Fatalf("got %+v", got)
	}
	want := []ProcStats{
		{Component: "csi-provisioner", Processes: 2, RSSMean: 50 << 20, RSSMax: 60 << 20, CPUMean: 20, CPUMax: 30},
		{Component: "csi-resizer", Processes: 1, RSSMean: 20 << 20, RSSMax: 20 << 20, CPUMean: 20, CPUMax: 20},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestPopulation(t *testing.T) {
	for _, tc := range []struct {
		p                      Population
		wantBound, wantPending int
	}{
		{Population{N: 0, PendingEvery: 10}, 0, 0},
		{Population{N: 1000, PendingEvery: 10}, 900, 100},
		{Population{N: 5, PendingEvery: 0}, 5, 0},
	} {
		b, p := tc.p.Counts()
		if b != tc.wantBound || p != tc.wantPending {
			t.Errorf("%+v: %d bound %d pending, want %d %d", tc.p, b, p, tc.wantBound, tc.wantPending)
		}
	}
	if c := claim(3, true); c.Spec.VolumeName != pvName(3) || c.Namespace != Namespace || c.Labels[LabelKey] != LabelValue {
		t.Errorf("bound claim %+v", c.ObjectMeta)
	}
	if v := volume(3); v.Spec.ClaimRef.Name != pvcName(3) || v.Spec.CSI.Driver != OtherDriver || v.Spec.StorageClassName != StorageClass {
		t.Errorf("volume %+v", v.Spec)
	}
}

func TestNodeOfCgroup(t *testing.T) {
	for _, tc := range []struct{ cgroup, want string }{
		{"12:memory:/dhpp-node-2/kubepods/burstable/pod1234/abcd\n11:cpu,cpuacct:/dhpp-node-2/kubepods/burstable/pod1234/abcd\n", "dhpp-node-2"},
		{"0::/dhpp-node-10/kubepods/pod1/c\n", "dhpp-node-10"},
		{"12:memory:/user.slice/user-0.slice/session-3.scope\n0::/user.slice\n", ""},
		{"", ""},
	} {
		if got := nodeOfCgroup(tc.cgroup); got != tc.want {
			t.Errorf("nodeOfCgroup(%q) = %q, want %q", tc.cgroup, got, tc.want)
		}
	}
}
