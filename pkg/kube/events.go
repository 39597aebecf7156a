package kube

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// NodeEvents posts core/v1 Events about this Node, like the kubelet's own,
// in the order they were asked for: the Fencer's (fenced, recovered,
// unfenced), RAID degradation's and quarantine's. Post never blocks, so
// callbacks on probing and watching goroutines can use it; Run creates the
// Events, retrying a failed one with backoff before the ones after it.
type NodeEvents struct {
	client    API
	nodeName  string
	poolPaths map[string]string
	queue     workqueue.TypedRateLimitingInterface[string]

	mu     sync.Mutex
	events []*corev1.Event
	// seq makes Event names unique even for equal timestamps.
	seq int
	now func() time.Time
}

// eventsKey is the one work item: "create the queued Events".
const eventsKey = "events"

// NewNodeEvents returns a NodeEvents posting on node nodeName through
// client; poolPaths maps pool names to their directories, for messages.
func NewNodeEvents(client API, nodeName string, poolPaths map[string]string) *NodeEvents {
	return &NodeEvents{
		client: client, nodeName: nodeName, poolPaths: poolPaths, now: time.Now,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, 2*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "dhpp-node-events"}),
	}
}

// Post queues an Event of type typ (corev1.EventTypeNormal or Warning) on
// the Node. It never blocks.
func (e *NodeEvents) Post(typ, reason, msg string) {
	// The kubelet uses the node name as the UID of Node references;
	// kubectl describe node matches Events by kind and name.
	e.PostOn(corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: e.nodeName, UID: types.UID(e.nodeName)}, typ, reason, msg)
}

// PostOn queues an Event about another object than the Node, e.g. the
// claim of a volume that is missing on this node; the Event goes to the
// object's namespace (the default one for cluster-scoped objects). It never
// blocks.
func (e *NodeEvents) PostOn(obj corev1.ObjectReference, typ, reason, msg string) {
	ns := obj.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	e.mu.Lock()
	now := metav1.NewTime(e.now())
	e.seq++
	e.events = append(e.events, &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x.%d", e.nodeName, now.UnixNano(), e.seq),
			Namespace: ns,
		},
		InvolvedObject: obj,
		Reason:         reason,
		Message:        msg,
		Type:           typ,
		Source:         corev1.EventSource{Component: component, Host: e.nodeName},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	})
	e.mu.Unlock()
	e.queue.Add(eventsKey)
}

// Run creates the queued Events until ctx is done; it never fails.
func (e *NodeEvents) Run(ctx context.Context) error {
	defer e.queue.ShutDown()
	go func() { <-ctx.Done(); e.queue.ShutDown() }()
	for {
		key, quit := e.queue.Get()
		if quit {
			return nil
		}
		if err := e.post(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Posting a Node Event failed; retrying", "node", e.nodeName)
			e.queue.AddRateLimited(key)
		} else {
			e.queue.Forget(key)
		}
		e.queue.Done(key)
	}
}

// post creates the queued Events in order; a failed one stays at the head
// of the FIFO for the retry.
func (e *NodeEvents) post(ctx context.Context) error {
	for {
		e.mu.Lock()
		if len(e.events) == 0 {
			e.mu.Unlock()
			return nil
		}
		ev := e.events[0]
		e.mu.Unlock()
		if _, err := e.client.CreateEvent(ctx, ev); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create event %s: %w", ev.Reason, err)
		}
		e.mu.Lock()
		e.events = e.events[1:]
		e.mu.Unlock()
	}
}

// PoolDegradationChanged posts a Node Event when the md RAID arrays under
// a pool lose or regain redundancy: Warning PoolDegraded (a disk to
// replace) or Normal PoolNotDegraded. detail describes the degraded arrays,
// or all arrays after a recovery. A degraded array still serves every read
// and write, so this is an Event only, never fencing. It never blocks.
func (e *NodeEvents) PoolDegradationChanged(pool string, degraded bool, detail string) {
	if degraded {
		e.Post(corev1.EventTypeWarning, ReasonPoolDegraded, fmt.Sprintf(
			"pool %q (%s) is on a degraded RAID array: %s. The pool keeps serving and taking volumes (it is not fenced), but one more disk failure may lose its data: replace the failed disk",
			pool, e.poolPaths[pool], detail))
		return
	}
	e.Post(corev1.EventTypeNormal, ReasonPoolNotDegraded, fmt.Sprintf(
		"pool %q (%s) has full RAID redundancy again: %s", pool, e.poolPaths[pool], detail))
}

// maxListedQuarantined bounds how many volumes a VolumesQuarantined Event
// names: a renamed node quarantines every volume, and an Event message is
// for people (the driver log names every one).
const maxListedQuarantined = 5

// VolumesQuarantined posts a Warning Event on the Node saying that pool
// has volumes whose record cannot be trusted; problems describes each (a
// volume and what is wrong with its record). It never blocks.
func (e *NodeEvents) VolumesQuarantined(pool string, problems []string) {
	if len(problems) == 0 {
		return
	}
	listed := make([]string, 0, maxListedQuarantined)
	for _, p := range problems[:min(len(problems), maxListedQuarantined)] {
		if len(p) > 300 {
			p = p[:300] + "…"
		}
		listed = append(listed, p)
	}
	more := ""
	if n := len(problems) - len(listed); n > 0 {
		more = fmt.Sprintf("; and %d more (see the driver log)", n)
	}
	e.Post(corev1.EventTypeWarning, ReasonVolumesQuarantined, fmt.Sprintf(
		"pool %q (%s) has %d quarantined volume(s) whose record cannot be trusted: %s%s. Their data is left untouched and their names reserved: "+
			"creating, deleting or using them fails with FailedPrecondition until an operator repairs each record or moves its directory out of the pool's volumes/ directory (re-read every trash-purge round)",
		pool, e.poolPaths[pool], len(problems), strings.Join(listed, "; "), more))
}
