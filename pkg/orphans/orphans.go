// Package orphans compares this node's volumes with the cluster's
// PersistentVolumes, in both directions:
//
//   - an orphan is a volume on this node's pools whose PV no longer exists
//     (typically a node that comes back after dhpp-controller released its
//     claims). It is reported (log, Warning Event on the Node, the gauge
//     dhpp_orphan_volumes) and moved to the pool's trash through the
//     Manager, which purges it after --trash-retention; never deleted
//     outright.
//   - a missing volume is a Bound PV of this node whose volume is not on
//     the node (a replaced or wiped disk). It is reported (log, Warning
//     Event on the claim, the gauge dhpp_missing_volumes); nothing is done.
//
// Both act only on unambiguous signals: the PVs are listed periodically and
// a listing that failed, even halfway through its pages, counts as nothing.
// A volume is an orphan only when every successful listing over the whole
// grace period lacked its PV and the volume itself is older than the grace.
// And when every volume of the node looks orphaned and there are more than a
// few, nothing is trashed: an empty listing from the wrong API server or a
// wrong RBAC rule must not empty a disk. That is reported instead.
package orphans

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/node"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// Event reasons.
const (
	// ReasonOrphanVolume: a volume without a PV, on the Node.
	ReasonOrphanVolume = "OrphanVolume"
	// ReasonOrphanTrashRefused: every volume of the node looks orphaned;
	// none is trashed. On the Node.
	ReasonOrphanTrashRefused = "OrphanTrashRefused"
	// ReasonVolumeMissing: a Bound PV of this node without its volume, on
	// the PV's claim.
	ReasonVolumeMissing = "VolumeMissing"
)

// MaxUnguarded is how many orphans may be trashed at once even when they
// are all the node's volumes: a node that held one or two released
// replicas comes back with only those, and they must go; more than this
// many, with nothing else on the node, looks like a wrong listing.
const MaxUnguarded = 3

// pageSize bounds one page of the PV listing. The API server serves
// resourceVersion "0" from its watch cache; versions that cannot paginate
// from the cache ignore the limit and answer in one page.
const pageSize = 500

// Volumes is what the check needs of the node's volumes (*node.Manager):
// only exported methods, and DeleteVolume is the trash (never a removal).
type Volumes interface {
	ListVolumes() []*node.Volume
	GetVolume(id string) (*node.Volume, error)
	DeleteVolume(ctx context.Context, id string) error
}

// Lister lists PersistentVolumes (kube.API).
type Lister interface {
	ListPersistentVolumes(ctx context.Context, opts metav1.ListOptions) (*corev1.PersistentVolumeList, error)
}

// Events posts Events (*kube.NodeEvents); neither call blocks.
type Events interface {
	Post(typ, reason, msg string)
	PostOn(obj corev1.ObjectReference, typ, reason, msg string)
}

