//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/test/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// The local overlay runs the driver's health defaults.
const (
	healthPeriod    = 5 * time.Second
	healthTimeout   = time.Second
	healthThreshold = 3
	capacityPoll    = 10 * time.Second // csi-provisioner --capacity-poll-interval
	// schedulingSlack absorbs API and workqueue latency on a loaded machine.
	schedulingSlack = 10 * time.Second
)

// fencedNode is the node whose disk TestFencing faults: a btrfs node (its
// disk has no loop volume images that would keep a remount read-only busy).
const fencedNode = "dhpp-node-2"

// TestFencing faults one node's data disk for real (remounted read-only in
// the node's mount namespace) and follows what the README promises: the
// pool is fenced within period×threshold+timeout, the node's capacity goes
// to 0, a new StatefulSet lands on the other nodes, the Node carries the
// Event, label and condition, and the driver's metric reads 1. Repairing
// the disk alone does not unfence (manual policy); the unfence annotation
// does, and everything returns to normal.
func TestFencing(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 15*time.Minute)
	ns := e.namespace(t, "fencing")
	node := fencedNode
	label := kube.PoolLabelPrefix + defaultPool
	annotation := kube.UnfenceAnnotationPrefix + defaultPool

	st := e.fenceState(ctx, node)
	if st.err != nil || st.labelled || st.condition != corev1.ConditionTrue || st.capacity <= 0 {
		t.Fatalf("%s is not healthy before the fault: %s", node, st)
	}

	// Whatever happens below, give the node its disk back and unfence it,
	// so the other tests find a healthy cluster.
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if out, err := cluster.NodeExec(cctx, e.cfg, node, "findmnt", "-n", "-o", "OPTIONS", cluster.DataMount); err == nil && strings.HasPrefix(out, "ro") {
			if _, err := cluster.NodeExec(cctx, e.cfg, node, "mount", "-o", "remount,rw", cluster.DataMount); err != nil {
				t.Errorf("cleanup: remount rw: %v", err)
			}
		}
		if st := e.fenceState(cctx, node); st.labelled {
			if _, err := e.cfg.Kubectl(cctx, "annotate", "--overwrite", "node", node, annotation+"=now"); err != nil {
				t.Errorf("cleanup: unfence: %v", err)
			}
			_ = poll(cctx, time.Minute, time.Second, "cleanup unfence", func() (bool, string, error) {
				st := e.fenceState(cctx, node)
				return !st.labelled, st.String(), nil
			})
		}
	})

	// The fault.
	e.remount(t, ctx, node, "ro")
	fault := time.Now()
	t.Logf("%s: %s remounted read-only", node, cluster.DataMount)

	// Watch the fencing arrive, noting when each sign first shows.
	var tLabel, tCond, tCap, tMetric time.Duration
	if err := poll(ctx, 2*time.Minute, 200*time.Millisecond, node+" fenced everywhere", func() (bool, string, error) {
		st := e.fenceState(ctx, node)
		since := time.Since(fault)
		if st.labelled && tLabel == 0 {
			tLabel = since
		}
		if st.condition == corev1.ConditionFalse && tCond == 0 {
			tCond = since
		}
		if st.capacity == 0 && tCap == 0 {
			tCap = since
		}
		if st.fencedMetric == 1 && tMetric == 0 {
			tMetric = since
		}
		return tLabel > 0 && tCond > 0 && tCap > 0 && tMetric > 0, st.String(), nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("fault -> fenced on %s: label %s, condition %s, metric %s, CSIStorageCapacity 0 %s",
		node, tLabel.Round(100*time.Millisecond), tCond.Round(100*time.Millisecond),
		tMetric.Round(100*time.Millisecond), tCap.Round(100*time.Millisecond))
	fenceBound := healthPeriod*healthThreshold + healthTimeout
	if tLabel > fenceBound+schedulingSlack {
		t.Errorf("label after %s, want within period×threshold+timeout = %s (+%s slack)", tLabel, fenceBound, schedulingSlack)
	}
	if tCap > fenceBound+capacityPoll+schedulingSlack {
		t.Errorf("capacity 0 after %s, want within %s + the %s capacity poll (+%s slack)", tCap, fenceBound, capacityPoll, schedulingSlack)
	}

	t.Run("Node shows the PoolFenced event", func(t *testing.T) {
		ev := e.nodeEvent(t, ctx, node, kube.ReasonPoolFenced, fault)
		if ev == nil {
			t.Fatalf("no %s event on node %s since the fault", kube.ReasonPoolFenced, node)
		}
		if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, annotation) {
			t.Errorf("event %s %q: want a Warning that says how to unfence (%s)", ev.Type, ev.Message, annotation)
		}
		t.Logf("event: %s %s: %s", ev.Type, ev.Reason, ev.Message)
		out, err := e.cfg.Kubectl(ctx, "get", "nodes", "-l", label+"="+kube.PoolLabelFenced, "-o", "name")
		if err != nil || strings.TrimSpace(out) != "node/"+node {
			t.Errorf("kubectl get nodes -l %s=fenced: %q %v, want node/%s", label, out, err, node)
		}
	})

	t.Run("a new StatefulSet lands on the other nodes", func(t *testing.T) {
		e.applyYAML(t, ctx, statefulSetYAML(ns, "after", 2, "64Mi"))
		used := map[string]bool{}
		for i := 0; i < 2; i++ {
			pod := e.waitPodReady(t, ctx, ns, fmt.Sprintf("after-%d", i), "", 3*time.Minute)
			_, pv := e.waitPVCBound(t, ctx, ns, fmt.Sprintf("data-after-%d", i), time.Minute)
			n, err := pvNode(pv)
			if err != nil {
				t.Fatal(err)
			}
			if n == node || pod.Spec.NodeName == node {
				t.Errorf("after-%d and its volume went to the fenced node %s", i, node)
			}
			used[n] = true
		}
		if len(used) != 2 {
			t.Errorf("replicas on %v, want the two healthy nodes", used)
		}
		t.Logf("new replicas on %v", used)
	})

	t.Run("metric reads 1 on the fenced node only", func(t *testing.T) {
		for _, n := range nodeNames() {
			text, err := e.scrape(ctx, n)
			if err != nil {
				t.Fatal(err)
			}
			v, found, err := sampleSum(text, "dhpp_pool_fenced", `pool="default"`)
			want := 0.0
			if n == node {
				want = 1
			}
			if err != nil || !found || v != want {
				t.Errorf("%s: dhpp_pool_fenced{pool=\"default\"} = %v (found %v, %v), want %v", n, v, found, err, want)
			}
		}
	})

	t.Run("repaired disk stays fenced until the unfence annotation", func(t *testing.T) {
		e.remount(t, ctx, node, "rw")
		repaired := time.Now()
		// Manual policy: good probes alone must not unfence. Wait for two
		// probes to succeed (probe count up by 2, failures unchanged), then
		// check it is still fenced.
		probes := func() (count, failures float64, err error) {
			text, err := e.scrape(ctx, node)
			if err != nil {
				return 0, 0, err
			}
			count, _, err = sampleSum(text, "dhpp_health_probe_duration_seconds_count", `pool="default"`)
			if err != nil {
				return 0, 0, err
			}
			failures, _, err = sampleSum(text, "dhpp_health_probe_failures_total", `pool="default"`)
			return count, failures, err
		}
		c0, f0, err := probes()
		if err != nil {
			t.Fatal(err)
		}
		if err := poll(ctx, 4*healthPeriod+schedulingSlack, 500*time.Millisecond, "two good probes on the repaired disk", func() (bool, string, error) {
			c, f, err := probes()
			if err != nil {
				return false, "", err
			}
			if f > f0 {
				// A probe that started before the remount may still fail.
				c0, f0 = c, f
			}
			return c >= c0+2, fmt.Sprintf("probes %v failures %v", c, f), nil
		}); err != nil {
			t.Fatal(err)
		}
		if st := e.fenceState(ctx, node); !st.labelled || st.fencedMetric != 1 || st.capacity != 0 {
			t.Fatalf("pool unfenced itself after good probes (%s after the repair); the default policy is manual: %s", time.Since(repaired).Round(100*time.Millisecond), st)
		}

		unfence := time.Now()
		if _, err := e.cfg.Kubectl(ctx, "annotate", "--overwrite", "node", node, annotation+"=now"); err != nil {
			t.Fatal(err)
		}
		var tLabel, tCond, tCap, tMetric, tAnno time.Duration
		if err := poll(ctx, 2*time.Minute, 200*time.Millisecond, node+" unfenced everywhere", func() (bool, string, error) {
			st := e.fenceState(ctx, node)
			since := time.Since(unfence)
			if !st.labelled && tLabel == 0 {
				tLabel = since
			}
			if st.condition == corev1.ConditionTrue && tCond == 0 {
				tCond = since
			}
			if st.capacity > 0 && tCap == 0 {
				tCap = since
			}
			if st.fencedMetric == 0 && st.err == nil && tMetric == 0 {
				tMetric = since
			}
			if !st.annotated && tAnno == 0 {
				tAnno = since
			}
			return tLabel > 0 && tCond > 0 && tCap > 0 && tMetric > 0 && tAnno > 0, st.String(), nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("annotation -> unfenced on %s: label gone %s, condition True %s, metric 0 %s, capacity back %s, annotation removed %s",
			node, tLabel.Round(100*time.Millisecond), tCond.Round(100*time.Millisecond), tMetric.Round(100*time.Millisecond),
			tCap.Round(100*time.Millisecond), tAnno.Round(100*time.Millisecond))
		if ev := e.nodeEvent(t, ctx, node, kube.ReasonPoolUnfenced, unfence); ev == nil {
			t.Errorf("no %s event on %s", kube.ReasonPoolUnfenced, node)
		} else {
			t.Logf("event: %s %s: %s", ev.Type, ev.Reason, ev.Message)
		}
	})

	t.Run("the unfenced node takes new volumes again", func(t *testing.T) {
		e.applyYAML(t, ctx, pvcYAML(ns, "back", "64Mi", false))
		e.applyYAML(t, ctx, podWithClaimYAML(ns, "back", "back", podOpts{node: node}))
		e.waitPodReady(t, ctx, ns, "back", "", 3*time.Minute)
		if got := e.sh(t, ctx, ns, "back", "echo ok > /data/f && cat /data/f"); got != "ok" {
			t.Errorf("new volume on %s reads %q", node, got)
		}
	})
}

// remount sets the node's data disk ro or rw, inside the node's mount
// namespace: the superblock flag changes, so every mount of the disk (the
// driver's, the pods') sees it, as with a real failing disk. A remount to
// ro is refused (EBUSY) while a write is in flight, e.g. a health probe:
// retry briefly.
func (e *env) remount(t *testing.T, ctx context.Context, node, mode string) {
	t.Helper()
	var last error
	err := poll(ctx, 30*time.Second, 200*time.Millisecond, "remount "+mode, func() (bool, string, error) {
		_, last = cluster.NodeExec(ctx, e.cfg, node, "mount", "-o", "remount,"+mode, cluster.DataMount)
		if last != nil {
			return false, last.Error(), nil
		}
		return true, "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cluster.NodeExec(ctx, e.cfg, node, "findmnt", "-n", "-o", "OPTIONS", cluster.DataMount)
	if err != nil || !strings.HasPrefix(opts, mode+",") {
		t.Fatalf("%s on %s after remount %s: %q %v", cluster.DataMount, node, mode, opts, err)
	}
}

// fenceStatus is what the API and the driver say about a node's default
// pool.
type fenceStatus struct {
	labelled, annotated bool
	condition           corev1.ConditionStatus
	capacity            int64   // -1: no CSIStorageCapacity
	fencedMetric        float64 // -1: not scraped
	err                 error
}

func (s fenceStatus) String() string {
	return fmt.Sprintf("label=%v condition=%s capacity=%d fenced-metric=%v unfence-annotation=%v err=%v",
		s.labelled, s.condition, s.capacity, s.fencedMetric, s.annotated, s.err)
}

func (e *env) fenceState(ctx context.Context, node string) fenceStatus {
	st := fenceStatus{capacity: -1, fencedMetric: -1}
	n, err := e.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		st.err = err
		return st
	}
	st.labelled = n.Labels[kube.PoolLabelPrefix+defaultPool] == kube.PoolLabelFenced
	_, st.annotated = n.Annotations[kube.UnfenceAnnotationPrefix+defaultPool]
	for _, c := range n.Status.Conditions {
		if c.Type == kube.ConditionType {
			st.condition = c.Status
		}
	}
	if st.capacity, err = e.capacityBytes(ctx, node); err != nil {
		st.err = err
		return st
	}
	text, err := e.scrape(ctx, node)
	if err != nil {
		st.err = err
		return st
	}
	if v, found, err := sampleSum(text, "dhpp_pool_fenced", `pool="default"`); err != nil {
		st.err = err
	} else if found {
		st.fencedMetric = v
	}
	return st
}

// nodeEvent is the newest Event with reason on node seen at or after since
// (Event times have second precision), or nil.
func (e *env) nodeEvent(t *testing.T, ctx context.Context, node, reason string, since time.Time) *corev1.Event {
	t.Helper()
	var found *corev1.Event
	_ = poll(ctx, 30*time.Second, time.Second, reason+" event on "+node, func() (bool, string, error) {
		evs, err := e.cs.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
			"involvedObject.kind": "Node", "involvedObject.name": node, "reason": reason}.String()})
		if err != nil {
			return false, "", err
		}
		for i := range evs.Items {
			ev := &evs.Items[i]
			at := ev.LastTimestamp.Time
			if at.IsZero() {
				at = ev.EventTime.Time
			}
			if at.IsZero() {
				at = ev.CreationTimestamp.Time
			}
			if !at.Before(since.Truncate(time.Second)) {
				found = ev
			}
		}
		return found != nil, fmt.Sprintf("%d older events", len(evs.Items)), nil
	})
	return found
}
