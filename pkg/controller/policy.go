package controller

import (
	"fmt"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
)

// Policy is what the controller may do with a claim whose volume's node or
// disk is lost.
type Policy string

const (
	// PolicyKeep never touches the claim: the pod waits for its node, and
	// an Event says how to release the claim by hand. The default.
	PolicyKeep Policy = "keep"
	// PolicyRecreate deletes the claim (and the PV the lost node can no
	// longer delete), so the StatefulSet controller makes a new, empty
	// claim that binds on a healthy node.
	PolicyRecreate Policy = "recreate"
)

// resolved is a claim's policy and where it came from, for Events and logs.
type resolved struct {
	Policy Policy
	// Source says which setting decided: the PVC annotation, the class
	// parameter or the default.
	Source string
	// Invalid is a message when a setting was present but not a policy;
	// the claim is then kept (a typo must never delete a claim).
	Invalid string
}

func parsePolicy(v string) (Policy, bool) {
	switch Policy(v) {
	case PolicyKeep, PolicyRecreate:
		return Policy(v), true
	}
	return "", false
}

// resolvePolicy applies the PVC annotation over the StorageClass parameter
// over the default (keep). class may be nil (no class, or deleted).
func resolvePolicy(pvc *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) resolved {
	if pvc != nil {
		if v, ok := pvc.Annotations[dhpp.AnnotationNodeLossPolicy]; ok {
			return checked(v, fmt.Sprintf("annotation %s on the claim", dhpp.AnnotationNodeLossPolicy))
		}
	}
	if class != nil {
		if v, ok := class.Parameters[dhpp.ParamNodeLossPolicy]; ok {
			return checked(v, fmt.Sprintf("parameter %s of StorageClass %s", dhpp.ParamNodeLossPolicy, class.Name))
		}
	}
	return resolved{Policy: PolicyKeep, Source: "default (no annotation " + dhpp.AnnotationNodeLossPolicy + ", no class parameter " + dhpp.ParamNodeLossPolicy + ")"}
}

func checked(v, source string) resolved {
	if p, ok := parsePolicy(v); ok {
		return resolved{Policy: p, Source: source}
	}
	return resolved{Policy: PolicyKeep, Source: source,
		Invalid: fmt.Sprintf("%s is %q, not %q or %q: treated as %q", source, v, PolicyKeep, PolicyRecreate, PolicyKeep)}
}
