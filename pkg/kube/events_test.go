package kube_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/kube"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPoolDegradationEvents: a degraded RAID under a pool is a Warning
// Event on the Node that says what to do, and its recovery a Normal one;
// neither fences (no label, the condition stays healthy).
func TestPoolDegradationEvents(t *testing.T) {
	h := start(t, newNode(nil, nil), newFakeMonitor("default"), false)
	h.ev.PoolDegradationChanged("default", true, "md0 (raid10, 4 devices): degraded, 1 missing, faulty: vdb")
	h.ev.PoolDegradationChanged("default", false, "md0 (raid10, 4 devices): optimal")
	h.eventually("two events", func() bool { return len(h.events()) == 2 })
	tests := []struct {
		reason, typ string
		msgParts    []string
	}{
		{kube.ReasonPoolDegraded, corev1.EventTypeWarning, []string{`pool "default" (/mnt/d)`, "faulty: vdb", "not fenced", "replace the failed disk"}},
		{kube.ReasonPoolNotDegraded, corev1.EventTypeNormal, []string{`pool "default" (/mnt/d)`, "full RAID redundancy again", "optimal"}},
	}
	evs := h.events()
	for i, tt := range tests {
		ev := evs[i]
		if ev.Reason != tt.reason || ev.Type != tt.typ || ev.InvolvedObject.Kind != "Node" || ev.InvolvedObject.Name != nodeName {
			t.Errorf("event %d: %s %s on %s/%s, want %s %s on Node/%s", i, ev.Type, ev.Reason, ev.InvolvedObject.Kind, ev.InvolvedObject.Name, tt.typ, tt.reason, nodeName)
		}
		for _, part := range tt.msgParts {
			if !strings.Contains(ev.Message, part) {
				t.Errorf("event %d message %q lacks %q", i, ev.Message, part)
			}
		}
	}
	n := h.node()
	if v, ok := n.Labels[kube.PoolLabelPrefix+"default"]; ok {
		t.Errorf("degradation set the fencing label (%q)", v)
	}
	if c := condition(n); c != nil && c.Status != corev1.ConditionTrue {
		t.Errorf("degradation changed the condition: %+v", c)
	}
}

// TestVolumesQuarantinedEvent: one Warning Event per pool, naming at most a
// few volumes (a renamed node quarantines them all) and what to do.
func TestVolumesQuarantinedEvent(t *testing.T) {
	h := start(t, newNode(nil, nil), newFakeMonitor("default"), false)
	var problems []string
	for i := range 7 {
		problems = append(problems, fmt.Sprintf("pvc-%d: record /mnt/d/volumes/pvc-%d/volume.json is empty", i, i))
	}
	h.ev.VolumesQuarantined("default", problems)
	h.ev.VolumesQuarantined("default", nil) // nothing to say: no Event
	h.eventually("an event", func() bool { return len(h.events()) == 1 })
	time.Sleep(50 * time.Millisecond)
	evs := h.events()
	if len(evs) != 1 {
		t.Fatalf("events %v, want one", reasons(evs))
	}
	ev := evs[0]
	if ev.Reason != kube.ReasonVolumesQuarantined || ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.Kind != "Node" || ev.InvolvedObject.Name != nodeName {
		t.Fatalf("event %s %s on %s/%s", ev.Type, ev.Reason, ev.InvolvedObject.Kind, ev.InvolvedObject.Name)
	}
	for _, part := range []string{`pool "default" (/mnt/d) has 7 quarantined`, "pvc-0: record /mnt/d/volumes/pvc-0/volume.json is empty", "pvc-4:", "and 2 more (see the driver log)", "FailedPrecondition", "repairs each record"} {
		if !strings.Contains(ev.Message, part) {
			t.Errorf("message %q lacks %q", ev.Message, part)
		}
	}
	if strings.Contains(ev.Message, "pvc-5:") {
		t.Errorf("message lists more than 5 volumes: %q", ev.Message)
	}
}

// TestPostOnClaim: an Event about a claim goes to the claim's namespace,
// names the claim (kind, namespace, name, UID) and keeps the node as its
// source; Events stay in the order they were posted.
func TestPostOnClaim(t *testing.T) {
	h := start(t, newNode(nil, nil), newFakeMonitor("default"), false)
	claim := corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: "db", Name: "data-db-0", UID: "u1"}
	h.ev.PostOn(claim, corev1.EventTypeWarning, "VolumeMissing", "first")
	h.ev.Post(corev1.EventTypeWarning, "OrphanVolume", "second")
	var got []corev1.Event
	h.eventually("the claim's event", func() bool {
		l, err := h.client.CoreV1().Events("db").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got = l.Items
		return len(got) == 1 && len(h.events()) == 1
	})
	ev := got[0]
	if ev.InvolvedObject != claim || ev.Reason != "VolumeMissing" || ev.Type != corev1.EventTypeWarning || ev.Message != "first" {
		t.Errorf("claim event %+v", ev)
	}
	if ev.Source.Host != nodeName || ev.Source.Component != "dhpp-driver" {
		t.Errorf("claim event source %+v, want dhpp-driver on %s", ev.Source, nodeName)
	}
	if n := h.events()[0]; n.InvolvedObject.Kind != "Node" || n.Reason != "OrphanVolume" {
		t.Errorf("node event %+v", n)
	}
}
