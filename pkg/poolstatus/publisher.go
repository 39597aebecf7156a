// Package poolstatus publishes each pool of a node as a DhppPool object
// (pkg/apis/dhpp/v1alpha1): its figures, health, RAID state and trash, so
// `kubectl get dhpppools` and `kubectl dhpp` answer without SSH. It also
// honours spec.fence, an operator's request to fence a pool for planned
// maintenance, through the health monitor's manual fence (which the
// Fencer in pkg/kube mirrors onto the Node as usual), and spec.restores,
// requests to take trash entries back as live volumes (restore.go).
//
// Writes: a status is computed every Period (30 s), and soon after a
// pool's contents change (Config.Changed: a volume created or deleted, a
// snapshot, the trash), its health changes or its object changes, at most
// one round per MinInterval (2 s), so a burst of changes costs one write
// per pool per 2 s. It is written only when it differs from what the API
// server holds, or when it is older than Refresh (5 min, so a dead driver
// shows as a stale updatedAt). docs/design.md has the rate at 100 nodes.
package poolstatus

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
)

// Defaults of Config.
const (
	DefaultPeriod      = 30 * time.Second
	DefaultMinInterval = 2 * time.Second
	DefaultRefresh     = 5 * time.Minute
)

// Health is the health monitor as the publisher uses it (*health.Monitor).
type Health interface {
	Status(pool string) (health.Status, bool)
	Fence(pool, message string) error
	OnChange(f func(old, new health.Status))
}

// Config configures a Publisher.
type Config struct {
	Client   dynamic.Interface
	NodeName string
	// NodeUID returns the Node's UID for the owner reference that deletes
	// the objects with the Node (a GET of the Node; retried until it works).
	NodeUID func(ctx context.Context) (string, error)
	// Pools lists the node's pools' figures at the time of the call.
	Pools  func() []PoolInfo
	Health Health
	// Degraded tells a pool's RAID degradation (*raid.Watcher.PoolDegraded).
	Degraded func(pool string) (bool, string)
	// Trash lists a pool's trash (TrashOf node.Pool.Trash with the retention).
	Trash func(pi PoolInfo) (v1.Trash, error)
	// Restore carries out spec.restores (nil: every request fails).
	Restore RestoreFunc
	// MountTable reads the driver's mount table, where each pool's mount
	// and its propagation are looked up (default mountinfo.Read of
	// /proc/self/mountinfo).
	MountTable func() ([]mount.MountInfo, error)
	// Changed receives a token after any change of the pools' volumes,
	// snapshots or trash (node.Manager.Changed); nil: only Period, health
	// and object changes cause a round.
	Changed <-chan struct{}
	Version string

	// Period is the round without changes; MinInterval the least time
	// between two rounds, which coalesces a burst of changes.
	Period, MinInterval, Refresh time.Duration
	Now                          func() time.Time
}

// Publisher keeps the node's DhppPool objects up to date.
type Publisher struct {
	cfg     Config
	inf     cache.SharedIndexInformer
	trigger chan struct{}
	uid     string
}

// New returns a Publisher; Run starts it.
func New(cfg Config) (*Publisher, error) {
	if cfg.Client == nil || cfg.NodeName == "" || cfg.NodeUID == nil || cfg.Pools == nil || cfg.Health == nil {
		return nil, errors.New("pool status publisher: client, node name, node UID, pools and health are required")
	}
	if cfg.Period <= 0 {
		cfg.Period = DefaultPeriod
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Degraded == nil {
		cfg.Degraded = func(string) (bool, string) { return false, "" }
	}
	if cfg.MountTable == nil {
		cfg.MountTable = func() ([]mount.MountInfo, error) { return mountinfo.Read("") }
	}
	if cfg.Trash == nil {
		cfg.Trash = func(PoolInfo) (v1.Trash, error) { return v1.Trash{}, nil }
	}
	p := &Publisher{cfg: cfg, trigger: make(chan struct{}, 1)}
	sel := labels.SelectorFromSet(labels.Set{v1.LabelNode: cfg.NodeName}).String()
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(cfg.Client, 0, "",
		func(o *metav1.ListOptions) { o.LabelSelector = sel })
	p.inf = f.ForResource(v1.GroupVersionResource).Informer()
	if _, err := p.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { p.poke() },
		UpdateFunc: func(old, new any) { p.pokeOnSpec(old, new) },
	}); err != nil {
		return nil, fmt.Errorf("pool status publisher: event handler: %w", err)
	}
	// A health change is published at once, not at the next period.
	cfg.Health.OnChange(func(_, _ health.Status) { p.poke() })
	return p, nil
}

