package scale

import (
	"testing"
	"time"
)

func TestQuiet(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(sec int, n int64) countAt { return countAt{at: t0.Add(time.Duration(sec) * time.Second), n: n} }
	for _, tc := range []struct {
		name    string
		samples []countAt
		want    bool
	}{
		{"no samples", nil, false},
		{"shorter than the span", []countAt{at(0, 0), at(5, 0), at(9, 0)}, false},
		{"silent for the span", []countAt{at(0, 100), at(5, 100), at(10, 100)}, true},
		{"background events within the limit", []countAt{at(0, 100), at(10, 103)}, true},
		{"one event over the limit", []countAt{at(0, 100), at(10, 104)}, false},
		{"churn before the span does not count", []countAt{at(0, 0), at(3, 5000), at(8, 9000), at(18, 9002)}, true},
		{"churn inside the span counts", []countAt{at(0, 0), at(8, 9000), at(15, 9500), at(18, 9502)}, false},
		{"the newest sample at least a span old decides", []countAt{at(0, 0), at(2, 50), at(12, 52)}, true},
	} {
		if got := quiet(tc.samples, 10*time.Second, 3); got != tc.want {
			t.Errorf("%s: quiet = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLeaseRates(t *testing.T) {
	k := func(comp, node, verb, res string) ReqKey {
		return ReqKey{Component: comp, Node: node, Verb: verb, Resource: res}
	}
	for _, tc := range []struct {
		name   string
		counts map[ReqKey]int
		want   LeaseRates
	}{
		{"nothing", map[ReqKey]int{}, LeaseRates{}},
		{"one leader, three pollers", map[ReqKey]int{
			k("csi-resizer", "n1", "get", "leases"):    30,
			k("csi-resizer", "n1", "update", "leases"): 30,
			k("csi-resizer", "n2", "get", "leases"):    20,
			k("csi-resizer", "n3", "get", "leases"):    18,
			k("csi-resizer", "n4", "get", "leases"):    22,
			// Not Lease requests, or not this component's: ignored.
			k("csi-resizer", "n2", "list", "persistentvolumeclaims"): 5,
			k("dhpp-controller", "n5", "update", "leases"):           99,
		}, LeaseRates{Leaders: 1, Others: 3, LeaderPerSec: 0.1, OtherGetPerSec: 20.0 / 600}},
		{"leadership moved: both count as leaders", map[ReqKey]int{
			k("csi-resizer", "n1", "get", "leases"):    12,
			k("csi-resizer", "n1", "update", "leases"): 6,
			k("csi-resizer", "n2", "get", "leases"):    12,
			k("csi-resizer", "n2", "update", "leases"): 6,
		}, LeaseRates{Leaders: 2, LeaderPerSec: 0.03}},
	} {
		got := leaseRates(tc.counts, "csi-resizer", 600)
		if got.Leaders != tc.want.Leaders || got.Others != tc.want.Others ||
			!near(got.LeaderPerSec, tc.want.LeaderPerSec) || !near(got.OtherGetPerSec, tc.want.OtherGetPerSec) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
