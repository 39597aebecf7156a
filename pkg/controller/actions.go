package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// ProvisionerFinalizer is external-provisioner's finalizer on the PVs it
// created: it keeps the PV until the provisioner has called DeleteVolume.
// On a gone node nobody ever will, so the controller removes it from the
// PVs it deletes. kubernetes.io/pv-protection is left alone: the
// controller-manager drops it by itself once the PV is no longer bound.
const ProvisionerFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"

// Event reasons (API: operators filter on them).
const (
	ReasonClaimKept      = "LostVolumeKept"
	ReasonClaimReleased  = "LostVolumeReleased"
	ReasonPodEvicted     = "LostVolumePodEvicted"
	ReasonEvictBlocked   = "LostVolumeEvictionBlocked"
	ReasonVolumeRemoved  = "LostVolumeRemoved"
	ReasonPolicyInvalid  = "NodeLossPolicyInvalid"
	eventSourceComponent = "dhpp-controller"
)

// deleteClaim deletes the claim, on the condition that it is still the one
// the PV was bound to (UID precondition): a new claim of the same name,
// made by the StatefulSet controller after a first deletion, is never hit.
func (c *Controller) deleteClaim(ctx context.Context, pv *corev1.PersistentVolume, vol volume, sig signal, claim *corev1.PersistentVolumeClaim) error {
	uid := claim.UID
	err := c.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Delete(ctx, claim.Name,
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		klog.V(2).InfoS("Claim already gone or replaced", "claim", klog.KObj(claim), "pv", pv.Name)
		return nil
	}
	if err != nil {
		c.metrics.count(ActionDeleteClaim, ResultError)
		return fmt.Errorf("delete claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	c.metrics.count(ActionDeleteClaim, ResultSuccess)
	msg := fmt.Sprintf("claim deleted: its volume %s is on node %s, where %s. The StatefulSet controller makes a new, empty claim and the pod starts on another node; the old data stays on that node's disk",
		pv.Name, vol.Node, sig.Detail)
	klog.InfoS("Deleted the claim of a lost volume", "claim", klog.KObj(claim), "pv", pv.Name, "node", vol.Node, "signal", sig.Kind)
	c.events(ctx, claimRef(claim), vol.Node, corev1.EventTypeWarning, ReasonClaimReleased, msg, string(pv.UID))
	return nil
}

// evictPods evicts, through the Eviction API, the pods that still use a
// released claim on a fenced pool. A PodDisruptionBudget that forbids it
// (429) is honoured: the controller tries again after --retry-period.
func (c *Controller) evictPods(ctx context.Context, pv *corev1.PersistentVolume, vol volume, sig signal, claim *corev1.PersistentVolumeClaim) error {
	// Read the pods from the API server, not a cache: an evicted pod must
	// not be evicted (and counted) twice because a cache lags.
	pods, err := c.client.CoreV1().Pods(claim.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", vol.Node).String()})
	if err != nil {
		return fmt.Errorf("list pods of claim %s/%s on node %s: %w", claim.Namespace, claim.Name, vol.Node, err)
	}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Spec.NodeName != vol.Node || !usesClaim(pod, claim.Name) ||
			pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		uid := pod.UID
		err = c.client.PolicyV1().Evictions(pod.Namespace).Evict(ctx, &policyv1.Eviction{
			ObjectMeta:    metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
			DeleteOptions: &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}},
		})
		switch {
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			continue
		case apierrors.IsTooManyRequests(err):
			c.metrics.count(ActionEvictPod, ResultBlocked)
			klog.InfoS("Eviction refused by a PodDisruptionBudget; retrying later", "pod", klog.KObj(pod), "pv", pv.Name, "retryIn", c.opts.Retry, "err", err)
			c.events(ctx, claimRef(claim), vol.Node, corev1.EventTypeWarning, ReasonEvictBlocked,
				fmt.Sprintf("pod %s uses this released claim on fenced pool %q of node %s, but its PodDisruptionBudget forbids evicting it now; retrying every %s", pod.Name, vol.Pool, vol.Node, c.opts.Retry),
				string(pod.UID))
		case err != nil:
			c.metrics.count(ActionEvictPod, ResultError)
			return fmt.Errorf("evict pod %s/%s: %w", pod.Namespace, pod.Name, err)
		default:
			c.metrics.count(ActionEvictPod, ResultSuccess)
			klog.InfoS("Evicted a pod using a lost volume", "pod", klog.KObj(pod), "pv", pv.Name, "node", vol.Node, "signal", sig.Kind)
			c.events(ctx, claimRef(claim), vol.Node, corev1.EventTypeWarning, ReasonPodEvicted,
				fmt.Sprintf("pod %s evicted: it used this claim's volume %s on pool %q of node %s, where %s", pod.Name, pv.Name, vol.Pool, vol.Node, sig.Detail),
				string(pod.UID))
		}
	}
	return nil
}