// Config is a Checker's setting.
type Config struct {
	NodeID string
	// Pools are the node's pool names (every gauge has a series for each).
	Pools   []string
	Volumes Volumes
	API     Lister
	Events  Events
	// Grace is how long a volume must lack its PV (and a PV its volume)
	// before it counts; also the minimum age of an orphan.
	Grace time.Duration
	// Period is the time between two listings (jittered by up to +10%).
	Period time.Duration
	// Trash moves orphans to the trash; false only reports them.
	Trash bool
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// Checker runs the comparison every Period.
type Checker struct {
	cfg Config
	now func() time.Time

	// Only check (one goroutine) writes the maps below; mu guards them
	// against the metrics' reads.
	mu sync.Mutex
	// absentSince: volume ID → the first successful listing, of the
	// current run, that lacked its PV.
	absentSince map[string]time.Time
	// reported: orphans whose Event was posted (once per run).
	reported map[string]bool
	// refusing: the guard refused to trash (its Event posted once).
	refusing bool
	// missingSince / missingReported: the same for PVs, by PV UID.
	missingSince    map[types.UID]time.Time
	missingReported map[types.UID]bool
	// orphans and missing per pool, for the gauges.
	orphans, missing map[string]int
	// trashed per pool and failed listings, for the counters.
	trashed      map[string]int
	listFailures int
}

// New returns a Checker; it does nothing until Run.
func New(cfg Config) *Checker {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Checker{
		cfg: cfg, now: now,
		absentSince: map[string]time.Time{}, reported: map[string]bool{},
		missingSince: map[types.UID]time.Time{}, missingReported: map[types.UID]bool{},
		orphans: map[string]int{}, missing: map[string]int{}, trashed: map[string]int{},
	}
}

// Run checks at once and then every Period until ctx is done; it never
// fails (a failed listing is logged, counted and retried next period).
func (c *Checker) Run(ctx context.Context) error {
	for {
		c.Check(ctx)
		jitter := time.Duration(rand.Int64N(int64(c.cfg.Period)/10 + 1))
		t := time.NewTimer(c.cfg.Period + jitter)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// Check lists the PVs once and acts on what the listing shows.
func (c *Checker) Check(ctx context.Context) {
	pvs, err := c.listPVs(ctx)
	if err != nil {
		c.mu.Lock()
		c.listFailures++
		c.mu.Unlock()
		klog.ErrorS(err, "Listing PersistentVolumes failed; orphaned and missing volumes are not judged this round", "node", c.cfg.NodeID)
		return
	}
	at := c.now()
	c.checkOrphans(ctx, pvs, at)
	c.checkMissing(pvs, at)
}

// listPVs lists every PV of this driver, all pages, from the API server's
// cache (resourceVersion "0"): any error, on any page, fails the listing.
func (c *Checker) listPVs(ctx context.Context) ([]corev1.PersistentVolume, error) {
	var out []corev1.PersistentVolume
	opts := metav1.ListOptions{ResourceVersion: "0", Limit: pageSize}
	for {
		l, err := c.cfg.API.ListPersistentVolumes(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("list PersistentVolumes (%d listed before): %w", len(out), err)
		}
		for _, pv := range l.Items {
			if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == dhpp.DriverName {
				out = append(out, pv)
			}
		}
		if l.Continue == "" {
			return out, nil
		}
		// A continued listing names the same snapshot; the resource
		// version must not be sent with it.
		opts = metav1.ListOptions{Limit: pageSize, Continue: l.Continue}
	}
}

// checkOrphans judges this node's volumes against a successful listing
// made at at.
func (c *Checker) checkOrphans(ctx context.Context, pvs []corev1.PersistentVolume, at time.Time) {
	handles := make(map[string]bool, len(pvs))
	for _, pv := range pvs {
		handles[pv.Spec.CSI.VolumeHandle] = true
	}
	vols := c.cfg.Volumes.ListVolumes()
	var orphans []*node.Volume
	c.mu.Lock()
	seen := make(map[string]bool, len(vols))
	for _, v := range vols {
		seen[v.ID] = true
		if handles[v.ID] {
			delete(c.absentSince, v.ID)
			delete(c.reported, v.ID)
			continue
		}
		since, ok := c.absentSince[v.ID]
		if !ok {
			since = at
			c.absentSince[v.ID] = at
		}
		if at.Sub(since) >= c.cfg.Grace && at.Sub(v.CreatedAt) >= c.cfg.Grace {
			orphans = append(orphans, v)
		}
	}
	for id := range c.absentSince {
		if !seen[id] {
			delete(c.absentSince, id)
			delete(c.reported, id)
		}
	}
	c.mu.Unlock()

	if len(orphans) == len(vols) && len(orphans) > MaxUnguarded {
		c.refuse(orphans, len(pvs))
		return
	}
	c.mu.Lock()
	c.refusing = false
	c.mu.Unlock()
	left := map[string]int{}
	for _, v := range orphans {
		if !c.handle(ctx, v, at) {
			left[v.Pool]++
		}
	}
	c.setGauge(c.orphans, left)
}

// refuse reports, once per run, that every volume of the node looks
// orphaned, and trashes none of them.
func (c *Checker) refuse(orphans []*node.Volume, listed int) {
	perPool := map[string]int{}
	for _, v := range orphans {
		perPool[v.Pool]++
	}
	c.setGauge(c.orphans, perPool)
	c.mu.Lock()
	first := !c.refusing
	c.refusing = true
	c.mu.Unlock()
	msg := fmt.Sprintf("all %d volumes on node %s have had no PersistentVolume for at least %s (the listing found %d PersistentVolumes of %s in the cluster). "+
		"That looks like a wrong listing (another API server, missing RBAC), not like orphans: none is moved to the trash. "+
		"If they really are orphans, move each volumes/<name> directory to <pool>/.dhpp/trash/ by hand", len(orphans), c.cfg.NodeID, c.cfg.Grace, listed, dhpp.DriverName)
	klog.ErrorS(nil, "Not trashing orphaned volumes: every volume of the node looks orphaned", "node", c.cfg.NodeID, "volumes", len(orphans), "listedPVs", listed)
	if first {
		c.cfg.Events.Post(corev1.EventTypeWarning, ReasonOrphanTrashRefused, msg)
	}
}

// handle reports an orphan (once) and, if trashing is on, moves it to the
// trash. It reports whether the volume is gone from the pool.
func (c *Checker) handle(ctx context.Context, v *node.Volume, at time.Time) bool {
	c.mu.Lock()
	first := !c.reported[v.ID]
	c.reported[v.ID] = true
	absent := at.Sub(c.absentSince[v.ID])
	c.mu.Unlock()
	if first {
		c.report(v, absent)
	}
	if !c.cfg.Trash {
		return false
	}
	if err := c.cfg.Volumes.DeleteVolume(ctx, v.ID); err != nil {
		// Mounted, busy, or the disk refuses: kept and retried next round.
		klog.ErrorS(err, "Could not move an orphaned volume to the trash; retrying next round", "volume", v.ID)
		return false
	}
	klog.InfoS("Moved an orphaned volume to the trash", "volume", v.ID, "pool", v.Pool)
	c.mu.Lock()
	c.trashed[v.Pool]++
	delete(c.absentSince, v.ID)
	delete(c.reported, v.ID)
	c.mu.Unlock()
	return true
}

// report logs an orphan and posts its Warning Event on the Node.
func (c *Checker) report(v *node.Volume, absent time.Duration) {
	what := "Moving it to the pool's trash (.dhpp/trash/" + v.Name + "@<time>), purged after --trash-retention; to keep it, move it back to volumes/" + v.Name + " and restart the driver before then"
	if !c.cfg.Trash {
		what = "Trashing is off (--orphan-trash=false): copy the data out or move volumes/" + v.Name + " to the pool's .dhpp/trash/ by hand"
	}
	msg := fmt.Sprintf("volume %s (pool %q, %s, created %s%s) has had no PersistentVolume for %s. %s",
		v.ID, v.Pool, sizeString(v.CapacityBytes), v.CreatedAt.UTC().Format(time.RFC3339), claimOf(v), absent.Round(time.Second), what)
	klog.InfoS("Orphaned volume: no PersistentVolume names it", "volume", v.ID, "pool", v.Pool, "absentFor", absent.Round(time.Second), "trash", c.cfg.Trash)
	c.cfg.Events.Post(corev1.EventTypeWarning, ReasonOrphanVolume, msg)
}

// checkMissing judges the Bound PVs of this node against its volumes.
func (c *Checker) checkMissing(pvs []corev1.PersistentVolume, at time.Time) {
	perPool := map[string]int{}
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[types.UID]bool{}
	for i := range pvs {
		pv := &pvs[i]
		vid, err := node.ParseVolumeID(pv.Spec.CSI.VolumeHandle)
		if err != nil || vid.Node != c.cfg.NodeID || pv.Status.Phase != corev1.VolumeBound || pv.DeletionTimestamp != nil {
			continue
		}
		why := c.missingReason(pv.Spec.CSI.VolumeHandle)
		if why == "" {
			continue
		}
		seen[pv.UID] = true
		since, ok := c.missingSince[pv.UID]
		if !ok {
			since = at
			c.missingSince[pv.UID] = at
		}
		if at.Sub(since) < c.cfg.Grace || at.Sub(pv.CreationTimestamp.Time) < c.cfg.Grace {
			continue
		}
		perPool[vid.Pool]++
		if !c.missingReported[pv.UID] {
			c.missingReported[pv.UID] = true
			c.reportMissing(pv, vid, why, at.Sub(since))
		}
	}
	for uid := range c.missingSince {
		if !seen[uid] {
			delete(c.missingSince, uid)
			delete(c.missingReported, uid)
		}
	}
	c.setGaugeLocked(c.missing, perPool)
}

// missingReason says why a PV's volume is not on this node, or "" when it
// is there or another report covers it (a missing pool directory is a
// fenced pool; a quarantined record has its own Event).
func (c *Checker) missingReason(handle string) string {
	_, err := c.cfg.Volumes.GetVolume(handle)
	switch {
	case err == nil, errors.Is(err, node.ErrPoolMissing), errors.Is(err, node.ErrQuarantined):
		return ""
	case errors.Is(err, node.ErrNotFound):
		return err.Error()
	default:
		klog.V(2).InfoS("Cannot tell whether a volume is on the node", "volume", handle, "err", err)
		return ""
	}
}

// reportMissing logs a missing volume and posts a Warning Event on its
// claim (on the Node when the PV names no claim).
func (c *Checker) reportMissing(pv *corev1.PersistentVolume, vid node.VolumeID, why string, missing time.Duration) {
	klog.ErrorS(nil, "A Bound PersistentVolume's volume is not on this node", "pv", pv.Name, "volume", vid.String(), "missingFor", missing.Round(time.Second), "reason", why)
	msg := fmt.Sprintf("the volume %s of PersistentVolume %s is not on node %s (%s) for %s: a pod using this claim cannot start. "+
		"If the disk holding pool %q was replaced or wiped, the data is gone: delete this claim (and then the PV) to get a new, empty volume; "+
		"if the disk is only not mounted, mount it at the pool's path and restart the driver",
		vid, pv.Name, c.cfg.NodeID, why, missing.Round(time.Second), vid.Pool)
	ref := pv.Spec.ClaimRef
	if ref == nil {
		c.cfg.Events.Post(corev1.EventTypeWarning, ReasonVolumeMissing, msg)
		return
	}
	c.cfg.Events.PostOn(corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ref.Namespace, Name: ref.Name, UID: ref.UID},
		corev1.EventTypeWarning, ReasonVolumeMissing, msg)
}

// setGauge replaces a gauge's values: every pool of the node, 0 unless
// counted.
func (c *Checker) setGauge(g map[string]int, counts map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setGaugeLocked(g, counts)
}

func (c *Checker) setGaugeLocked(g map[string]int, counts map[string]int) {
	for _, p := range c.cfg.Pools {
		g[p] = counts[p]
	}
}

// claimOf names the claim a volume was made for, if its record says.
func claimOf(v *node.Volume) string {
	// The keys pkg/driver records from csi-provisioner's
	// --extra-create-metadata.
	ns, name, pv := v.Labels["namespace"], v.Labels["pvc"], v.Labels["pv"]
	var parts []string
	if name != "" {
		parts = append(parts, "for claim "+ns+"/"+name)
	}
	if pv != "" {
		parts = append(parts, "PV "+pv)
	}
	if len(parts) == 0 {
		return ""
	}
	return ", " + strings.Join(parts, ", ")
}

// sizeString is a size in MiB or GiB, for messages.
func sizeString(b int64) string {
	if b >= 1<<30 && b%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", b>>30)
	}
	return fmt.Sprintf("%d MiB", b>>20)
}

// snapshot returns copies of the metric state, pools sorted.
func (c *Checker) snapshot() (pools []string, orphans, missing, trashed map[string]int, listFailures int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := func(m map[string]int) map[string]int {
		out := make(map[string]int, len(m))
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	pools = append([]string(nil), c.cfg.Pools...)
	sort.Strings(pools)
	return pools, cp(c.orphans), cp(c.missing), cp(c.trashed), c.listFailures
}
