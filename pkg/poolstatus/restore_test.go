package poolstatus

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// setRestores writes spec.restores as `kubectl dhpp restore` does.
func setRestores(t *testing.T, p *Publisher, reqs ...v1.RestoreRequest) {
	t.Helper()
	client := p.cfg.Client
	u, err := client.Resource(v1.GroupVersionResource).Get(context.Background(), "node-a.default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj, _ := v1.FromUnstructured(u)
	obj.Spec.Restores = reqs
	u, _ = v1.ToUnstructured(obj)
	if _, err := client.Resource(v1.GroupVersionResource).Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestSpecRestoresAreAnswered: each request is carried out once and its
// result published (with what the PV needs); a refusal is published with
// the reason; a newer request for the same entry is carried out again; a
// fenced pool restores nothing; a request taken away drops its result.
func TestSpecRestoresAreAnswered(t *testing.T) {
	client, h, p, _ := newFake(t)
	ctx := context.Background()
	var calls []string
	p.cfg.Restore = func(_ context.Context, pool string, req v1.RestoreRequest) (*node.Volume, error) {
		calls = append(calls, pool+"/"+req.Entry+" for "+req.Claim)
		if req.Entry == "pvc-gone@1" {
			return nil, fmt.Errorf("%w: trash entry %q is not in pool %q: it was purged", node.ErrNotFound, req.Entry, pool)
		}
		return &node.Volume{ID: "node-a/default/pvc-a", Name: "pvc-a", Pool: pool, Backend: node.BackendBtrfs,
			CapacityBytes: gib, AccessType: node.AccessMount}, nil
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	t1 := metav1.NewTime(since)
	setRestores(t, p, v1.RestoreRequest{Entry: "pvc-a@1", Claim: "db/data", RequestedAt: t1},
		v1.RestoreRequest{Entry: "pvc-gone@1", Claim: "db/other", RequestedAt: t1},
		v1.RestoreRequest{Entry: "snapshot:snap-1@1", Claim: "db/snap", RequestedAt: t1})
	sync := func() []v1.RestoreResult {
		t.Helper()
		feedCache(t, client, p)
		if err := p.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		return get(t, client, "node-a.default").Status.Restores
	}
	for range 2 { // the second round answers from the status, calling nothing
		got := sync()
		if len(got) != 3 {
			t.Fatalf("status.restores = %+v, want 3 results", got)
		}
		if r := got[0]; r.Phase != v1.RestoreRestored || r.VolumeHandle != "node-a/default/pvc-a" || r.CapacityBytes != gib ||
			r.AccessType != "mount" || r.VolumeContext[dhpp.ContextPool] != "default" || r.VolumeContext[dhpp.ContextBackend] != "btrfs" {
			t.Errorf("result of a restore = %+v", r)
		}
		if r := got[1]; r.Phase != v1.RestoreFailed || r.Message == "" || r.VolumeHandle != "" {
			t.Errorf("result of a refused restore = %+v", r)
		}
		if r := got[2]; r.Phase != v1.RestoreFailed || !strings.Contains(r.Message, "is a deleted snapshot, not a volume") {
			t.Errorf("result of a snapshot entry's restore = %+v, want refused as a snapshot", r)
		}
	}
	if len(calls) != 2 {
		t.Fatalf("restores carried out %q, want each volume's once and no snapshot's", calls)
	}

	// A retry (newer requestedAt) while the pool is fenced: refused
	// without asking the node.
	h.set("default", health.Status{Pool: "default", State: health.Fenced, Reason: health.ReasonManual, Manual: true, LastError: "disk swap", Since: since})
	t2 := metav1.NewTime(since.Add(time.Minute))
	setRestores(t, p, v1.RestoreRequest{Entry: "pvc-gone@1", Claim: "db/other", RequestedAt: t2})
	got := sync()
	if len(got) != 1 || got[0].Phase != v1.RestoreFailed || !strings.Contains(got[0].Message, "fenced") || !strings.Contains(got[0].Message, "kubectl dhpp unfence node-a default") {
		t.Fatalf("restore into a fenced pool: %+v", got)
	}
	if len(calls) != 2 {
		t.Errorf("a fenced pool's restore reached the node: %q", calls)
	}
	setRestores(t, p)
	if got := sync(); len(got) != 0 {
		t.Errorf("results after the requests were removed: %+v", got)
	}
}
