package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dhpp-io/dhpp/pkg/health"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Names on the Node object. They are API: operators select, alert and
// script on them.
const (
	// PoolLabelPrefix + pool is set to PoolLabelFenced while the pool is
	// fenced and removed when it is not.
	PoolLabelPrefix = "pool.dhpp.io/"
	PoolLabelFenced = "fenced"
	// UnfenceAnnotationPrefix + pool, any value, asks the driver to unfence
	// the pool; the driver removes the annotation when done.
	UnfenceAnnotationPrefix = "unfence.dhpp.io/"
	// ConditionType is the Node condition summarising the node's pools.
	ConditionType corev1.NodeConditionType = "DhppPoolsHealthy"

	// Event and condition reasons.
	ReasonPoolFenced    = "PoolFenced"
	ReasonPoolRecovered = "PoolRecovered"
	ReasonPoolUnfenced  = "PoolUnfenced"
	ReasonPoolsHealthy  = "NoPoolFenced"
	ReasonUnfenceFailed = "UnfenceFailed"
	// RAID redundancy under a pool (Events only: a degraded pool is not
	// fenced, so the label and condition do not change).
	ReasonPoolDegraded    = "PoolDegraded"
	ReasonPoolNotDegraded = "PoolNotDegraded"
	// ReasonVolumesQuarantined: volumes whose record cannot be trusted
	// were found in a pool (Event only: the pool keeps serving).
	ReasonVolumesQuarantined = "VolumesQuarantined"

	// component is the Events' source.
	component = "dhpp-driver"
)

// Monitor is the part of *health.Monitor the fencer uses.
type Monitor interface {
	Pools() []string
	Status(pool string) (health.Status, bool)
	Fence(pool, message string) error
	Unfence(pool string) error
	OnChange(f func(old, new health.Status))
}

var _ Monitor = (*health.Monitor)(nil)

// Config configures a Fencer.
type Config struct {
	Client   API
	NodeName string
	Monitor  Monitor
	// PoolPaths maps pool names to their directories, for messages.
	PoolPaths map[string]string
	// Events posts the fencing Events on the Node; the caller runs it.
	Events *NodeEvents
	// Resync re-checks the Node against the pools' state this often, so a
	// label removed by hand or a failed patch is repaired (default 10m).
	Resync time.Duration
}

// Work items. Label and condition are level-triggered (derived from the
// Monitor's current state, so repeated or coalesced syncs are harmless);
// Events are edge-triggered and go to NodeEvents, whose FIFO coalesces none.
const (
	keyNode        = "node"
	keyAnnotations = "annotations"
)

// Fencer mirrors the pools' fencing state onto the Node object and turns
// unfence annotations into Monitor.Unfence calls.
type Fencer struct {
	cfg   Config
	queue workqueue.TypedRateLimitingInterface[string]
	inf   cache.SharedIndexInformer

	mu        sync.Mutex
	restoring bool
	// unfencing marks pools being unfenced by annotation, so the Fenced →
	// Healthy change it causes is reported as PoolUnfenced, not PoolRecovered.
	unfencing map[string]bool
	// now is the clock for condition times (tests).
	now func() time.Time
}

// NewFencer returns a Fencer and registers its Monitor callback. Call
// Restore before the Monitor runs, then Run.
func NewFencer(cfg Config) (*Fencer, error) {
	if cfg.Client == nil || cfg.Monitor == nil || cfg.NodeName == "" || cfg.Events == nil {
		return nil, errors.New("kube fencer: client, monitor, node name and events are required")
	}
	if cfg.Resync == 0 {
		cfg.Resync = 10 * time.Minute
	}
	f := &Fencer{
		cfg: cfg,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, 2*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "dhpp-node-fencing"}),
		unfencing: map[string]bool{},
		now:       time.Now,
	}
	// Watch only this node: a field-selected list/watch, so the driver on a
	// 1,000-node cluster neither caches nor hears about the other 999.
	sel := fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return cfg.Client.ListNodes(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return cfg.Client.WatchNodes(ctx, o)
		},
	}
	// The wrapper lets a client declare that it cannot stream the initial
	// list (client-go's fakes do); a real API server client is unaffected.
	f.inf = cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, cfg.Client), &corev1.Node{}, cfg.Resync, cache.Indexers{})
	if _, err := f.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { f.nodeChanged() },
		UpdateFunc: func(any, any) { f.nodeChanged() },
	}); err != nil {
		return nil, fmt.Errorf("kube fencer: node event handler: %w", err)
	}
	cfg.Monitor.OnChange(f.onChange)
	return f, nil
}

// nodeChanged runs on the informer's goroutine; it only queues work.
func (f *Fencer) nodeChanged() {
	f.queue.Add(keyAnnotations)
	f.queue.Add(keyNode)
}

