package node

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// MaxIDLength is the CSI spec's general limit for string fields (spec.md,
// "Size Limits"): a volume ID longer than this would be rejected by strict COs.
const MaxIDLength = 128

var (
	// Volume names become one directory name on disk. The alphabet has no
	// '/', no NUL, no '@' (reserved for trash entries) and cannot start with
	// '.', so "..", hidden files and traversal are impossible by construction.
	volumeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	// Pool names are DNS labels: they appear in metrics labels and IDs.
	poolNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	// Node IDs are Kubernetes node names (DNS subdomains); upper case is
	// tolerated because some hostnames carry it.
	nodeIDRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)
)

const (
	maxVolumeNameLength = 128
	maxPoolNameLength   = 63
	maxNodeIDLength     = 128
)

// VolumeID identifies a volume cluster-wide: the node whose disk holds it,
// the pool on that disk and the volume's name. Its string form is
// "<node>/<pool>/<name>"; it is opaque to Kubernetes but parseable here, so a
// call that reaches the wrong node is answered without touching any disk.
type VolumeID struct {
	Node string
	Pool string
	Name string
}

func (id VolumeID) String() string { return id.Node + "/" + id.Pool + "/" + id.Name }

// ParseVolumeID parses and strictly validates a volume ID. Errors wrap ErrInvalid.
func ParseVolumeID(s string) (VolumeID, error) {
	if len(s) > MaxIDLength {
		return VolumeID{}, fmt.Errorf("%w: volume ID is %d bytes, the limit is %d", ErrInvalid, len(s), MaxIDLength)
	}
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return VolumeID{}, fmt.Errorf("%w: volume ID %q is not of the form <node>/<pool>/<name>", ErrInvalid, s)
	}
	id := VolumeID{Node: parts[0], Pool: parts[1], Name: parts[2]}
	if err := id.Validate(); err != nil {
		return VolumeID{}, fmt.Errorf("volume ID %q: %w", s, err)
	}
	return id, nil
}

// Validate checks every component and the total length.
func (id VolumeID) Validate() error {
	if err := ValidateNodeID(id.Node); err != nil {
		return err
	}
	if err := ValidatePoolName(id.Pool); err != nil {
		return err
	}
	if err := ValidateVolumeName(id.Name); err != nil {
		return err
	}
	if n := len(id.String()); n > MaxIDLength {
		return fmt.Errorf("%w: the volume ID %q would be %d bytes, the CSI limit is %d; use a shorter name", ErrInvalid, id.String(), n, MaxIDLength)
	}
	return nil
}

// ValidateVolumeName checks a CSI volume name (CreateVolumeRequest.name).
func ValidateVolumeName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: volume name is empty", ErrInvalid)
	case len(name) > maxVolumeNameLength:
		return fmt.Errorf("%w: volume name is %d bytes, the limit is %d", ErrInvalid, len(name), maxVolumeNameLength)
	case !volumeNameRE.MatchString(name):
		return fmt.Errorf("%w: volume name %q may only contain letters, digits, '_', '.', '-' and must start with a letter or digit", ErrInvalid, name)
	}
	return nil
}

// ValidatePoolName checks a pool name (a DNS label).
func ValidatePoolName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: pool name is empty", ErrInvalid)
	case len(name) > maxPoolNameLength:
		return fmt.Errorf("%w: pool name is %d bytes, the limit is %d", ErrInvalid, len(name), maxPoolNameLength)
	case !poolNameRE.MatchString(name):
		return fmt.Errorf("%w: pool name %q must be a DNS label (lower-case letters, digits, '-')", ErrInvalid, name)
	}
	return nil
}

// ValidateNodeID checks a node ID (a Kubernetes node name).
func ValidateNodeID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: node ID is empty", ErrInvalid)
	case len(id) > maxNodeIDLength:
		return fmt.Errorf("%w: node ID is %d bytes, the limit is %d", ErrInvalid, len(id), maxNodeIDLength)
	case !nodeIDRE.MatchString(id):
		return fmt.Errorf("%w: node ID %q must be a DNS subdomain (letters, digits, '-', '.')", ErrInvalid, id)
	}
	return nil
}

// volumeKey is the name a volume has on disk and in its ID. It is the CSI
// name itself when "<node>/<pool>/<name>" fits the spec's 128 bytes, which is
// the case for every name csi-provisioner makes ("pvc-<uuid>"); a longer
// name (the spec allows 128 bytes for the name alone) becomes "h-" and 40
// hex digits of its SHA-256. The mapping is a pure function of the request,
// so a repeated CreateVolume finds the same volume; the record keeps the
// original name.
func volumeKey(node, pool, name string) string {
	if len(node)+len(pool)+len(name)+2 <= MaxIDLength {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:20])
}
