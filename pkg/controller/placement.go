package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/node"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Restores and clones of a WaitForFirstConsumer class are made where their
// source is: only the node holding a snapshot or a source volume can serve
// CreateVolume for it (the others answer ResourceExhausted). Each node's
// csi-provisioner (--node-deployment) provisions only claims whose
// AnnSelectedNode names its node, and the scheduler, which sets that
// annotation, knows nothing of data sources: for a pod that is not pinned
// it keeps picking nodes that cannot serve. So the controller sets the
// annotation to the source's node itself. The scheduler's volumebinding
// plugin then considers only that node for the pod: FindPodVolumes skips
// every node but the one a claim's selected-node annotation names
// (kubernetes pkg/scheduler/framework/plugins/volumebinding/binder.go,
// "Fast path, skip unmatched node"), and that node's csi-provisioner
// provisions the claim.

// AnnSelectedNode is the scheduler's annotation naming the node whose
// provisioner is to provision a WaitForFirstConsumer claim.
const AnnSelectedNode = "volume.kubernetes.io/selected-node"

const (
	// ReasonSourceNodeSelected: the controller pointed a restore or clone
	// at the node holding its source.
	ReasonSourceNodeSelected = "SourceNodeSelected"
	snapshotAPIGroup         = "snapshot.storage.k8s.io"
)

// source is where a restore's or clone's data is: the node and why.
type source struct {
	Node string
	Why  string // for the Event: "VolumeSnapshot x: its content y has snapshot ID z"
}

// placeClaim points a pending restore or clone of a dhpp
// WaitForFirstConsumer class at its source's node. It returns when to look
// again: a source that is not there or not bound yet is retried.
func (c *Controller) placeClaim(ctx context.Context, key string) (time.Duration, error) {
	ns, name, err := splitKey(key)
	if err != nil {
		return 0, err
	}
	claim, err := c.claims.PersistentVolumeClaims(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if !c.placeable(claim) {
		return 0, nil
	}
	src, wait := c.sourceNode(claim)
	if src == nil {
		klog.V(2).InfoS("Source of a restore or clone not found or not bound yet; looking again later", "claim", klog.KObj(claim), "why", wait, "retryIn", c.opts.Retry)
		return c.opts.Retry, nil
	}
	prev, had := claim.Annotations[AnnSelectedNode]
	if had && prev == src.Node {
		return 0, nil
	}
	if c.opts.DryRun {
		c.dryRunOnceKey("place/"+string(claim.UID)+"/"+src.Node, ActionSelectNode, "Dry run: would point a restore or clone at its source's node",
			"claim", klog.KObj(claim), "node", src.Node, "why", src.Why, "selectedNode", prev)
		return 0, nil
	}
	if err := c.patchSelectedNode(ctx, claim, src.Node); err != nil {
		c.metrics.count(ActionSelectNode, ResultError)
		return 0, err
	}
	c.metrics.count(ActionSelectNode, ResultSuccess)
	was := "unset"
	if had {
		was = fmt.Sprintf("%q, a node that cannot serve it", prev)
	}
	msg := fmt.Sprintf("annotation %s set to %q (was %s): %s, and only that node can make this volume, so the pod is scheduled there",
		AnnSelectedNode, src.Node, was, src.Why)
	klog.InfoS("Pointed a restore or clone at its source's node", "claim", klog.KObj(claim), "node", src.Node, "previous", prev, "why", src.Why)
	if _, err := c.event(ctx, claimRef(claim), corev1.EventTypeNormal, ReasonSourceNodeSelected, msg, src.Node+"/"+prev); err != nil {
		klog.ErrorS(err, "Posting an Event on the claim", "claim", klog.KObj(claim), "reason", ReasonSourceNodeSelected)
	}
	return 0, nil
}

// placeable: a claim not bound yet, not being deleted, of a dhpp class with
// WaitForFirstConsumer binding, with a data source. Everything else (other
// provisioners, Immediate classes, where csi-provisioner's own immediate
// binding finds the node) is left alone.
func (c *Controller) placeable(claim *corev1.PersistentVolumeClaim) bool {
	if claim.Spec.VolumeName != "" || claim.Status.Phase == corev1.ClaimBound || claim.DeletionTimestamp != nil {
		return false
	}
	if dataSource(claim) == nil || claim.Spec.StorageClassName == nil {
		return false
	}
	sc := c.class(*claim.Spec.StorageClassName)
	if sc == nil || sc.Provisioner != dhpp.DriverName || sc.VolumeBindingMode == nil ||
		*sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
		return false
	}
	// A claim another provisioner was given to (its class changed, or a
	// storage-provisioner annotation set by hand) is not ours.
	if p, ok := claim.Annotations["volume.kubernetes.io/storage-provisioner"]; ok && p != dhpp.DriverName {
		return false
	}
	return true
}

