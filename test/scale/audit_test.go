package scale

import (
	"strings"
	"testing"
	"time"
)

func TestComponent(t *testing.T) {
	for _, tc := range []struct{ ua, want string }{
		{"csi-provisioner/v0.0.0 (linux/amd64) kubernetes/$Format", "csi-provisioner"},
		{"dhpp-driver/v0.1.0 (linux/amd64)", "dhpp-driver"},
		{"kubectl", "kubectl"},
		{"Go-http-client/2.0", "Go-http-client"},
		{"", "(none)"},
	} {
		if got := component(tc.ua); got != tc.want {
			t.Errorf("component(%q) = %q, want %q", tc.ua, got, tc.want)
		}
	}
}

// Lines as the apiserver writes them (Metadata level, trimmed to the fields
// the count reads plus a few it ignores).
const auditLog = `{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a","stage":"ResponseComplete","requestURI":"/api/v1/persistentvolumeclaims?limit=500","verb":"list","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node","extra":{"authentication.kubernetes.io/node-name":["dhpp-node-1"]}},"sourceIPs":["10.244.1.5"],"userAgent":"csi-provisioner/v0.0.0 (linux/amd64) kubernetes/$Format","objectRef":{"resource":"persistentvolumeclaims","apiVersion":"v1"},"responseStatus":{"code":200},"requestReceivedTimestamp":"2026-11-29T12:00:10.000000Z","stageTimestamp":"2026-11-29T12:00:10.100000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"b","stage":"ResponseStarted","verb":"watch","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node","extra":{"authentication.kubernetes.io/node-name":["dhpp-node-1"]}},"sourceIPs":["10.244.1.5"],"userAgent":"csi-provisioner/v0.0.0","objectRef":{"resource":"persistentvolumeclaims"},"requestReceivedTimestamp":"2026-11-29T12:00:11.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"b","stage":"ResponseComplete","verb":"watch","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node","extra":{"authentication.kubernetes.io/node-name":["dhpp-node-1"]}},"sourceIPs":["10.244.1.5"],"userAgent":"csi-provisioner/v0.0.0","objectRef":{"resource":"persistentvolumeclaims"},"requestReceivedTimestamp":"2026-11-29T12:00:11.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"c","stage":"ResponseComplete","verb":"get","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node"},"sourceIPs":["10.244.2.7"],"userAgent":"csi-resizer/v0.0.0","objectRef":{"resource":"leases","namespace":"dhpp-system","name":"external-resizer-hostpath-dhpp-io"},"requestReceivedTimestamp":"2026-11-29T12:00:12.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"d","stage":"ResponseComplete","verb":"get","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node"},"sourceIPs":["10.244.3.7"],"userAgent":"csi-resizer/v0.0.0","objectRef":{"resource":"leases"},"requestReceivedTimestamp":"2026-11-29T12:00:13.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"e","stage":"ResponseComplete","verb":"get","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node"},"sourceIPs":["10.244.3.7"],"userAgent":"csi-resizer/v0.0.0","objectRef":{"resource":"leases"},"requestReceivedTimestamp":"2026-11-29T12:00:14.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"h","stage":"ResponseComplete","requestURI":"/api/v1/persistentvolumes?limit=500\u0026resourceVersion=0","verb":"list","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node","extra":{"authentication.kubernetes.io/node-name":["dhpp-node-2"]}},"userAgent":"dhpp-driver/v0.1.0","objectRef":{"resource":"persistentvolumes"},"requestReceivedTimestamp":"2026-11-29T12:00:15.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"i","stage":"ResponseComplete","requestURI":"/api/v1/persistentvolumes?continue=eyJ2IjoibWV0YSJ9\u0026limit=500","verb":"list","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node","extra":{"authentication.kubernetes.io/node-name":["dhpp-node-2"]}},"userAgent":"dhpp-driver/v0.1.0","objectRef":{"resource":"persistentvolumes"},"requestReceivedTimestamp":"2026-11-29T12:00:15.100000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"j","stage":"ResponseComplete","requestURI":"/api/v1/persistentvolumes?continue=eyJ2IjoibWV0YTIifQ\u0026limit=500","verb":"list","user":{"username":"system:serviceaccount:dhpp-system:dhpp-node","extra":{"authentication.kubernetes.io/node-name":["dhpp-node-2"]}},"userAgent":"dhpp-driver/v0.1.0","objectRef":{"resource":"persistentvolumes"},"requestReceivedTimestamp":"2026-11-29T12:00:15.200000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"f","stage":"ResponseComplete","verb":"update","user":{"username":"x"},"userAgent":"csi-resizer/v0.0.0","objectRef":{"resource":"persistentvolumeclaims","subresource":"status"},"requestReceivedTimestamp":"2026-11-29T12:00:30.000000Z"}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"g","stage":"ResponseComplete","verb":"get","user":{"username":"x"},"userAgent":"kubectl","requestReceivedTimestamp":"2026-11-29T12:00:09.999000Z"}
{"kind":"Event","apiVersion":"audit.k8s.
`

func TestCountRequests(t *testing.T) {
	from := time.Date(2026, 11, 29, 12, 0, 10, 0, time.UTC)
	to := from.Add(20 * time.Second) // excludes f (12:00:30) and g (before)
	counts, bad, err := CountRequests(strings.NewReader(auditLog), from, to)
	if err != nil {
		t.Fatal(err)
	}
	if bad != 1 {
		t.Errorf("skipped %d lines, want 1 (the torn last line)", bad)
	}
	want := map[ReqKey]int{
		{Component: "csi-provisioner", Node: "dhpp-node-1", Verb: "list", Resource: "persistentvolumeclaims"}:  1,
		{Component: "csi-provisioner", Node: "dhpp-node-1", Verb: "watch", Resource: "persistentvolumeclaims"}: 1, // once, not per stage
		{Component: "csi-resizer", Node: "10.244.2.7", Verb: "get", Resource: "leases"}:                        1,
		{Component: "csi-resizer", Node: "10.244.3.7", Verb: "get", Resource: "leases"}:                        2,
		// A paged listing: its first page, then the pages that continue it.
		{Component: "dhpp-driver", Node: "dhpp-node-2", Verb: "list", Resource: "persistentvolumes"}:             1,
		{Component: "dhpp-driver", Node: "dhpp-node-2", Verb: "list", Resource: "persistentvolumes" + NextPages}: 2,
	}
	if len(counts) != len(want) {
		t.Errorf("got %d keys %v, want %d", len(counts), counts, len(want))
	}
	for k, n := range want {
		if counts[k] != n {
			t.Errorf("%+v: %d, want %d", k, counts[k], n)
		}
	}

	rows := ByComponent(counts)
	if len(rows) != 3 || rows[0].Component != "csi-provisioner" || rows[1].Component != "csi-resizer" || rows[2].Component != "dhpp-driver" {
		t.Fatalf("rows %+v", rows)
	}
	if r := rows[1]; r.Nodes != 2 || r.Total != 3 || r.PerNodeMax != 2 || r.ByVerb["get leases"] != 3 {
		t.Errorf("resizer row %+v", r)
	}
	if got, want := TopVerbs(rows[0].ByVerb, 1), "list persistentvolumeclaims ×1"; got != want {
		t.Errorf("TopVerbs = %q, want %q", got, want)
	}
}
