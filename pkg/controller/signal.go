package controller

import (
	"fmt"
	"strings"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/kube"
	corev1 "k8s.io/api/core/v1"
)

// TaintOutOfService is the standard taint of non-graceful node shutdown: an
// operator (or automation) declares the node gone for good.
const TaintOutOfService = "node.kubernetes.io/out-of-service"

// SignalKind is why a volume is considered lost. Note what is NOT a signal:
// a NotReady node. A network partition looks the same as a dead node from
// here, and releasing the claim of a node that is merely unreachable would
// throw away a replica that still holds data.
type SignalKind string

const (
	SignalNone SignalKind = ""
	// SignalNodeDeleted: the volume's Node object no longer exists.
	SignalNodeDeleted SignalKind = "NodeDeleted"
	// SignalNodeOutOfService: the Node carries TaintOutOfService.
	SignalNodeOutOfService SignalKind = "NodeOutOfService"
	// SignalPoolFenced: the driver fenced the volume's pool (the Node's
	// label pool.dhpp.io/<pool>=fenced).
	SignalPoolFenced SignalKind = "PoolFenced"
)

// nodeGone reports whether the signal means the node itself is gone, so its
// driver and provisioner can no longer delete its volumes.
func (k SignalKind) nodeGone() bool {
	return k == SignalNodeDeleted || k == SignalNodeOutOfService
}

// signal is a loss signal with the earliest time the API shows for it.
type signal struct {
	Kind SignalKind
	// Since is when the signal started according to the API (the taint's
	// timeAdded, the fencing condition's transition); zero when the API
	// does not say (a deleted Node leaves nothing behind).
	Since  time.Time
	Detail string
}

// volume is a dhpp PV's location: the node and pool its volume ID names.
type volume struct {
	Node, Pool string
}

// dhppVolume returns the location of a PV provisioned by dhpp, from its
// volume ID <node>/<pool>/<name> (the driver validates that format when it
// creates the ID, so it is the one place that names both node and pool).
func dhppVolume(pv *corev1.PersistentVolume) (volume, bool) {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != dhpp.DriverName {
		return volume{}, false
	}
	parts := strings.Split(pv.Spec.CSI.VolumeHandle, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return volume{}, false
	}
	return volume{Node: parts[0], Pool: parts[1]}, true
}

// nodeSignal derives the loss signal for a volume on pool from its Node
// (nil: the Node does not exist). fenceLimit 0 turns the fenced-pool signal
// off. Node signals come first: a gone node's fenced disk is gone with it.
func nodeSignal(node *corev1.Node, pool string, fenceLimit time.Duration) signal {
	if node == nil {
		return signal{Kind: SignalNodeDeleted, Detail: "the Node object was deleted"}
	}
	for _, t := range node.Spec.Taints {
		if t.Key == TaintOutOfService {
			s := signal{Kind: SignalNodeOutOfService, Detail: fmt.Sprintf("the Node carries the taint %s (non-graceful node shutdown)", TaintOutOfService)}
			if t.TimeAdded != nil {
				s.Since = t.TimeAdded.Time
			}
			return s
		}
	}
	if fenceLimit > 0 && node.Labels[kube.PoolLabelPrefix+pool] == kube.PoolLabelFenced {
		return signal{Kind: SignalPoolFenced, Since: fencedSince(node),
			Detail: fmt.Sprintf("its pool %q is fenced (label %s%s=%s)", pool, kube.PoolLabelPrefix, pool, kube.PoolLabelFenced)}
	}
	return signal{}
}

// fencedSince is when the Node's DhppPoolsHealthy condition turned False,
// which is when its pool was fenced if it is the only fenced pool. With
// several fenced pools the condition's time belongs to the first of them,
// so it says nothing about this one: zero, and the controller's own first
// sighting (recorded on the PV) is used instead.
func fencedSince(node *corev1.Node) time.Time {
	fenced := 0
	for k, v := range node.Labels {
		if strings.HasPrefix(k, kube.PoolLabelPrefix) && v == kube.PoolLabelFenced {
			fenced++
		}
	}
	if fenced != 1 {
		return time.Time{}
	}
	for _, c := range node.Status.Conditions {
		if c.Type == kube.ConditionType && c.Status == corev1.ConditionFalse {
			return c.LastTransitionTime.Time
		}
	}
	return time.Time{}
}
