package v1alpha1

import (
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// full is a DhppPool with every field set, so its JSON has every key.
func full() *DhppPool {
	now := metav1.NewTime(time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC))
	return &DhppPool{
		ObjectMeta: metav1.ObjectMeta{Name: Name("n1", "default")},
		Spec: DhppPoolSpec{Node: "n1", Pool: "default", Fence: &Fence{Reason: "disk swap", RequestedAt: now},
			Restores: []RestoreRequest{{Entry: "e@1", Claim: "ns/c", PV: "pv", RequestedAt: now}}},
		Status: DhppPoolStatus{Path: "/p", Backend: "btrfs", SizeEnforced: true, Missing: "m", Mount: &Mount{Point: "/mnt", Propagation: PropagationShared},
			CapacityBytes: 1, ProvisionedBytes: 1, UsedBytes: 1, FreeBytes: 1, AvailableBytes: 1,
			Capacity: "1", Provisioned: "1", Used: "1", Free: "1", Available: "1", Volumes: 1, QuarantinedVolumes: 1,
			Health: Health{State: "Fenced", Reason: "manual", Message: "m", Manual: true, Since: now, ProbeLatency: "2ms", ProbeLatencyMicros: 2000},
			RAID:   RAID{Degraded: true, Detail: "d"},
			Trash: Trash{Entries: 1, Bytes: 1, Size: "1", Items: []TrashEntry{{Entry: "e@1", Kind: TrashKindVolume, VolumeID: "v", PV: "pv", Namespace: "ns",
				Claim: "c", VolumeSnapshot: "vs", SnapshotContent: "vsc", SnapshotID: "n1/default/s", SourceVolumeID: "n1/default/v",
				SizeBytes: 1, DeletedAt: now, PurgeAt: now}}},
			Restores: []RestoreResult{{Entry: "e@1", RequestedAt: now, Phase: RestoreRestored, Message: "m", VolumeHandle: "n1/default/pv",
				CapacityBytes: 1, AccessType: "mount", VolumeContext: map[string]string{"k": "v"}}},
			DriverVersion: "v", UpdatedAt: now},
	}
}

// crd reads the CRD the deploy/ manifests install.
func crd(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("../../../../deploy/kustomize/base/crd-dhpppool.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func dig(m any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			mm, _ := m.(map[string]any)
			m = mm[k]
		case int:
			l, _ := m.([]any)
			if k >= len(l) {
				return nil
			}
			m = l[k]
		}
	}
	return m
}

// TestCRDMatchesTypes keeps deploy/'s schema and printer columns in step
// with the Go types: a field the driver writes but the schema lacks would
// be pruned by the API server, silently.
func TestCRDMatchesTypes(t *testing.T) {
	c := crd(t)
	if g, k, p := dig(c, "spec", "group"), dig(c, "spec", "names", "kind"), dig(c, "spec", "names", "plural"); g != Group || k != Kind || p != Resource {
		t.Fatalf("CRD names %v %v %v, want %s %s %s", g, k, p, Group, Kind, Resource)
	}
	if v := dig(c, "spec", "versions", 0, "name"); v != Version {
		t.Fatalf("CRD version %v, want %s", v, Version)
	}
	u, err := ToUnstructured(full())
	if err != nil {
		t.Fatal(err)
	}
	schema := dig(c, "spec", "versions", 0, "schema", "openAPIV3Schema")
	var missing, extra []string
	compare("", u.Object["spec"], dig(schema, "properties", "spec"), &missing, &extra)
	compare("", u.Object["status"], dig(schema, "properties", "status"), &missing, &extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("schema lacks %v; schema has fields the types lack %v", missing, extra)
	}
	cols, _ := dig(c, "spec", "versions", 0, "additionalPrinterColumns").([]any)
	if len(cols) < 14 {
		t.Errorf("%d printer columns, want at least 14", len(cols))
	}
	for _, col := range cols {
		jp, _ := dig(col, "jsonPath").(string)
		var path []any
		for _, p := range strings.Split(strings.TrimPrefix(jp, "."), ".") {
			path = append(path, p)
		}
		if dig(u.Object, path...) == nil {
			t.Errorf("printer column %v: %s names no field of a full object", dig(col, "name"), jp)
		}
	}
}

// compare walks an object's JSON and the schema's properties together.
func compare(prefix string, obj, schema any, missing, extra *[]string) {
	props, _ := dig(schema, "properties").(map[string]any)
	if dig(schema, "additionalProperties") != nil {
		return // a map with free keys (volumeContext)
	}
	switch o := obj.(type) {
	case map[string]any:
		for k, v := range o {
			if _, ok := props[k]; !ok {
				*missing = append(*missing, prefix+k)
				continue
			}
			compare(prefix+k+".", v, props[k], missing, extra)
		}
		for k := range props {
			if _, ok := o[k]; !ok {
				*extra = append(*extra, prefix+k)
			}
		}
	case []any:
		if len(o) > 0 {
			compare(prefix+"[].", o[0], dig(schema, "items"), missing, extra)
		}
	}
	sort.Strings(*missing)
	sort.Strings(*extra)
}

func TestName(t *testing.T) {
	long := strings.Repeat("n", 250)
	cases := []struct {
		node, pool string
		want       string
	}{
		{"worker-1", "default", "worker-1.default"},
		{"w.example.com", "fast", "w.example.com.fast"},
	}
	for _, c := range cases {
		if got := Name(c.node, c.pool); got != c.want {
			t.Errorf("Name(%q, %q) = %q, want %q", c.node, c.pool, got, c.want)
		}
	}
	a, b := Name(long, "a"), Name(long, "b")
	if len(a) > 253 || a == b {
		t.Errorf("long names: %d chars, distinct %v", len(a), a != b)
	}
}

func TestRoundTrip(t *testing.T) {
	in := full()
	u, err := ToUnstructured(in)
	if err != nil {
		t.Fatal(err)
	}
	if u.GetAPIVersion() != "dhpp.io/v1alpha1" || u.GetKind() != Kind {
		t.Errorf("apiVersion/kind %s %s", u.GetAPIVersion(), u.GetKind())
	}
	out, err := FromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	if out.Spec.Fence.Reason != "disk swap" || out.Status.Trash.Items[0].Claim != "c" || out.Status.Health.ProbeLatencyMicros != 2000 ||
		out.Spec.Restores[0].Claim != "ns/c" || out.Status.Restores[0].VolumeContext["k"] != "v" {
		t.Errorf("round trip lost fields: %+v", out)
	}
}