// onChange runs on the Monitor's probing goroutine (or the caller of
// Fence/Unfence): it must never block, so it only queues the Event and the
// work; the workers talk to the API server.
func (f *Fencer) onChange(old, n health.Status) {
	wasFenced, isFenced := old.State == health.Fenced, n.State == health.Fenced
	if wasFenced == isFenced {
		return // Healthy <-> Failing: nothing changes on the Node
	}
	f.mu.Lock()
	restoring, unfencing := f.restoring, f.unfencing[n.Pool]
	f.mu.Unlock()
	switch {
	case restoring:
		// Restored from the label after a restart: the Node already says so.
	case isFenced:
		f.cfg.Events.Post(corev1.EventTypeWarning, ReasonPoolFenced, f.fencedMessage(n))
	case unfencing:
		f.cfg.Events.Post(corev1.EventTypeNormal, ReasonPoolUnfenced, fmt.Sprintf(
			"pool %q (%s) unfenced by annotation %s%s: it takes new volumes again; its probe keeps running and fences it again after repeated failures",
			n.Pool, f.cfg.PoolPaths[n.Pool], UnfenceAnnotationPrefix, n.Pool))
	default:
		f.cfg.Events.Post(corev1.EventTypeNormal, ReasonPoolRecovered, fmt.Sprintf(
			"pool %q (%s) recovered after %d consecutive successful disk health probes: it takes new volumes again",
			n.Pool, f.cfg.PoolPaths[n.Pool], n.ConsecutiveSuccesses))
	}
	f.queue.Add(keyNode)
}

func (f *Fencer) fencedMessage(s health.Status) string {
	return fmt.Sprintf("pool %q (%s) is fenced: no new volumes go there, existing volumes and mounts are left alone. Reason: %s; last error: %s. After repairing the disk: kubectl annotate node %s %s%s=now",
		s.Pool, f.cfg.PoolPaths[s.Pool], s.Reason, s.LastError, f.cfg.NodeName, UnfenceAnnotationPrefix, s.Pool)
}

// Restore re-applies fencing recorded in the Node's labels, so a driver
// restart never silently unfences a failed disk. It retries reading the
// Node until ctx is done; the caller bounds it with a timeout.
func (f *Fencer) Restore(ctx context.Context) error {
	var node *corev1.Node
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		n, err := f.cfg.Client.GetNode(ctx, f.cfg.NodeName)
		if err != nil {
			klog.V(2).InfoS("Reading own Node to restore fencing", "node", f.cfg.NodeName, "err", err)
			return false, nil
		}
		node = n
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("read node %s to restore fenced pools from its labels: %w", f.cfg.NodeName, err)
	}
	f.mu.Lock()
	f.restoring = true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.restoring = false
		f.mu.Unlock()
	}()
	var errs []error
	for _, pool := range f.cfg.Monitor.Pools() {
		if node.Labels[PoolLabelPrefix+pool] != PoolLabelFenced {
			continue
		}
		if s, _ := f.cfg.Monitor.Status(pool); s.State == health.Fenced {
			continue // fenced already at start (e.g. its directory is missing): keep that reason
		}
		msg := fmt.Sprintf("fenced before the driver restarted (node label %s%s=%s); after repairing the disk: kubectl annotate node %s %s%s=now",
			PoolLabelPrefix, pool, PoolLabelFenced, f.cfg.NodeName, UnfenceAnnotationPrefix, pool)
		if err := f.cfg.Monitor.Fence(pool, msg); err != nil {
			errs = append(errs, err)
			continue
		}
		klog.InfoS("Pool fencing restored from node label", "pool", pool, "node", f.cfg.NodeName)
	}
	return errors.Join(errs...)
}

// Run watches the Node and works the queue until ctx is done.
func (f *Fencer) Run(ctx context.Context) error {
	defer f.queue.ShutDown()
	go f.inf.Run(ctx.Done())
	go func() { <-ctx.Done(); f.queue.ShutDown() }()
	if !cache.WaitForCacheSync(ctx.Done(), f.inf.HasSynced) {
		return nil // ctx done
	}
	f.queue.Add(keyNode)
	klog.InfoS("Mirroring pool fencing onto the Node", "node", f.cfg.NodeName,
		"label", PoolLabelPrefix+"<pool>", "condition", ConditionType, "unfence", UnfenceAnnotationPrefix+"<pool>")
	for f.processNext(ctx) {
	}
	return nil
}

func (f *Fencer) processNext(ctx context.Context) bool {
	key, quit := f.queue.Get()
	if quit {
		return false
	}
	defer f.queue.Done(key)
	var err error
	switch key {
	case keyNode:
		err = f.syncNode(ctx)
	case keyAnnotations:
		err = f.handleAnnotations(ctx)
	}
	if err != nil && ctx.Err() == nil {
		klog.ErrorS(err, "Updating the Node for pool fencing failed; retrying", "node", f.cfg.NodeName, "work", key)
		f.queue.AddRateLimited(key)
		return true
	}
	f.queue.Forget(key)
	return true
}

