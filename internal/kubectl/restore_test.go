package kubectl

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
)

const oldEntry = "pvc-old@1764403200000000000"

// fakeNode plays the node's driver (answers spec.restores with answer,
// taking a restored entry out of the trash) and the PV controller (binds
// pre-bound claims) until the test ends.
func fakeNode(t *testing.T, env Env, dyn *dynfake.FakeDynamicClient, kc *fake.Clientset, answer func(v1.RestoreRequest) v1.RestoreResult) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			if answer != nil {
				answerRestores(ctx, env, dyn, answer)
			}
			claims, _ := kc.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
			for _, c := range claims.Items {
				if c.Spec.VolumeName != "" && c.Status.Phase != corev1.ClaimBound {
					c.Status.Phase = corev1.ClaimBound
					_, _ = kc.CoreV1().PersistentVolumeClaims(c.Namespace).UpdateStatus(ctx, &c, metav1.UpdateOptions{})
				}
			}
		}
	}()
}

func answerRestores(ctx context.Context, env Env, dyn *dynfake.FakeDynamicClient, answer func(v1.RestoreRequest) v1.RestoreResult) {
	p, err := getPool(ctx, env, "n1", "default")
	if err != nil {
		return
	}
	var results []v1.RestoreResult
	changed := false
	for _, req := range p.Spec.Restores {
		if r, ok := findResult(p.Status.Restores, req); ok {
			results = append(results, r)
			continue
		}
		r := answer(req)
		r.Entry, r.RequestedAt = req.Entry, req.RequestedAt
		if r.Phase == v1.RestoreRestored {
			p.Status.Trash = v1.Trash{}
		}
		results = append(results, r)
		changed = true
	}
	if !changed && len(results) == len(p.Status.Restores) {
		return
	}
	p.Status.Restores = results
	u, _ := v1.ToUnstructured(p)
	_, _ = dyn.Resource(v1.GroupVersionResource).UpdateStatus(ctx, u, metav1.UpdateOptions{})
}

func findResult(rs []v1.RestoreResult, req v1.RestoreRequest) (v1.RestoreResult, bool) {
	for _, r := range rs {
		if r.Entry == req.Entry && r.RequestedAt.Equal(&req.RequestedAt) {
			return r, true
		}
	}
	return v1.RestoreResult{}, false
}

func restoredOK(req v1.RestoreRequest) v1.RestoreResult {
	return v1.RestoreResult{Phase: v1.RestoreRestored, VolumeHandle: "n1/default/pvc-old", CapacityBytes: gib, AccessType: "mount",
		VolumeContext: map[string]string{dhpp.ContextPool: "default", dhpp.ContextBackend: "btrfs"}}
}

// TestRestore: the request reaches the pool's spec, the PV is made as
// csi-provisioner would (handle, context, node affinity, Delete,
// provisioned-by, pre-bound), the claim is made bound to it, the request
// is cleared; run again, it says it is done.
func TestRestore(t *testing.T) {
	env, out, dyn, kc := healthyCluster().env(t)
	ctx := context.Background()
	var asked []v1.RestoreRequest
	fakeNode(t, env, dyn, kc, func(req v1.RestoreRequest) v1.RestoreResult { asked = append(asked, req); return restoredOK(req) })

	if err := Run(ctx, env, []string{"restore", oldEntry}, Options{To: "db/data-db-2", Timeout: 10 * time.Second}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if len(asked) != 1 || asked[0].Claim != "db/data-db-2" || asked[0].PV != "pvc-old" || !asked[0].RequestedAt.Time.Equal(now) {
		t.Fatalf("requests the node saw: %+v", asked)
	}
	pv, err := kc.CoreV1().PersistentVolumes().Get(ctx, "pvc-old", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	term := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0]
	size := pv.Spec.Capacity[corev1.ResourceStorage]
	switch {
	case pv.Spec.CSI.Driver != dhpp.DriverName || pv.Spec.CSI.VolumeHandle != "n1/default/pvc-old" || pv.Spec.CSI.VolumeAttributes[dhpp.ContextBackend] != "btrfs":
		t.Errorf("PV csi source %+v", pv.Spec.CSI)
	case term.Key != dhpp.TopologyKey || term.Values[0] != "n1":
		t.Errorf("PV node affinity %+v", term)
	case pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.Annotations[annProvisionedBy] != dhpp.DriverName:
		t.Errorf("PV would not be deleted with its claim: policy %s, annotations %v", pv.Spec.PersistentVolumeReclaimPolicy, pv.Annotations)
	case pv.Spec.StorageClassName != "dhpp" || size.Value() != gib || *pv.Spec.VolumeMode != corev1.PersistentVolumeFilesystem:
		t.Errorf("PV class %q size %s mode %v", pv.Spec.StorageClassName, size.String(), *pv.Spec.VolumeMode)
	case pv.Spec.ClaimRef.Namespace != "db" || pv.Spec.ClaimRef.Name != "data-db-2":
		t.Errorf("PV claimRef %+v", pv.Spec.ClaimRef)
	}
	c, err := kc.CoreV1().PersistentVolumeClaims("db").Get(ctx, "data-db-2", metav1.GetOptions{})
	if err != nil || c.Spec.VolumeName != "pvc-old" || *c.Spec.StorageClassName != "dhpp" || c.Spec.AccessModes[0] != corev1.ReadWriteOnce {
		t.Fatalf("claim %+v, %v", c, err)
	}
	if p := getPoolT(t, env, "n1", "default"); len(p.Spec.Restores) != 0 {
		t.Errorf("request left in spec: %+v", p.Spec.Restores)
	}
	want := "restored " + oldEntry + " (node n1, pool default) as PV pvc-old bound to claim db/data-db-2: 1Gi, btrfs, with the data it had when it was deleted.\n"
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}

	out.Reset()
	if err := Run(ctx, env, []string{"restore", oldEntry}, Options{To: "db/data-db-2", Timeout: 10 * time.Second}); err != nil {
		t.Fatalf("restore again: %v", err)
	}
	if !strings.Contains(out.String(), "was restored already: claim db/data-db-2 is bound to PV pvc-old") || len(asked) != 1 {
		t.Errorf("second run: %q, node asked %d times", out, len(asked))
	}
}

