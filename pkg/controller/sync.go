package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// Annotations the controller keeps on a PV, so that what it observed and
// decided survives a restart or a change of leader (nothing is kept only in
// memory, outside --dry-run).
const (
	// AnnotationLostSince is when the volume was first seen lost (RFC 3339):
	// the earliest time the API shows for the signal, or the time this
	// controller first saw it. The grace period counts from here. Removed
	// when the signal goes away before the release.
	AnnotationLostSince = "dhpp.io/lost-since"
	// AnnotationReleased marks a PV whose claim the controller decided to
	// release ("<signal> at <time>"): the remaining steps (claim deletion,
	// evictions, PV removal) continue after any restart, and nothing else
	// re-decides.
	AnnotationReleased = "dhpp.io/released"
)

// sync decides about one PV. It returns how long to wait before looking at
// it again (0: only on the next change or resync).
func (c *Controller) sync(ctx context.Context, name string) (time.Duration, error) {
	obj, exists, err := c.pvInf.GetIndexer().GetByKey(name)
	if err != nil || !exists {
		return 0, err
	}
	cached, ok := obj.(*corev1.PersistentVolume)
	if !ok {
		return 0, nil
	}
	vol, ok := dhppVolume(cached)
	if !ok {
		return 0, nil
	}
	node, err := c.nodes.Get(vol.Node)
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, err
	}
	if sig := nodeSignal(node, vol.Pool, c.opts.FenceLimit); sig.Kind == SignalNone {
		return 0, c.noSignal(ctx, cached, vol)
	}

	// The cache says the volume may be lost: from here on every fact is
	// read from the API server itself, never from a possibly stale cache.
	pv, err := c.client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	node, err = c.liveNode(ctx, vol.Node)
	if err != nil {
		return 0, err
	}
	sig := nodeSignal(node, vol.Pool, c.opts.FenceLimit)
	if sig.Kind == SignalNone {
		return 0, c.noSignal(ctx, pv, vol)
	}
	claim, err := c.liveClaim(ctx, pv)
	if err != nil {
		return 0, err
	}
	if _, ok := pv.Annotations[AnnotationReleased]; ok {
		return c.release(ctx, pv, vol, sig, claim)
	}
	if claim == nil || claim.DeletionTimestamp != nil {
		// Not bound, or its claim is already being deleted by someone
		// else: there is nothing to release.
		return 0, nil
	}
	pol := resolvePolicy(claim, c.class(pv.Spec.StorageClassName))
	since, pv, err := c.lostSince(ctx, pv, vol, sig)
	if err != nil {
		return 0, err
	}
	limit := c.opts.Grace
	if sig.Kind == SignalPoolFenced {
		limit = c.opts.FenceLimit
	}
	if wait := since.Add(limit).Sub(c.now()); wait > 0 {
		klog.V(2).InfoS("Lost volume within its grace period", "pv", pv.Name, "node", vol.Node, "signal", sig.Kind, "policy", pol.Policy, "actIn", wait.Round(time.Second))
		return wait, nil
	}
	if pol.Policy != PolicyRecreate {
		return 0, c.warnKeep(ctx, pv, vol, sig, since, claim, pol)
	}
	if c.opts.DryRun {
		c.dryRun(pv, vol, sig, claim)
		return 0, nil
	}
	if pv, err = c.markReleased(ctx, pv, vol, sig, pol); err != nil {
		return 0, err
	}
	return c.release(ctx, pv, vol, sig, claim)
}

// noSignal handles a PV whose node and pool are fine (again): it forgets
// a loss it had recorded, and calls off a release that has not deleted the
// claim yet. A release that has is finished by the node's own provisioner.
func (c *Controller) noSignal(ctx context.Context, pv *corev1.PersistentVolume, vol volume) error {
	c.forget(pv)
	_, lost := pv.Annotations[AnnotationLostSince]
	_, released := pv.Annotations[AnnotationReleased]
	if !lost && !released {
		return nil
	}
	if released {
		claim, err := c.cachedClaim(pv)
		if err != nil || claim == nil || claim.DeletionTimestamp != nil {
			return err
		}
	}
	klog.InfoS("Volume no longer lost: its node and pool are back", "pv", pv.Name, "node", vol.Node, "pool", vol.Pool)
	if c.opts.DryRun {
		return nil
	}
	return c.patchAnnotations(ctx, pv, map[string]any{AnnotationLostSince: nil, AnnotationReleased: nil})
}

// release carries out the release of a PV marked AnnotationReleased. Each
// step checks the API first, so running it again (a retry, a new leader)
// never repeats an action that was done.
func (c *Controller) release(ctx context.Context, pv *corev1.PersistentVolume, vol volume, sig signal, claim *corev1.PersistentVolumeClaim) (time.Duration, error) {
	if claim != nil && claim.DeletionTimestamp == nil {
		if err := c.deleteClaim(ctx, pv, vol, sig, claim); err != nil {
			return 0, err
		}
		var err error
		if claim, err = c.liveClaim(ctx, pv); err != nil {
			return 0, err
		}
	}
	if claim != nil {
		// The claim stays (kubernetes.io/pvc-protection) while pods use
		// it. A gone node's pods are removed by Kubernetes (pod GC, the
		// out-of-service taint); a fenced pool's node still runs them.
		if sig.Kind == SignalPoolFenced {
			if err := c.evictPods(ctx, pv, vol, sig, claim); err != nil {
				return 0, err
			}
		}
		return c.opts.Retry, nil
	}
	if !sig.Kind.nodeGone() {
		// A fenced pool's node is alive: its provisioner deletes the
		// Released PV, and DeleteVolume moves the data to the pool's trash
		// when the disk allows it. Nothing for us to remove.
		return 0, nil
	}
	return 0, c.deleteVolume(ctx, pv, vol, sig)
}