// poke asks for a round soon; it never blocks.
func (p *Publisher) poke() {
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

// pokeOnSpec asks for a round when an object's spec changed (a fence or
// restore request), not for the publisher's own status writes: a round
// after each write would change nothing and only delay the next change.
// The API server bumps metadata.generation on spec changes only; a client
// that keeps no generation (0) gets a round for every update.
func (p *Publisher) pokeOnSpec(old, new any) {
	o, ok1 := old.(*unstructured.Unstructured)
	n, ok2 := new.(*unstructured.Unstructured)
	if ok1 && ok2 && n.GetGeneration() != 0 && o.GetGeneration() == n.GetGeneration() {
		return
	}
	p.poke()
}

// Run publishes until ctx is done. API errors are logged and retried at the
// next round: the pool objects are a view, never the driver's state.
func (p *Publisher) Run(ctx context.Context) error {
	if err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		uid, err := p.cfg.NodeUID(ctx)
		if err != nil {
			klog.V(2).InfoS("Pool status: reading own Node", "node", p.cfg.NodeName, "err", err)
			return false, nil
		}
		p.uid = uid
		return true, nil
	}); err != nil {
		return nil // ctx done
	}
	go p.inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), p.inf.HasSynced) {
		return nil
	}
	klog.InfoS("Publishing pool status", "resource", v1.GroupVersionResource.String(), "node", p.cfg.NodeName, "period", p.cfg.Period)
	t := time.NewTicker(p.cfg.Period)
	defer t.Stop()
	for {
		last := time.Now()
		if err := p.Sync(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Publishing pool status failed; retrying next round", "node", p.cfg.NodeName)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-p.trigger:
		case <-p.cfg.Changed:
		}
		// Bound the rate of rounds a burst of changes causes: the changes
		// that arrive meanwhile are merged into the next round (both
		// channels hold one token), which reads the state after them all.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(last.Add(p.cfg.MinInterval))):
		}
	}
}

// cached returns the informer's copy of a pool's object, nil if none.
func (p *Publisher) cached(name string) (*v1.DhppPool, error) {
	obj, ok, err := p.inf.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil, err
	}
	u, _ := obj.(*unstructured.Unstructured)
	if u == nil {
		return nil, nil
	}
	return v1.FromUnstructured(u)
}

// Sync does one round: every pool's requested fence is applied, its
// object created if missing and its status written if it changed; the
// objects of pools this node no longer has are deleted.
func (p *Publisher) Sync(ctx context.Context) error {
	var errs []error
	have := map[string]bool{}
	for _, pi := range p.cfg.Pools() {
		have[v1.Name(p.cfg.NodeName, pi.Name)] = true
		if err := p.syncPool(ctx, pi); err != nil {
			errs = append(errs, fmt.Errorf("pool %q: %w", pi.Name, err))
		}
	}
	if err := p.prune(ctx, have); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// prune deletes this node's objects whose pool is no longer configured
// (--pool removed), so they do not linger as stale pools. Only objects
// that name this node in their spec and label are touched, and the delete
// is preconditioned on the UID seen.
func (p *Publisher) prune(ctx context.Context, have map[string]bool) error {
	var errs []error
	for _, obj := range p.inf.GetStore().List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok || have[u.GetName()] || u.GetLabels()[v1.LabelNode] != p.cfg.NodeName {
			continue
		}
		old, err := v1.FromUnstructured(u)
		if err != nil || old.Spec.Node != p.cfg.NodeName {
			continue
		}
		uid := u.GetUID()
		err = p.cfg.Client.Resource(v1.GroupVersionResource).Delete(ctx, u.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s %s of a pool this node no longer has: %w", v1.Kind, u.GetName(), err))
			continue
		}
		klog.InfoS("Deleted the status object of a pool this node no longer has", "kind", v1.Kind, "name", u.GetName(), "pool", old.Spec.Pool)
	}
	return errors.Join(errs...)
}

func (p *Publisher) syncPool(ctx context.Context, pi PoolInfo) error {
	name := v1.Name(p.cfg.NodeName, pi.Name)
	cur, err := p.cached(name)
	if err != nil {
		return err
	}
	if cur == nil {
		if cur, err = p.create(ctx, name, pi.Name); err != nil {
			return err
		}
	}
	if err := p.applyFence(ctx, cur); err != nil {
		return err
	}
	// Restores first: the trash and figures read next then show them.
	restores := p.restores(ctx, cur)
	if len(restores) > 0 {
		pi = p.refresh(pi)
	}
	want, err := p.status(pi)
	if err != nil {
		return err
	}
	want.Restores = restores
	if p.upToDate(cur.Status, want) {
		return nil
	}
	want.UpdatedAt = metav1.NewTime(p.cfg.Now().UTC().Truncate(time.Second))
	next := cur.DeepCopy()
	next.Status = want
	u, err := v1.ToUnstructured(next)
	if err != nil {
		return err
	}
	if _, err := p.cfg.Client.Resource(v1.GroupVersionResource).UpdateStatus(ctx, u, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of %s %s: %w", v1.Kind, name, err)
	}
	return nil
}

// upToDate reports whether the published status says what want says and is
// recent enough not to look stale.
func (p *Publisher) upToDate(have, want v1.DhppPoolStatus) bool {
	if p.cfg.Now().Sub(have.UpdatedAt.Time) >= p.cfg.Refresh {
		return false
	}
	have.UpdatedAt = metav1.Time{}
	if sameLatencyClass(have.Health.ProbeLatencyMicros, want.Health.ProbeLatencyMicros) {
		want.Health.ProbeLatency, want.Health.ProbeLatencyMicros = have.Health.ProbeLatency, have.Health.ProbeLatencyMicros
	}
	return reflect.DeepEqual(normalize(have), normalize(want))
}