// cachedNode is the informer's copy of the Node, nil before it is known.
func (f *Fencer) cachedNode() *corev1.Node {
	obj, ok, err := f.inf.GetStore().GetByKey(f.cfg.NodeName)
	if err != nil || !ok {
		return nil
	}
	n, _ := obj.(*corev1.Node)
	return n
}

// syncNode makes the labels and the condition match the pools' state.
func (f *Fencer) syncNode(ctx context.Context) error {
	cur := f.cachedNode()
	var fencedPools []string
	labels := map[string]any{}
	for _, pool := range f.cfg.Monitor.Pools() {
		s, _ := f.cfg.Monitor.Status(pool)
		key := PoolLabelPrefix + pool
		have, ok := "", false
		if cur != nil {
			have, ok = cur.Labels[key]
		}
		if s.State == health.Fenced {
			fencedPools = append(fencedPools, fmt.Sprintf("%s (%s): %s: %s", pool, f.cfg.PoolPaths[pool], s.Reason, s.LastError))
			if have != PoolLabelFenced {
				labels[key] = PoolLabelFenced
			}
		} else if ok || cur == nil {
			labels[key] = nil // JSON merge patch: remove
		}
	}
	if len(labels) > 0 {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
		if _, err := f.cfg.Client.PatchNode(ctx, f.cfg.NodeName, types.MergePatchType, patch, ""); err != nil {
			return fmt.Errorf("patch pool labels: %w", err)
		}
	}

	want := corev1.NodeCondition{Type: ConditionType, Status: corev1.ConditionTrue, Reason: ReasonPoolsHealthy,
		Message: fmt.Sprintf("no dhpp pool on this node is fenced (%d pools pass their disk health probe)", len(f.cfg.Monitor.Pools()))}
	if len(fencedPools) > 0 {
		sort.Strings(fencedPools)
		want.Status, want.Reason = corev1.ConditionFalse, ReasonPoolFenced
		want.Message = "fenced pools take no new volumes: " + strings.Join(fencedPools, "; ")
	}
	now := metav1.NewTime(f.now())
	want.LastHeartbeatTime, want.LastTransitionTime = now, now
	if cur != nil {
		for _, c := range cur.Status.Conditions {
			if c.Type != ConditionType {
				continue
			}
			if c.Status == want.Status && c.Reason == want.Reason && c.Message == want.Message {
				return nil // already says so; no write
			}
			if c.Status == want.Status {
				want.LastTransitionTime = c.LastTransitionTime
			}
		}
	}
	// Strategic merge: conditions merge by type, so the kubelet's own
	// conditions are untouched.
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{want}}})
	if _, err := f.cfg.Client.PatchNode(ctx, f.cfg.NodeName, types.StrategicMergePatchType, patch, "status"); err != nil {
		return fmt.Errorf("patch node condition %s: %w", ConditionType, err)
	}
	return nil
}

// handleAnnotations unfences every pool named by an unfence annotation and
// removes the annotations.
func (f *Fencer) handleAnnotations(ctx context.Context) error {
	cur := f.cachedNode()
	if cur == nil {
		return nil
	}
	known := map[string]bool{}
	for _, p := range f.cfg.Monitor.Pools() {
		known[p] = true
	}
	remove := map[string]any{}
	for k := range cur.Annotations {
		pool, ok := strings.CutPrefix(k, UnfenceAnnotationPrefix)
		if !ok {
			continue
		}
		remove[k] = nil
		if !known[pool] {
			klog.InfoS("Ignoring unfence annotation for a pool this node does not have", "annotation", k, "node", f.cfg.NodeName, "pools", f.cfg.Monitor.Pools())
			f.cfg.Events.Post(corev1.EventTypeWarning, ReasonUnfenceFailed, fmt.Sprintf("annotation %s names no pool of this node (pools: %s); removed", k, strings.Join(f.cfg.Monitor.Pools(), ", ")))
			continue
		}
		if s, _ := f.cfg.Monitor.Status(pool); s.State != health.Fenced {
			klog.InfoS("Unfence annotation for a pool that is not fenced; removing it", "pool", pool, "state", s.State)
			continue
		}
		f.mu.Lock()
		f.unfencing[pool] = true
		f.mu.Unlock()
		err := f.cfg.Monitor.Unfence(pool)
		f.mu.Lock()
		delete(f.unfencing, pool)
		f.mu.Unlock()
		if err != nil {
			return fmt.Errorf("unfence pool %q: %w", pool, err)
		}
		klog.InfoS("Pool unfenced by annotation", "pool", pool, "node", f.cfg.NodeName)
	}
	if len(remove) == 0 {
		return nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": remove}})
	if _, err := f.cfg.Client.PatchNode(ctx, f.cfg.NodeName, types.MergePatchType, patch, ""); err != nil {
		return fmt.Errorf("remove unfence annotations: %w", err)
	}
	return nil
}