// dataSource is the claim's source in the claim's own namespace:
// dataSourceRef over dataSource (the API server mirrors one into the
// other); nil for none, or for a cross-namespace source, which only the
// provisioner may resolve (ReferenceGrants).
func dataSource(claim *corev1.PersistentVolumeClaim) *corev1.TypedObjectReference {
	if r := claim.Spec.DataSourceRef; r != nil {
		if r.Namespace != nil && *r.Namespace != "" && *r.Namespace != claim.Namespace {
			return nil
		}
		return r
	}
	if r := claim.Spec.DataSource; r != nil {
		return &corev1.TypedObjectReference{APIGroup: r.APIGroup, Kind: r.Kind, Name: r.Name}
	}
	return nil
}

// sourceNode finds the node holding the claim's source; nil and the reason
// when it cannot be known (yet).
func (c *Controller) sourceNode(claim *corev1.PersistentVolumeClaim) (*source, string) {
	ref := dataSource(claim)
	group := ""
	if ref.APIGroup != nil {
		group = *ref.APIGroup
	}
	switch {
	case group == "" && ref.Kind == "PersistentVolumeClaim":
		return c.claimSourceNode(claim.Namespace, ref.Name)
	case group == snapshotAPIGroup && ref.Kind == "VolumeSnapshot":
		return c.snapshotSourceNode(claim.Namespace, ref.Name)
	}
	return nil, fmt.Sprintf("data source %s %s is neither a claim nor a VolumeSnapshot", ref.Kind, ref.Name)
}

// claimSourceNode: a clone's source claim is bound to a dhpp PV whose node
// affinity names its node.
func (c *Controller) claimSourceNode(ns, name string) (*source, string) {
	src, err := c.claims.PersistentVolumeClaims(ns).Get(name)
	if err != nil {
		return nil, fmt.Sprintf("source claim %s: %v", name, err)
	}
	if src.Spec.VolumeName == "" {
		return nil, fmt.Sprintf("source claim %s is not bound", name)
	}
	obj, ok, err := c.pvInf.GetIndexer().GetByKey(src.Spec.VolumeName)
	if err != nil || !ok {
		return nil, fmt.Sprintf("PV %s of source claim %s not found", src.Spec.VolumeName, name)
	}
	pv := obj.(*corev1.PersistentVolume)
	if pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != src.UID {
		return nil, fmt.Sprintf("PV %s is not bound to source claim %s", pv.Name, name)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != dhpp.DriverName {
		return nil, fmt.Sprintf("PV %s of source claim %s is not a dhpp volume", pv.Name, name)
	}
	n := affinityNode(pv)
	if n == "" {
		return nil, fmt.Sprintf("PV %s has no single %s in its node affinity", pv.Name, dhpp.TopologyKey)
	}
	return &source{Node: n, Why: fmt.Sprintf("its source claim %s is bound to PV %s on node %s (%s)", name, pv.Name, n, dhpp.TopologyKey)}, ""
}

// affinityNode is the one node a PV's required node affinity allows by
// dhpp's topology key, or "" when it is not exactly one.
func affinityNode(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	found := ""
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key != dhpp.TopologyKey {
				continue
			}
			if e.Operator != corev1.NodeSelectorOpIn || len(e.Values) != 1 || (found != "" && found != e.Values[0]) {
				return ""
			}
			found = e.Values[0]
		}
	}
	return found
}