// sameLatencyClass reports whether two probe latencies (µs) are within a
// factor of 10 of each other. The probe latency alone does not make a round
// write: on a busy node it swings between, say, 5 ms and 40 ms from one probe
// to the next, and with it in the comparison every 30 s round of an idle pool
// was a write (measured by make bench-scale: one write per ~32 s per pool
// instead of one per 5 min). A move by an order of magnitude (a disk turning
// slow) is written at once; smaller moves go out with the next write for
// another reason or the 5 min refresh. dhpp_health_probe_duration_seconds has
// the current figure.
func sameLatencyClass(a, b int64) bool {
	if a <= 0 || b <= 0 {
		return a == b
	}
	return a < 10*b && b < 10*a
}

// normalize makes a status read back from the API server comparable with
// one built here (empty and nil lists, time zones).
func normalize(s v1.DhppPoolStatus) v1.DhppPoolStatus {
	if len(s.Trash.Items) == 0 {
		s.Trash.Items = nil
	}
	if len(s.Restores) == 0 {
		s.Restores = nil
	}
	for i := range s.Restores {
		s.Restores[i].RequestedAt = utc(s.Restores[i].RequestedAt)
	}
	for i := range s.Trash.Items {
		e := &s.Trash.Items[i]
		e.DeletedAt, e.PurgeAt = utc(e.DeletedAt), utc(e.PurgeAt)
	}
	s.Health.Since = utc(s.Health.Since)
	return s
}

func utc(t metav1.Time) metav1.Time {
	if t.IsZero() {
		return metav1.Time{}
	}
	return metav1.NewTime(t.UTC().Truncate(time.Second))
}

func (p *Publisher) status(pi PoolInfo) (v1.DhppPoolStatus, error) {
	hs, ok := p.cfg.Health.Status(pi.Name)
	if !ok {
		return v1.DhppPoolStatus{}, fmt.Errorf("no health state (pool not probed)")
	}
	degraded, detail := p.cfg.Degraded(pi.Name)
	if pi.Mount == nil {
		infos, err := p.cfg.MountTable()
		if err != nil {
			klog.V(2).InfoS("Pool status: mount table unreadable", "pool", pi.Name, "err", err)
		}
		pi.Mount = MountOf(infos, pi.Path)
	}
	var trash v1.Trash
	if pi.Missing == nil {
		t, err := p.cfg.Trash(pi)
		if err != nil {
			klog.V(2).InfoS("Pool status: trash unreadable", "pool", pi.Name, "err", err)
		}
		trash = t
	}
	return buildStatus(pi, hs, degraded, detail, trash, p.cfg.Version), nil
}

// create makes the pool's object, owned by the Node so that deleting the
// Node deletes it (garbage collector).
func (p *Publisher) create(ctx context.Context, name, pool string) (*v1.DhppPool, error) {
	obj := &v1.DhppPool{
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{v1.LabelNode: p.cfg.NodeName, v1.LabelPool: pool},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: p.cfg.NodeName, UID: types.UID(p.uid),
			}},
		},
		Spec: v1.DhppPoolSpec{Node: p.cfg.NodeName, Pool: pool},
	}
	u, err := v1.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	out, err := p.cfg.Client.Resource(v1.GroupVersionResource).Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// Made by an earlier run the informer has not shown yet.
		out, err = p.cfg.Client.Resource(v1.GroupVersionResource).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("create %s %s: %w", v1.Kind, name, err)
	}
	klog.InfoS("Created pool status object", "kind", v1.Kind, "name", name)
	return v1.FromUnstructured(out)
}

// FenceMessagePrefix starts the health message of a pool fenced through
// spec.fence.
const FenceMessagePrefix = "fenced for maintenance (DhppPool spec.fence): "

// applyFence fences the pool if its object asks for it and it is not fenced
// yet. The request is read again from the API server first: the cached
// copy may predate an unfence that cleared it, and re-fencing a pool just
// unfenced would undo the operator's action.
func (p *Publisher) applyFence(ctx context.Context, cur *v1.DhppPool) error {
	if cur.Spec.Fence == nil {
		return nil
	}
	if s, ok := p.cfg.Health.Status(cur.Spec.Pool); !ok || s.State == health.Fenced {
		return nil
	}
	u, err := p.cfg.Client.Resource(v1.GroupVersionResource).Get(ctx, cur.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read %s %s before fencing: %w", v1.Kind, cur.Name, err)
	}
	live, err := v1.FromUnstructured(u)
	if err != nil || live.Spec.Fence == nil {
		return err
	}
	if err := p.cfg.Health.Fence(cur.Spec.Pool, FenceMessagePrefix+live.Spec.Fence.Reason); err != nil {
		return err
	}
	klog.InfoS("Pool fenced by its DhppPool spec.fence", "pool", cur.Spec.Pool, "reason", live.Spec.Fence.Reason)
	return nil
}
