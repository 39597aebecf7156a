//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestOnlineExpansion grows a claim while its pod runs on a btrfs node: the
// claim reports the new size, the kubelet's volume stats (the driver's
// NodeGetVolumeStats) report it, and the pod can write past the old size
// but still not past the new one.
func TestOnlineExpansion(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 15*time.Minute)
	ns := e.namespace(t, "expand")
	const claim, pod = "grow", "grow"
	e.applyYAML(t, ctx, pvcYAML(ns, claim, "64Mi", false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, pod, claim, podOpts{node: btrfsNode}))
	p := e.waitPodReady(t, ctx, ns, pod, "", 3*time.Minute)
	uid := p.UID

	// The old limit holds before the expansion.
	writeLimitCheck(t, e, ctx, ns, pod, 64, 100)

	start := time.Now()
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"resources": map[string]any{"requests": map[string]string{"storage": "256Mi"}}}})
	if _, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, claim, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch claim: %v", err)
	}
	want := mustQuantity("256Mi")
	if err := poll(ctx, 3*time.Minute, time.Second, "claim capacity 256Mi", func() (bool, string, error) {
		c, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		got := c.Status.Capacity[corev1.ResourceStorage]
		var conds []string
		resizing := false
		for _, cd := range c.Status.Conditions {
			conds = append(conds, fmt.Sprintf("%s=%s %s", cd.Type, cd.Status, cd.Message))
			resizing = resizing || resizeCondition(cd)
		}
		return got.Cmp(want) >= 0 && !resizing, fmt.Sprintf("capacity %s conditions %v", got.String(), conds), nil
	}); err != nil {
		e.describe(t, ctx, ns, "pvc", claim)
		t.Fatal(err)
	}
	t.Logf("claim grew to 256Mi online in %s", time.Since(start).Round(100*time.Millisecond))

	// Same pod, never restarted.
	p, err := e.cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.UID != uid || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("pod was replaced or restarted during the expansion (uid %s -> %s, restarts %d)", uid, p.UID, p.Status.ContainerStatuses[0].RestartCount)
	}

	// Past the old size, within the new one.
	out := e.sh(t, ctx, ns, pod, "rm -f /data/f && dd if=/dev/zero of=/data/f bs=1M count=150 conv=fsync 2>&1 && stat -c %s /data/f")
	t.Logf("wrote 150 MiB into the grown volume: %s", lastLine(out))
	// The new limit holds too.
	writeLimitCheck(t, e, ctx, ns, pod, 256, 300)
	df := e.sh(t, ctx, ns, pod, "df -k /data | tail -1")
	t.Logf("df in the pod (btrfs statfs is the whole disk; qgroup limits do not show there): %s", df)

	// What the pod's volume reports to Kubernetes: the kubelet's summary
	// from NodeGetVolumeStats, refreshed about once a minute.
	start = time.Now()
	if err := poll(ctx, 3*time.Minute, 5*time.Second, "kubelet volume stats capacity 256Mi", func() (bool, string, error) {
		c, err := e.volumeStatsCapacity(ctx, btrfsNode, ns, pod, claim)
		return c == want.Value(), fmt.Sprintf("capacityBytes %d", c), err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("kubelet volume stats report capacity 256Mi (%s after the expansion finished)", time.Since(start).Round(time.Second))
}

// volumeStatsCapacity is capacityBytes of a pod's claim in the kubelet's
// stats summary (0 while the kubelet has not collected it yet).
func (e *env) volumeStatsCapacity(ctx context.Context, node, ns, pod, claim string) (int64, error) {
	raw, err := e.cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", node, "proxy", "stats", "summary").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("stats summary of %s: %w", node, err)
	}
	var s struct {
		Pods []struct {
			PodRef struct{ Name, Namespace string } `json:"podRef"`
			Volume []struct {
				CapacityBytes int64 `json:"capacityBytes"`
				PVCRef        *struct {
					Name, Namespace string
				} `json:"pvcRef"`
			} `json:"volume"`
		} `json:"pods"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, fmt.Errorf("stats summary of %s: %w", node, err)
	}
	for _, p := range s.Pods {
		if p.PodRef.Namespace != ns || p.PodRef.Name != pod {
			continue
		}
		for _, v := range p.Volume {
			if v.PVCRef != nil && v.PVCRef.Name == claim {
				return v.CapacityBytes, nil
			}
		}
	}
	return 0, nil
}

// resizeCondition reports whether a claim condition says its expansion is
// still under way or failed (Resizing, FileSystemResizePending,
// ControllerResizeError, NodeResizeError). Other conditions are not about
// the expansion: v1.37 sets Unused=False on every claim a pod uses.
func resizeCondition(c corev1.PersistentVolumeClaimCondition) bool {
	switch c.Type {
	case corev1.PersistentVolumeClaimResizing, corev1.PersistentVolumeClaimFileSystemResizePending,
		corev1.PersistentVolumeClaimControllerResizeError, corev1.PersistentVolumeClaimNodeResizeError:
		return c.Status == corev1.ConditionTrue
	}
	return false
}
