package app

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/kube/kubetest"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/poolstatus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
)

// TestPoolStatusPublished runs the whole driver with fake API servers and
// checks the DhppPool it publishes: owned by the Node, with the pool's
// volumes and trash, and that spec.fence fences the pool through the
// health monitor (CreateVolume refused, Node labelled as for any fence).
func TestPoolStatusPublished(t *testing.T) {
	kc, dyn, cfg := poolStatusSetup(t)
	d := startDriverHooks(t, cfg, hooks{kubeClient: kubetest.FakeAPI{C: kc}, dynamicClient: dyn, poolStatusPeriod: 50 * time.Millisecond})
	ctx := context.Background()
	pool := func() *v1.DhppPool {
		u, err := dyn.Resource(v1.GroupVersionResource).Get(ctx, "n1.default", metav1.GetOptions{})
		if err != nil {
			return nil
		}
		p, err := v1.FromUnstructured(u)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	if _, err := d.create("pvc-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.create("pvc-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "n1/default/pvc-2"}); err != nil {
		t.Fatal(err)
	}
	testdisk.WaitFor(t, "the pool's object with 1 volume and 1 trash entry", func() bool {
		p := pool()
		return p != nil && p.Status.Volumes == 1 && p.Status.Trash.Entries == 1
	})
	p := pool()
	if or := p.OwnerReferences; len(or) != 1 || or[0].Kind != "Node" || or[0].UID != "uid-n1" {
		t.Errorf("owner references %+v, want Node n1", or)
	}
	e := p.Status.Trash.Items[0]
	if !strings.HasPrefix(e.Entry, "pvc-2@") || e.VolumeID != "n1/default/pvc-2" || e.SizeBytes != 32<<20 ||
		e.PurgeAt.Sub(e.DeletedAt.Time) != time.Hour {
		t.Errorf("trash entry %+v", e)
	}
	if p.Status.Health.State != "Healthy" || p.Status.SizeEnforced || p.Status.Backend != "dir" || p.Status.CapacityBytes <= 0 {
		t.Errorf("status %+v", p.Status)
	}
	// The pool's mount, from this process's real mount table.
	if m := p.Status.Mount; m == nil || !strings.HasPrefix(cfg.Pools[0].Path, m.Point) || m.Propagation == "" {
		t.Errorf("status.mount %+v, want the mount holding %s", m, cfg.Pools[0].Path)
	}

	// spec.fence: the pool is fenced as by hand, with the operator's reason.
	p.Spec.Fence = &v1.Fence{Reason: "replacing sdb"}
	u, err := v1.ToUnstructured(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(v1.GroupVersionResource).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testdisk.WaitFor(t, "the pool fenced and published so", func() bool {
		p := pool()
		return p.Status.Health.State == "Fenced" && strings.Contains(p.Status.Health.Message, "replacing sdb")
	})
	_, err = d.create("pvc-3")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "replacing sdb") {
		t.Errorf("CreateVolume on the fenced pool: %v, want ResourceExhausted naming the reason", err)
	}
	testdisk.WaitFor(t, "the Node labelled fenced", func() bool {
		n, err := kc.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		return err == nil && n.Labels[kube.PoolLabelPrefix+"default"] == kube.PoolLabelFenced
	})
}

// TestPoolStatusFollowsChanges: the publisher is wired to the Manager's
// change signal, so with a period of an hour a created volume and then its
// delete into the trash still show within seconds (poolstatus's 2 s
// coalescing window, plus the informer and a round's work).
func TestPoolStatusFollowsChanges(t *testing.T) {
	kc, dyn, cfg := poolStatusSetup(t)
	d := startDriverHooks(t, cfg, hooks{kubeClient: kubetest.FakeAPI{C: kc}, dynamicClient: dyn, poolStatusPeriod: time.Hour})
	ctx := context.Background()
	status := func() v1.DhppPoolStatus {
		u, err := dyn.Resource(v1.GroupVersionResource).Get(ctx, "n1.default", metav1.GetOptions{})
		if err != nil {
			return v1.DhppPoolStatus{}
		}
		p, err := v1.FromUnstructured(u)
		if err != nil {
			t.Fatal(err)
		}
		return p.Status
	}
	testdisk.WaitFor(t, "the pool's first status", func() bool { s := status(); return !s.UpdatedAt.IsZero() })

	start := time.Now()
	if _, err := d.create("pvc-1"); err != nil {
		t.Fatal(err)
	}
	testdisk.WaitFor(t, "the created volume in status", func() bool { return status().Volumes == 1 })
	created := time.Since(start)
	start = time.Now()
	if _, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "n1/default/pvc-1"}); err != nil {
		t.Fatal(err)
	}
	testdisk.WaitFor(t, "the deleted volume in status.trash", func() bool {
		s := status()
		return s.Volumes == 0 && s.Trash.Entries == 1
	})
	deleted := time.Since(start)
	t.Logf("status showed the create after %s, the delete after %s (period 1h)", created.Round(time.Millisecond), deleted.Round(time.Millisecond))
	if limit := 2*poolstatus.DefaultMinInterval + time.Second; created > limit || deleted > limit {
		t.Errorf("status followed the create in %s and the delete in %s, want each within %s", created, deleted, limit)
	}
}

// poolStatusSetup is what the DhppPool tests drive the driver with: fake
// API servers holding node n1 and the DhppPool kind, and a config with one
// dir pool.
func poolStatusSetup(t *testing.T) (*fake.Clientset, *dynfake.FakeDynamicClient, Config) {
	t.Helper()
	kc := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-n1"}})
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{v1.GroupVersionResource: v1.Kind + "List"})
	cfg := Config{
		Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"), NodeID: "n1", TrashRetention: time.Hour,
		Pools:             []node.PoolConfig{{Name: "default", Path: t.TempDir(), Backend: node.BackendDir}},
		DefaultVolumeSize: 64 << 20, MetricsAddress: "127.0.0.1:0", Health: health.DefaultConfig(),
	}
	return kc, dyn, cfg
}
