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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// With distributed snapshotting, each node's csi-snapshotter
// (--node-deployment) watches only the VolumeSnapshotContents labelled
// LabelManagedBy=<its node> (external-snapshotter cmd/csi-snapshotter), and
// the snapshot-controller sets that label only on the contents it creates
// for dynamic snapshots. A pre-provisioned content (made by hand, by a
// backup tool restoring into a new cluster) has none, so no sidecar would
// ever check it and its VolumeSnapshot would never be ready. The controller
// labels such contents of dhpp with the node their snapshot ID names.

// LabelManagedBy is the label that hands a content to one node's
// csi-snapshotter.
const LabelManagedBy = "snapshot.storage.kubernetes.io/managed-by"

// ReasonContentLabelled: the controller handed a pre-provisioned content
// to its node's csi-snapshotter.
const ReasonContentLabelled = "SnapshotContentLabelled"

// labelContent labels one VolumeSnapshotContent, if it is a pre-provisioned
// dhpp content without LabelManagedBy. A content that has the label, even
// naming another node, is left alone: someone chose it.
func (c *Controller) labelContent(ctx context.Context, name string) (time.Duration, error) {
	_, contents, ok := c.snaps.listers()
	if !ok {
		// Its informer saw it before the caches were all synced.
		return c.opts.Retry, nil
	}
	content, err := contents.Get(name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	id, ok := preProvisioned(content)
	if !ok {
		return 0, nil
	}
	sid, err := node.ParseSnapshotID(id)
	if err != nil {
		// Not an ID dhpp made: no node can serve it, and no label would
		// help. The sidecar that never sees it leaves it not ready.
		klog.InfoS("Pre-provisioned VolumeSnapshotContent of dhpp has a snapshot handle dhpp did not make; not labelled", "content", name, "err", err)
		return 0, nil
	}
	if c.opts.DryRun {
		c.dryRunOnceKey("content/"+string(content.UID), ActionLabelContent, "Dry run: would label a pre-provisioned VolumeSnapshotContent",
			"content", name, "label", LabelManagedBy, "node", sid.Node)
		return 0, nil
	}
	if err := c.patchContentLabel(ctx, content, sid.Node); err != nil {
		c.metrics.count(ActionLabelContent, ResultError)
		return 0, err
	}
	c.metrics.count(ActionLabelContent, ResultSuccess)
	klog.InfoS("Labelled a pre-provisioned VolumeSnapshotContent for its node's csi-snapshotter", "content", name, "label", LabelManagedBy, "node", sid.Node, "snapshotHandle", id)
	ref := corev1.ObjectReference{Kind: "VolumeSnapshotContent", APIVersion: snapshotAPIGroup + "/v1", Name: name, UID: content.UID}
	msg := fmt.Sprintf("label %s=%s added: snapshot %q is on node %s, whose csi-snapshotter serves only contents with that label", LabelManagedBy, sid.Node, id, sid.Node)
	if _, err := c.event(ctx, ref, corev1.EventTypeNormal, ReasonContentLabelled, msg, sid.Node); err != nil {
		klog.ErrorS(err, "Posting an Event on the VolumeSnapshotContent", "content", name)
	}
	return 0, nil
}

// preProvisioned returns the snapshot handle of a dhpp content made from a
// handle (not from a volume: those are the snapshot-controller's, and it
// labels them) that has no LabelManagedBy.
func preProvisioned(content *snapshotv1.VolumeSnapshotContent) (string, bool) {
	if _, ok := content.Labels[LabelManagedBy]; ok || content.DeletionTimestamp != nil {
		return "", false
	}
	h := content.Spec.Source.SnapshotHandle
	if content.Spec.Driver != dhpp.DriverName || h == nil || *h == "" {
		return "", false
	}
	return *h, true
}

// patchContentLabel adds the label on the condition that the content has
// not changed since it was read.
func (c *Controller) patchContentLabel(ctx context.Context, content *snapshotv1.VolumeSnapshotContent, node string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": content.ResourceVersion, "labels": map[string]string{LabelManagedBy: node}}})
	if err != nil {
		return err
	}
	_, err = c.snaps.client.SnapshotV1().VolumeSnapshotContents().Patch(ctx, content.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("label VolumeSnapshotContent %s with %s=%s: %w", content.Name, LabelManagedBy, node, err)
	}
	return nil
}