func (c *Controller) liveNode(ctx context.Context, name string) (*corev1.Node, error) {
	n, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return n, err
}

// liveClaim is the claim the PV is bound to, read from the API server; nil
// when it is gone or a new claim of the same name (another UID) replaced it.
func (c *Controller) liveClaim(ctx context.Context, pv *corev1.PersistentVolume) (*corev1.PersistentVolumeClaim, error) {
	ref := pv.Spec.ClaimRef
	if ref == nil {
		return nil, nil
	}
	pvc, err := c.client.CoreV1().PersistentVolumeClaims(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if pvc.UID != ref.UID {
		return nil, nil
	}
	return pvc, nil
}

func (c *Controller) cachedClaim(pv *corev1.PersistentVolume) (*corev1.PersistentVolumeClaim, error) {
	ref := pv.Spec.ClaimRef
	if ref == nil {
		return nil, nil
	}
	pvc, err := c.claims.PersistentVolumeClaims(ref.Namespace).Get(ref.Name)
	if apierrors.IsNotFound(err) || (err == nil && pvc.UID != ref.UID) {
		return nil, nil
	}
	return pvc, err
}

func (c *Controller) class(name string) *storagev1.StorageClass {
	if name == "" {
		return nil
	}
	sc, err := c.classes.Get(name)
	if err != nil {
		return nil
	}
	return sc
}

// lostSince returns when the volume was first seen lost, recording it on
// the PV the first time, so the grace period survives a change of leader.
func (c *Controller) lostSince(ctx context.Context, pv *corev1.PersistentVolume, vol volume, sig signal) (time.Time, *corev1.PersistentVolume, error) {
	if v, ok := pv.Annotations[AnnotationLostSince]; ok {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			return t, pv, nil
		}
		klog.InfoS("Ignoring an unreadable annotation; recording the loss again", "pv", pv.Name, "annotation", AnnotationLostSince, "value", v)
	}
	now := c.now()
	since := sig.Since
	if since.IsZero() || since.After(now) {
		since = now
	}
	since = since.Truncate(time.Second)
	if c.opts.DryRun {
		return c.remember(pv, since), pv, nil
	}
	klog.InfoS("Volume lost", "pv", pv.Name, "node", vol.Node, "pool", vol.Pool, "signal", sig.Kind, "detail", sig.Detail, "since", since.Format(time.RFC3339))
	pv, err := c.patchPV(ctx, pv, map[string]any{AnnotationLostSince: since.Format(time.RFC3339)})
	return since, pv, err
}

// markReleased records the decision to release before acting on it.
func (c *Controller) markReleased(ctx context.Context, pv *corev1.PersistentVolume, vol volume, sig signal, pol resolved) (*corev1.PersistentVolume, error) {
	klog.InfoS("Releasing the claim of a lost volume", "pv", pv.Name, "claim", claimKey(pv), "node", vol.Node, "pool", vol.Pool,
		"signal", sig.Kind, "detail", sig.Detail, "policy", pol.Policy, "policySource", pol.Source)
	return c.patchPV(ctx, pv, map[string]any{AnnotationReleased: fmt.Sprintf("%s at %s", sig.Kind, c.now().UTC().Format(time.RFC3339))})
}

func (c *Controller) patchAnnotations(ctx context.Context, pv *corev1.PersistentVolume, ann map[string]any) error {
	_, err := c.patchPV(ctx, pv, ann)
	return err
}

// patchPV merges annotations (nil values remove) into the PV, on the
// condition that it has not changed since it was read (resourceVersion), so
// two writers can never both believe they recorded something first.
func (c *Controller) patchPV(ctx context.Context, pv *corev1.PersistentVolume, ann map[string]any) (*corev1.PersistentVolume, error) {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": pv.ResourceVersion, "annotations": ann}})
	if err != nil {
		return nil, err
	}
	out, err := c.client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return nil, fmt.Errorf("annotate PV %s: %w", pv.Name, err)
	}
	return out, nil
}

// remember and forget keep --dry-run's in-memory loss times.
func (c *Controller) remember(pv *corev1.PersistentVolume, since time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := "since/" + string(pv.UID)
	if t, ok := c.seen[key]; ok {
		return t
	}
	c.seen[key] = since
	return since
}

// forget drops what was recorded about a PV's loss: when it was first seen
// lost, and the dry-run actions already logged for it (keyed
// "dry/<uid>/<action>"), so that a later loss is logged and counted again.
func (c *Controller) forget(pv *corev1.PersistentVolume) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seen, "since/"+string(pv.UID))
	dry := "dry/" + string(pv.UID) + "/"
	for k := range c.seen {
		if strings.HasPrefix(k, dry) {
			delete(c.seen, k)
		}
	}
}

func claimKey(pv *corev1.PersistentVolume) string {
	if pv.Spec.ClaimRef == nil {
		return ""
	}
	return pv.Spec.ClaimRef.Namespace + "/" + pv.Spec.ClaimRef.Name
}
