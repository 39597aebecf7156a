package scale

import (
	"strings"
	"testing"
	"time"
)

func TestMarkdownProjection(t *testing.T) {
	rep := &Report{Started: time.Unix(0, 0), Nodes: 4, Command: "dhpp-scale", Levels: []Level{{
		Claims: 1000, PVs: 900,
		Grow: Growth{PVC: TallyValue{Events: 3000, Bytes: 3000 * 1000}, PV: TallyValue{Events: 1000, Bytes: 1000 * 1000}},
		Steady: Steady{Seconds: 100,
			Procs: []ProcStats{
				{Component: "dhpp-driver", Processes: 4, RSSMean: 30 << 20},
				{Component: "csi-provisioner", Processes: 4, RSSMean: 40 << 20},
				{Component: "csi-resizer", Processes: 4, RSSMean: 20 << 20},
				{Component: "dhpp-controller", Processes: 2, RSSMean: 500 << 20}, // not per node
			},
			Requests: []ComponentRequests{
				{Component: "csi-resizer", Nodes: 4, Total: 40, PerNodeMax: 10, ByVerb: map[string]int{"get leases": 40}}, // 0.1/s per node
				{Component: "dhpp-driver", Nodes: 4, Total: 20, PerNodeMax: 5},                                            // 0.05/s
				{Component: "dhpp-controller", Nodes: 1, Total: 1000, PerNodeMax: 1000},
			}},
	}},
		Run: RunWindow{Seconds: 500,
			Requests: []ComponentRequests{
				{Component: "csi-resizer", Nodes: 4, Total: 100, PerNodeMax: 40, ByVerb: map[string]int{"get leases": 80, "update leases": 20}},
				{Component: "kubectl", Nodes: 1, Total: 7}, // not dhpp's: left out
				{Component: "dhpp-driver", Nodes: 4, Total: 60, PerNodeMax: 15, ByVerb: map[string]int{
					"list persistentvolumes": 4, "list persistentvolumes" + NextPages: 32, "update dhpppools/status": 24}},
			},
			OrphanPeriod: 10 * time.Minute, Held: 90 * time.Second,
			Leases: map[string]LeaseRates{"csi-resizer": {Leaders: 1, Others: 3, LeaderPerSec: 0.08, OtherGetPerSec: 0.04}}},
	}
	var b strings.Builder
	Markdown(&b, rep)
	md := b.String()
	for _, want := range []string{
		"per node: 0.150 req/s, 90.0 MiB RSS mean sum; 1000 bytes per PVC/PV watch event",
		"| 100 | 15.0 | 8.8 GiB | 98 KiB/s |",
		"| 1000 | 150.0 | 87.9 GiB | 977 KiB/s |",
		"| 1000 / 900 | csi-resizer | 4 | 20.0 / 0.0 | 0.0 / 0.0 | 0.100 / 0.100 | get leases ×40 |",
		"| csi-resizer | 4 | 0.050 / 0.080 | get leases ×80, update leases ×20 |",
		"| csi-resizer | 1 | 3 | 0.080 | 0.040 |",
		// 36 pages in 4 listings: 9 per listing, every 600 s.
		"dhpp-driver orphan check (every 10m0s, +≤10 % jitter): 4 listings in the run by 4 drivers (held 1m30s after the last level), 9.0 pages (list calls) each: 0.0150 list calls/s per node at that period.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "| kubectl |") {
		t.Error("the run table lists a client that is not dhpp's")
	}
}

func TestOrphanLineWithoutListing(t *testing.T) {
	var b strings.Builder
	orphanLine(&b, RunWindow{Seconds: 300, OrphanPeriod: 10 * time.Minute, Requests: []ComponentRequests{
		{Component: "dhpp-driver", Nodes: 4, Total: 8, ByVerb: map[string]int{"update dhpppools/status": 8}}}})
	if got, want := b.String(), "no listing in the run (held 0s after the last level)"; !strings.Contains(got, want) {
		t.Errorf("orphanLine = %q, want it to say %q (not a rate of 0 or NaN)", got, want)
	}
}
