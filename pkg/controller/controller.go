// Package controller is dhpp's cluster-side half. Its main job: decide when
// a claim whose volume's node or disk is lost may be released, so a
// StatefulSet replica comes back, empty, on a healthy node; it acts only
// when a claim's policy says so (see Policy). Two smaller jobs make
// snapshots work with per-node sidecars: it points a WaitForFirstConsumer
// restore or clone at the node holding its source (placement.go), and it
// hands pre-provisioned VolumeSnapshotContents to their node's
// csi-snapshotter (contents.go). Everything it knows it re-derives from the
// API server, so a restart or a new leader continues where the last one
// stopped and never repeats an action.
//
// Files: policy.go (keep/recreate and where it comes from), signal.go (node
// deleted, out-of-service taint, fenced pool), sync.go (the decision for
// one PV), actions.go (deletes, evictions, Events), placement.go,
// contents.go, snapapi.go (the optional snapshot CRDs), metrics.go, run.go
// (flags, leader election, HTTP).
package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Options are the controller's policy knobs (flags of dhpp-controller).
type Options struct {
	// Grace is how long a node must be gone (Node deleted or tainted
	// out-of-service) before its claims are released.
	Grace time.Duration
	// FenceLimit is how long a pool must be fenced before its claims are
	// released; 0 = never.
	FenceLimit time.Duration
	// DryRun logs what would be done and writes nothing.
	DryRun bool
	// Retry is the wait before re-checking work that waits on someone else:
	// an eviction refused by a PodDisruptionBudget, a claim still in use.
	Retry time.Duration
	// Resync re-lists everything this often, so time-based decisions and
	// missed events are caught up (the informers' resync period).
	Resync time.Duration
}

// DefaultOptions are the flag defaults.
func DefaultOptions() Options {
	return Options{Grace: 2 * time.Minute, FenceLimit: 10 * time.Minute, Retry: 10 * time.Second, Resync: 5 * time.Minute}
}

// Validate refuses settings that make no sense.
func (o Options) Validate() error {
	switch {
	case o.Grace < 0:
		return fmt.Errorf("--grace-period must not be negative (got %s)", o.Grace)
	case o.FenceLimit < 0:
		return fmt.Errorf("--fenced-pool-limit must not be negative (got %s); 0 turns it off", o.FenceLimit)
	case o.Retry <= 0:
		return fmt.Errorf("--retry-period must be positive (got %s)", o.Retry)
	case o.Resync <= 0:
		return fmt.Errorf("--resync-period must be positive (got %s)", o.Resync)
	}
	return nil
}

// pvByNode indexes PVs by the node in their volume ID.
const pvByNode = "node"

// Controller watches Nodes, PVs, PVCs and StorageClasses and works a queue
// of PV names. Pods are not watched: they matter only when a fenced pool's
// claims are released, and then one List of the claim's namespace on that
// node is fresher than a cache of every pod in the cluster, and cheaper.
type Controller struct {
	client  kubernetes.Interface
	opts    Options
	metrics *Metrics
	now     func() time.Time

	factory informers.SharedInformerFactory
	pvInf   cache.SharedIndexInformer
	nodes   corelisters.NodeLister
	claims  corelisters.PersistentVolumeClaimLister
	classes storagelisters.StorageClassLister
	synced  []cache.InformerSynced
	queue   workqueue.TypedRateLimitingInterface[string]

	// snaps serves the snapshot jobs; side is their queue (claims to place,
	// contents to label), apart from the PV queue so neither delays the
	// other's keys.
	snaps *snapshotAPI
	// lookupSnapshotAPI reports whether the snapshot CRDs are installed.
	lookupSnapshotAPI func() (bool, error)
	side              workqueue.TypedRateLimitingInterface[sideKey]

	mu sync.Mutex
	// seen holds, in --dry-run only, when this process first saw a signal
	// for a PV (no annotation can be written) and which would-be actions
	// it already logged.
	seen map[string]time.Time
}

// sideKey is an item of the snapshot jobs' queue.
type sideKey struct {
	kind string // sideClaim or sideContent
	key  string // namespace/name of a claim, name of a content
}

const (
	sideClaim   = "claim"
	sideContent = "content"
)

// New builds a Controller on client; snaps (the snapshot API) may be nil,
// which turns the snapshot jobs off; metrics may be nil.
func New(client kubernetes.Interface, snaps snapclient.Interface, opts Options, metrics *Metrics) (*Controller, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	f := informers.NewSharedInformerFactory(client, opts.Resync)
	c := &Controller{
		client: client, opts: opts, metrics: metrics, now: time.Now, factory: f,
		pvInf:   f.Core().V1().PersistentVolumes().Informer(),
		nodes:   f.Core().V1().Nodes().Lister(),
		claims:  f.Core().V1().PersistentVolumeClaims().Lister(),
		classes: f.Storage().V1().StorageClasses().Lister(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "dhpp-controller"}),
		seen:  map[string]time.Time{},
		snaps: &snapshotAPI{client: snaps, resync: opts.Resync, every: min(opts.Resync, time.Minute)},
		side: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[sideKey](time.Second, 5*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[sideKey]{Name: "dhpp-controller-snapshots"}),
	}
	c.lookupSnapshotAPI = func() (bool, error) { return installed(client.Discovery()) }
	nodeInf := f.Core().V1().Nodes().Informer()
	claimInf := f.Core().V1().PersistentVolumeClaims().Informer()
	classInf := f.Storage().V1().StorageClasses().Informer()
	c.synced = []cache.InformerSynced{c.pvInf.HasSynced, nodeInf.HasSynced, claimInf.HasSynced, classInf.HasSynced}

	err := c.pvInf.AddIndexers(cache.Indexers{pvByNode: indexPVByNode})
	_, e1 := c.pvInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueuePV,
		UpdateFunc: func(_, n any) { c.enqueuePV(n) },
	})
	_, e2 := nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueNode,
		UpdateFunc: func(_, n any) { c.enqueueNode(n) },
		DeleteFunc: c.enqueueNode,
	})
	// A claim that goes away lets the release of its PV continue; a new
	// or changed claim may be a restore or clone to place.
	_, e3 := claimInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueuePending,
		UpdateFunc: func(_, n any) { c.enqueueClaim(n); c.enqueuePending(n) },
		DeleteFunc: c.enqueueClaim,
	})
	if err := errors.Join(err, e1, e2, e3); err != nil {
		return nil, fmt.Errorf("dhpp-controller informers: %w", err)
	}
	return c, nil
}