// TestRestoreRefusals: each refusal is an error (exit code 1) that says
// what to do, and no PV is made.
func TestRestoreRefusals(t *testing.T) {
	bound := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-db-0", Namespace: "db"},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pvc-a"}, Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	big := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "big", Namespace: "db"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("5Gi")}}}}
	cases := []struct {
		name   string
		args   []string
		to     string
		setup  func(c *cluster)
		answer func(v1.RestoreRequest) v1.RestoreResult
		want   []string
	}{
		{name: "no --to", args: []string{oldEntry}, want: []string{"--to NAMESPACE/CLAIM is required"}},
		{name: "purged", args: []string{"pvc-gone@1764403200000000000"}, to: "db/x", answer: restoredOK,
			want: []string{"in no pool's trash: it was purged", "kubectl dhpp trash"}},
		{name: "claim bound to another volume", args: []string{oldEntry}, to: "db/data-db-0", answer: restoredOK,
			setup: func(c *cluster) { c.objects = append(c.objects, bound) },
			want:  []string{"claim db/data-db-0 exists and is bound to PV pvc-a", "--to db/NEW-NAME", "or delete claim db/data-db-0 first"}},
		{name: "pending claim wants more", args: []string{oldEntry}, to: "db/big", answer: restoredOK,
			setup: func(c *cluster) { c.objects = append(c.objects, big) },
			want:  []string{"claim db/big is Pending and asks for 5Gi, more than the volume's 1Gi"}},
		{name: "fenced pool", args: []string{oldEntry}, to: "db/x", answer: restoredOK,
			setup: func(c *cluster) {
				c.pools[0].Status.Health = v1.Health{State: "Fenced", Reason: "manual", Manual: true, Message: "replacing sdb"}
			},
			want: []string{"pool default on node n1 is fenced (replacing sdb)", "kubectl dhpp unfence n1 default"}},
		{name: "driver refuses", args: []string{oldEntry}, to: "db/x",
			answer: func(v1.RestoreRequest) v1.RestoreResult {
				return v1.RestoreResult{Phase: v1.RestoreFailed, Message: `not found: trash entry "pvc-old@1764403200000000000" is not in pool "default" on node "n1": it was purged`}
			},
			want: []string{"the driver on node n1 refused to restore " + oldEntry, "it was purged"}},
		{name: "driver silent", args: []string{oldEntry}, to: "db/x",
			want: []string{"did not answer within 700ms", "kubectl dhpp doctor"}},
		{name: "class ambiguous", args: []string{oldEntry}, to: "db/x", answer: restoredOK,
			setup: func(c *cluster) {
				c.objects = append(c.objects, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "dhpp-2"}, Provisioner: dhpp.DriverName})
			},
			want: []string{"dhpp's: dhpp, dhpp-2", "--storage-class"}},
		{name: "two entries", args: []string{"pvc-old@1764403200000000000", "more"}, to: "db/x", want: []string{"usage: kubectl dhpp restore ENTRY --to"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := healthyCluster()
			if tc.setup != nil {
				tc.setup(c)
			}
			env, _, dyn, kc := c.env(t)
			fakeNode(t, env, dyn, kc, tc.answer)
			err := Run(context.Background(), env, append([]string{"restore"}, tc.args...), Options{To: tc.to, Timeout: 700 * time.Millisecond})
			if err == nil {
				t.Fatal("restore succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if pvs, _ := kc.CoreV1().PersistentVolumes().List(context.Background(), metav1.ListOptions{}); len(pvs.Items) != 4 {
				t.Errorf("%d PVs after a refusal, want the fixture's 4", len(pvs.Items))
			}
			if p := getPoolT(t, env, "n1", "default"); tc.name != "driver silent" && len(p.Spec.Restores) != 0 {
				t.Errorf("request left in spec after a refusal: %+v", p.Spec.Restores)
			}
		})
	}
}
