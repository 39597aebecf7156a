package driver

import (
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// DefaultMode is the permission of a new volume's root directory when the
// StorageClass names none. 0777 lets containers running as any uid write
// without fsGroup (as local-path-provisioner does); the directory is only
// reachable through the pod's mount, and `mode: "0750"` plus fsGroup
// tightens it.
const DefaultMode fs.FileMode = 0o777

// Parameters are the StorageClass parameters dhpp understands.
type Parameters struct {
	Pool string
	Mode fs.FileMode
	// Preallocate: image volumes are written through at creation.
	Preallocate bool
	// Labels keeps the provisioner's --extra-create-metadata (PVC and PV
	// names) so a volume's record on disk says whose it is.
	Labels map[string]string
}

// Metadata keys csi-provisioner adds with --extra-create-metadata.
var extraMetadata = map[string]string{
	"csi.storage.k8s.io/pvc/name":      "pvc",
	"csi.storage.k8s.io/pvc/namespace": "namespace",
	"csi.storage.k8s.io/pv/name":       "pv",
}

// ParseParameters validates StorageClass parameters. Unknown keys are
// refused (a typo like "pool " must not silently pick the default pool);
// keys under csi.storage.k8s.io/ belong to Kubernetes and are accepted.
func ParseParameters(params map[string]string) (Parameters, error) {
	p := Parameters{Mode: DefaultMode}
	var unknown []string
	for k, v := range params {
		switch {
		case k == dhpp.ParamPool:
			if err := node.ValidatePoolName(v); err != nil {
				return Parameters{}, fmt.Errorf("parameter %q: %w", k, err)
			}
			p.Pool = v
		case k == dhpp.ParamMode:
			m, err := parseMode(v)
			if err != nil {
				return Parameters{}, fmt.Errorf("%w: parameter %q: %v", node.ErrInvalid, k, err)
			}
			p.Mode = m
		case k == dhpp.ParamPreallocate:
			switch v {
			case "true", "false":
				p.Preallocate = v == "true"
			default:
				return Parameters{}, fmt.Errorf("%w: parameter %q must be \"true\" or \"false\", not %q", node.ErrInvalid, k, v)
			}
		case k == dhpp.ParamNodeLossPolicy: // dhpp-controller's, validated there
		case strings.HasPrefix(k, dhpp.ParamPrefixCSI):
			if label, ok := extraMetadata[k]; ok {
				if p.Labels == nil {
					p.Labels = map[string]string{}
				}
				p.Labels[label] = v
			}
		default:
			unknown = append(unknown, strconv.Quote(k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return Parameters{}, fmt.Errorf("%w: unknown parameter(s) %s; dhpp accepts %q, %q, %q and %q",
			node.ErrInvalid, strings.Join(unknown, ", "), dhpp.ParamPool, dhpp.ParamMode, dhpp.ParamPreallocate, dhpp.ParamNodeLossPolicy)
	}
	return p, nil
}

// parseMode accepts an octal permission of 3 or 4 digits ("750", "0750");
// setuid/setgid/sticky bits are refused: a volume root has no use for them
// that is worth the surprise.
func parseMode(s string) (fs.FileMode, error) {
	if len(s) < 3 || len(s) > 4 {
		return 0, fmt.Errorf("mode %q must be 3 or 4 octal digits, e.g. \"0750\"", s)
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		return 0, fmt.Errorf("mode %q is not octal, e.g. \"0750\"", s)
	}
	if n&^0o777 != 0 {
		return 0, fmt.Errorf("mode %q has bits beyond 0777 (setuid, setgid and sticky are not allowed)", s)
	}
	return fs.FileMode(n), nil
}

// Metadata keys csi-snapshotter adds to CreateSnapshot's parameters with
// --extra-create-metadata, and the Snapshot.Labels keys they are kept under.
var snapshotMetadata = map[string]string{
	"csi.storage.k8s.io/volumesnapshot/name":        node.SnapshotLabelName,
	"csi.storage.k8s.io/volumesnapshot/namespace":   node.SnapshotLabelNamespace,
	"csi.storage.k8s.io/volumesnapshotcontent/name": node.SnapshotLabelContent,
}

// ParseSnapshotParameters validates CreateSnapshot's parameters (the
// VolumeSnapshotClass's, plus csi-snapshotter's metadata) and returns the
// labels to record. dhpp has no snapshot parameter of its own: a snapshot
// is made in its source's pool, by the method its backend allows. Keys
// under csi.storage.k8s.io/ belong to Kubernetes and are accepted, as in
// ParseParameters; any other key is refused, so a parameter written for
// another driver's class does not pass as if it had an effect.
func ParseSnapshotParameters(params map[string]string) (labels map[string]string, err error) {
	var unknown []string
	for k, v := range params {
		switch {
		case strings.HasPrefix(k, dhpp.ParamPrefixCSI):
			if label, ok := snapshotMetadata[k]; ok && v != "" {
				if labels == nil {
					labels = map[string]string{}
				}
				labels[label] = v
			}
		default:
			unknown = append(unknown, strconv.Quote(k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("%w: unknown VolumeSnapshotClass parameter(s) %s; dhpp takes no snapshot parameters of its own, "+
			"only keys under %q (set by Kubernetes, e.g. csi-snapshotter's --extra-create-metadata)",
			node.ErrInvalid, strings.Join(unknown, ", "), dhpp.ParamPrefixCSI)
	}
	return labels, nil
}