// deleteVolume removes the PV of a released claim on a gone node: no
// provisioner will ever run DeleteVolume for it, so without this it would
// stay Released for good. The data stays on the lost disk.
func (c *Controller) deleteVolume(ctx context.Context, pv *corev1.PersistentVolume, vol volume, sig signal) error {
	if pv.DeletionTimestamp == nil {
		uid := pv.UID
		err := c.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		if err != nil {
			c.metrics.count(ActionDeleteVolume, ResultError)
			return fmt.Errorf("delete PV %s: %w", pv.Name, err)
		}
		c.metrics.count(ActionDeleteVolume, ResultSuccess)
		klog.InfoS("Deleted the PV of a lost volume", "pv", pv.Name, "node", vol.Node, "pool", vol.Pool, "signal", sig.Kind)
		if pv.Spec.ClaimRef != nil {
			ref := *pv.Spec.ClaimRef
			ref.Kind, ref.APIVersion = "PersistentVolumeClaim", "v1"
			c.events(ctx, ref, vol.Node, corev1.EventTypeWarning, ReasonVolumeRemoved,
				fmt.Sprintf("PV %s removed: node %s cannot delete it (%s). Its data stays on that node's disk, pool %q", pv.Name, vol.Node, sig.Detail, vol.Pool),
				string(pv.UID))
		}
	}
	return c.dropProvisionerFinalizer(ctx, pv)
}

// dropProvisionerFinalizer removes ProvisionerFinalizer with a JSON patch
// that first tests it is still at the same index, so a concurrent change
// of the list fails the patch instead of removing something else.
func (c *Controller) dropProvisionerFinalizer(ctx context.Context, pv *corev1.PersistentVolume) error {
	for i, f := range pv.Finalizers {
		if f != ProvisionerFinalizer {
			continue
		}
		path := fmt.Sprintf("/metadata/finalizers/%d", i)
		patch, _ := json.Marshal([]map[string]any{
			{"op": "test", "path": path, "value": f},
			{"op": "remove", "path": path},
		})
		_, err := c.client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.JSONPatchType, patch, metav1.PatchOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("remove finalizer %s from PV %s: %w", f, pv.Name, err)
		}
		return nil
	}
	return nil
}

// warnKeep tells, once per volume and signal, why a lost volume's claim is
// kept and how to release it by hand.
func (c *Controller) warnKeep(ctx context.Context, pv *corev1.PersistentVolume, vol volume, sig signal, since time.Time, claim *corev1.PersistentVolumeClaim, pol resolved) error {
	why := fmt.Sprintf("node-loss policy %q (%s)", pol.Policy, pol.Source)
	if pol.Invalid != "" {
		why = pol.Invalid
	}
	msg := fmt.Sprintf("volume %s is on node %s, where %s (since %s). Nothing was done: %s. To give the pod a new, empty volume on another node (the old data stays on the lost disk): kubectl delete pvc -n %s %s && kubectl delete pv %s; or let dhpp do it: kubectl annotate pvc -n %s %s %s=%s",
		pv.Name, vol.Node, sig.Detail, since.UTC().Format(time.RFC3339), why,
		claim.Namespace, claim.Name, pv.Name, claim.Namespace, claim.Name, dhpp.AnnotationNodeLossPolicy, PolicyRecreate)
	if c.opts.DryRun {
		c.dryRunOnce(pv, ActionWarnKeep, "Would warn that a lost volume's claim is kept", "pv", pv.Name, "claim", klog.KObj(claim), "message", msg)
		return nil
	}
	reason := ReasonClaimKept
	if pol.Invalid != "" {
		reason = ReasonPolicyInvalid
	}
	created, err := c.event(ctx, claimRef(claim), corev1.EventTypeWarning, reason, msg, string(pv.UID)+"/"+string(sig.Kind))
	if err != nil {
		c.metrics.count(ActionWarnKeep, ResultError)
		return err
	}
	if created {
		c.metrics.count(ActionWarnKeep, ResultSuccess)
		klog.InfoS("Lost volume kept by its policy", "pv", pv.Name, "claim", klog.KObj(claim), "node", vol.Node, "signal", sig.Kind, "policy", pol.Policy, "source", pol.Source, "invalid", pol.Invalid)
		if _, err := c.event(ctx, nodeRef(vol.Node), corev1.EventTypeWarning, reason, fmt.Sprintf("claim %s/%s: %s", claim.Namespace, claim.Name, msg), string(pv.UID)+"/"+string(sig.Kind)); err != nil {
			klog.ErrorS(err, "Posting an Event on the Node", "node", vol.Node)
		}
	}
	return nil
}