func indexPVByNode(obj any) ([]string, error) {
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok {
		return nil, nil
	}
	if v, ok := dhppVolume(pv); ok {
		return []string{v.Node}, nil
	}
	return nil, nil
}

// usesClaim reports whether the pod mounts the claim.
func usesClaim(pod *corev1.Pod, claim string) bool {
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
			return true
		}
	}
	return false
}

func unwrap(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

func (c *Controller) enqueuePV(obj any) {
	if pv, ok := unwrap(obj).(*corev1.PersistentVolume); ok {
		if _, ok := dhppVolume(pv); ok {
			c.queue.Add(pv.Name)
		}
	}
}

// enqueueNode queues every dhpp PV on the node: a Node change (deleted,
// tainted, fenced label) is what decides their fate.
func (c *Controller) enqueueNode(obj any) {
	n, ok := unwrap(obj).(*corev1.Node)
	if !ok {
		return
	}
	pvs, err := c.pvInf.GetIndexer().ByIndex(pvByNode, n.Name)
	if err != nil {
		klog.ErrorS(err, "Listing PVs of a node", "node", n.Name)
		return
	}
	for _, o := range pvs {
		c.enqueuePV(o)
	}
}

func (c *Controller) enqueueClaim(obj any) {
	if pvc, ok := unwrap(obj).(*corev1.PersistentVolumeClaim); ok && pvc.Spec.VolumeName != "" {
		c.queue.Add(pvc.Spec.VolumeName)
	}
}

// enqueuePending queues a claim that may be a restore or clone waiting for
// a node (the full check is placeClaim's).
func (c *Controller) enqueuePending(obj any) {
	pvc, ok := unwrap(obj).(*corev1.PersistentVolumeClaim)
	if ok && pvc.Spec.VolumeName == "" && dataSource(pvc) != nil {
		c.side.Add(sideKey{kind: sideClaim, key: pvc.Namespace + "/" + pvc.Name})
	}
}

func (c *Controller) enqueueContent(obj any) {
	if content, ok := unwrap(obj).(*snapshotv1.VolumeSnapshotContent); ok {
		if _, ok := preProvisioned(content); ok {
			c.side.Add(sideKey{kind: sideContent, key: content.Name})
		}
	}
}

// Run starts the informers and works the queues until ctx is done. Only
// the leader calls it. The snapshot API is waited for apart: the node-loss
// work never depends on it.
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer c.queue.ShutDown()
	defer c.side.ShutDown()
	c.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return ctx.Err()
	}
	klog.InfoS("dhpp-controller acting on lost nodes and fenced pools", "gracePeriod", c.opts.Grace,
		"fencedPoolLimit", c.opts.FenceLimit, "dryRun", c.opts.DryRun)
	go func() { <-ctx.Done(); c.queue.ShutDown(); c.side.ShutDown() }()
	var wg sync.WaitGroup
	wg.Go(func() { c.snaps.run(ctx, c.lookupSnapshotAPI, c.enqueueContent) })
	for range workers {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	wg.Go(func() {
		for c.processSide(ctx) {
		}
	})
	wg.Wait()
	return nil
}

// processSide works one item of the snapshot jobs' queue.
func (c *Controller) processSide(ctx context.Context) bool {
	item, quit := c.side.Get()
	if quit {
		return false
	}
	defer c.side.Done(item)
	var after time.Duration
	var err error
	switch item.kind {
	case sideClaim:
		after, err = c.placeClaim(ctx, item.key)
	case sideContent:
		after, err = c.labelContent(ctx, item.key)
	}
	if requeue(ctx, c.side, item, after, err) {
		klog.ErrorS(err, "Snapshot placement or labelling failed; retrying", item.kind, item.key)
	}
	return true
}

func (c *Controller) processNext(ctx context.Context) bool {
	name, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(name)
	after, err := c.sync(ctx, name)
	if requeue(ctx, c.queue, name, after, err) {
		klog.ErrorS(err, "Handling a dhpp volume failed; retrying", "pv", name)
	}
	return true
}

// requeue files a worked item: after a failure (unless shutting down) it
// comes back with the queue's backoff, and it reports true so the caller
// logs the error; an item that asked to be looked at again comes back
// after that delay; otherwise its backoff is forgotten.
func requeue[T comparable](ctx context.Context, q workqueue.TypedRateLimitingInterface[T], item T, after time.Duration, err error) bool {
	switch {
	case err != nil && ctx.Err() == nil:
		q.AddRateLimited(item)
		return true
	case after > 0:
		q.Forget(item)
		q.AddAfter(item, after)
	default:
		q.Forget(item)
	}
	return false
}