// snapshotSourceNode: a restore's VolumeSnapshot is bound to a content of
// dhpp whose snapshot ID names the node (pkg/node's format).
func (c *Controller) snapshotSourceNode(ns, name string) (*source, string) {
	snaps, contents, ok := c.snaps.listers()
	if !ok {
		return nil, "the snapshot CRDs are not installed (yet)"
	}
	snap, err := snaps.VolumeSnapshots(ns).Get(name)
	if err != nil {
		return nil, fmt.Sprintf("VolumeSnapshot %s: %v", name, err)
	}
	if snap.Status == nil || snap.Status.BoundVolumeSnapshotContentName == nil || *snap.Status.BoundVolumeSnapshotContentName == "" {
		return nil, fmt.Sprintf("VolumeSnapshot %s is not bound to a content yet", name)
	}
	content, err := contents.Get(*snap.Status.BoundVolumeSnapshotContentName)
	if err != nil {
		return nil, fmt.Sprintf("VolumeSnapshotContent %s: %v", *snap.Status.BoundVolumeSnapshotContentName, err)
	}
	if r := content.Spec.VolumeSnapshotRef; r.Namespace != ns || r.Name != name || (r.UID != "" && r.UID != snap.UID) {
		return nil, fmt.Sprintf("VolumeSnapshotContent %s is not bound to VolumeSnapshot %s", content.Name, name)
	}
	id, ok := snapshotHandle(content)
	if !ok {
		return nil, fmt.Sprintf("VolumeSnapshotContent %s is not a dhpp snapshot with a handle", content.Name)
	}
	sid, err := node.ParseSnapshotID(id)
	if err != nil {
		return nil, fmt.Sprintf("VolumeSnapshotContent %s: %v", content.Name, err)
	}
	return &source{Node: sid.Node, Why: fmt.Sprintf("its VolumeSnapshot %s is bound to content %s, snapshot %q on node %s", name, content.Name, id, sid.Node)}, ""
}

// snapshotHandle is a dhpp content's snapshot ID: the one the driver
// returned (status) or the one a pre-provisioned content was given (spec).
func snapshotHandle(content *snapshotv1.VolumeSnapshotContent) (string, bool) {
	if content.Spec.Driver != dhpp.DriverName {
		return "", false
	}
	if s := content.Status; s != nil && s.SnapshotHandle != nil && *s.SnapshotHandle != "" {
		return *s.SnapshotHandle, true
	}
	if h := content.Spec.Source.SnapshotHandle; h != nil && *h != "" {
		return *h, true
	}
	return "", false
}

// patchSelectedNode sets the annotation on the condition that the claim
// has not changed since it was read (resourceVersion): if the scheduler
// or a provisioner wrote meanwhile, the patch fails and the claim is looked
// at again with what they wrote.
func (c *Controller) patchSelectedNode(ctx context.Context, claim *corev1.PersistentVolumeClaim, node string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": claim.ResourceVersion, "annotations": map[string]string{AnnSelectedNode: node}}})
	if err != nil {
		return err
	}
	_, err = c.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Patch(ctx, claim.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("annotate claim %s/%s with %s=%s: %w", claim.Namespace, claim.Name, AnnSelectedNode, node, err)
	}
	return nil
}

func splitKey(key string) (string, string, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil || ns == "" {
		return "", "", fmt.Errorf("claim key %q: want namespace/name", key)
	}
	return ns, name, nil
}