// dryRun logs, once per PV, what a release would do.
func (c *Controller) dryRun(pv *corev1.PersistentVolume, vol volume, sig signal, claim *corev1.PersistentVolumeClaim) {
	steps := []string{ActionDeleteClaim}
	if sig.Kind == SignalPoolFenced {
		steps = append(steps, ActionEvictPod)
	}
	if sig.Kind.nodeGone() {
		steps = append(steps, ActionDeleteVolume)
	}
	for _, s := range steps {
		c.dryRunOnce(pv, s, "Dry run: would release the claim of a lost volume", "step", s, "pv", pv.Name,
			"claim", klog.KObj(claim), "node", vol.Node, "pool", vol.Pool, "signal", sig.Kind, "detail", sig.Detail)
	}
}

func (c *Controller) dryRunOnce(pv *corev1.PersistentVolume, action, msg string, kv ...any) {
	c.dryRunOnceKey(string(pv.UID)+"/"+action, action, msg, kv...)
}

// dryRunOnceKey logs and counts a would-be action once per key.
func (c *Controller) dryRunOnceKey(key, action, msg string, kv ...any) {
	c.mu.Lock()
	key = "dry/" + key
	_, done := c.seen[key]
	c.seen[key] = c.now()
	c.mu.Unlock()
	if done {
		return
	}
	c.metrics.count(action, ResultDryRun)
	klog.InfoS(msg, kv...)
}

func claimRef(pvc *corev1.PersistentVolumeClaim) corev1.ObjectReference {
	return corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID}
}

// nodeRef refers to a Node the way the kubelet's Events do (UID = name), so
// `kubectl describe node` shows them, even for a Node that was deleted.
func nodeRef(name string) corev1.ObjectReference {
	return corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: name, UID: types.UID(name)}
}

// events posts the same Event on the claim and on the node; failures are
// logged, never retried at the cost of repeating the action.
func (c *Controller) events(ctx context.Context, claim corev1.ObjectReference, node, typ, reason, msg, key string) {
	if _, err := c.event(ctx, claim, typ, reason, msg, key); err != nil {
		klog.ErrorS(err, "Posting an Event on the claim", "claim", claim.Namespace+"/"+claim.Name, "reason", reason)
	}
	nodeMsg := fmt.Sprintf("claim %s/%s: %s", claim.Namespace, claim.Name, msg)
	if _, err := c.event(ctx, nodeRef(node), typ, reason, nodeMsg, key); err != nil {
		klog.ErrorS(err, "Posting an Event on the Node", "node", node, "reason", reason)
	}
}

// event creates an Event whose name derives from the object, the reason
// and key: posting it again (a retry, a new leader) finds it already there
// (created=false), so each fact is reported once.
func (c *Controller) event(ctx context.Context, ref corev1.ObjectReference, typ, reason, msg, key string) (bool, error) {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%s/%s/%s", ref.Kind, ref.UID, reason, key)
	prefix := ref.Name
	if len(prefix) > 200 {
		prefix = prefix[:200]
	}
	ns := ref.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	now := metav1.NewTime(c.now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: fmt.Sprintf("%s.dhpp-%016x", prefix, h.Sum64()), Namespace: ns},
		InvolvedObject: ref,
		Reason:         reason,
		Message:        msg,
		Type:           typ,
		Source:         corev1.EventSource{Component: eventSourceComponent},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	_, err := c.client.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("create Event %s on %s %s: %w", reason, ref.Kind, ref.Name, err)
	}
	return true, nil
}
