// Package v1alpha1 is the dhpp.io/v1alpha1 API: DhppPool, one cluster-scoped
// object per node and pool that the node's driver keeps up to date (status)
// and operators use to fence a pool for maintenance (spec.fence).
//
// The types are plain Go structs with JSON tags; clients go through the
// dynamic client and convert with ToUnstructured/FromUnstructured, so
// neither the driver nor the kubectl plugin needs generated clientsets.
package v1alpha1

import (
	"fmt"
	"hash/fnv"
	"maps"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
)

const (
	// Group and Version of the API.
	Group   = "dhpp.io"
	Version = "v1alpha1"
	// Kind and Resource of a pool object.
	Kind     = "DhppPool"
	Resource = "dhpppools"

	// LabelNode and LabelPool name the node and pool of an object, so the
	// driver watches only its own (label selector) and the plugin filters.
	LabelNode = "dhpp.io/node"
	LabelPool = "dhpp.io/pool"
)

// GroupVersionResource is what the dynamic client is asked for.
var GroupVersionResource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: Resource}

// APIVersion is the apiVersion field of every object.
var APIVersion = Group + "/" + Version

// DhppPool is one pool of one node as its driver sees it.
type DhppPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DhppPoolSpec   `json:"spec"`
	Status DhppPoolStatus `json:"status,omitempty"`
}

// DhppPoolList is a list of DhppPools.
type DhppPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DhppPool `json:"items"`
}

// DhppPoolSpec names the pool and carries what operators ask of it.
type DhppPoolSpec struct {
	// Node and Pool identify the pool (also in labels; the name may be hashed).
	Node string `json:"node"`
	Pool string `json:"pool"`
	// Fence, when set, asks the node's driver to fence the pool (no new
	// volumes) for planned maintenance. Clearing it does not unfence by
	// itself: `kubectl dhpp unfence` clears it and then sets the Node's
	// unfence.dhpp.io/<pool> annotation, the one way out of any fence.
	Fence *Fence `json:"fence,omitempty"`
	// Restores ask the node's driver to take trash entries back into the
	// pool (`kubectl dhpp restore`); the answers are in status.restores.
	Restores []RestoreRequest `json:"restores,omitempty"`
}

// RestoreRequest asks to take one trash entry back as a live volume.
type RestoreRequest struct {
	// Entry is the trash entry (status.trash.items[].entry).
	Entry string `json:"entry"`
	// Claim is the "namespace/name" of the claim the volume is restored
	// for; recorded on the volume.
	Claim string `json:"claim"`
	// PV is the name of the PersistentVolume that will carry the volume.
	PV string `json:"pv,omitempty"`
	// RequestedAt identifies the request: a new one (a retry after a
	// failure) has a later time, and the driver answers it again.
	RequestedAt metav1.Time `json:"requestedAt"`
}

// Phases of a RestoreResult.
const (
	RestoreRestored = "Restored"
	RestoreFailed   = "Failed"
)

// RestoreResult is the driver's answer to a RestoreRequest.
type RestoreResult struct {
	Entry       string      `json:"entry"`
	RequestedAt metav1.Time `json:"requestedAt"`
	// Phase is Restored or Failed.
	Phase   string `json:"phase"`
	Message string `json:"message,omitempty"`
	// VolumeHandle, CapacityBytes, AccessType ("mount" or "block") and
	// VolumeContext describe the restored volume as CreateVolume did:
	// what its PersistentVolume needs.
	VolumeHandle  string            `json:"volumeHandle,omitempty"`
	CapacityBytes int64             `json:"capacityBytes,omitempty"`
	AccessType    string            `json:"accessType,omitempty"`
	VolumeContext map[string]string `json:"volumeContext,omitempty"`
}

// Fence is an operator's request to fence a pool.
type Fence struct {
	Reason string `json:"reason"`
	// RequestedAt is when it was asked for; informational.
	RequestedAt metav1.Time `json:"requestedAt,omitempty"`
}

// DhppPoolStatus is what the node's driver last published.
type DhppPoolStatus struct {
	// Path of the pool directory on the node.
	Path string `json:"path,omitempty"`
	// Backend that carves new volumes (btrfs, xfs, ext4, loop, dir).
	Backend string `json:"backend,omitempty"`
	// SizeEnforced is false for the dir backend, which only records sizes.
	SizeEnforced bool `json:"sizeEnforced"`
	// Missing says the pool directory is missing (an unmounted disk?).
	Missing string `json:"missing,omitempty"`
	// Mount is the mount that holds the pool directory as the driver's
	// container sees it; nil from a driver older than the field, or when
	// the mount table was unreadable.
	Mount *Mount `json:"mount,omitempty"`

	// Bytes, rounded down to MiB so that small writes do not cause a write
	// to the API. Capacity is the filesystem's size, Used = Capacity − Free,
	// Free what statfs leaves to writers, Available what a new volume may
	// get (GetCapacity: Free minus space promised to volumes, and never more
	// than Capacity − Provisioned; 0 while the pool is fenced), Provisioned
	// the sum of volume sizes.
	CapacityBytes    int64 `json:"capacityBytes"`
	ProvisionedBytes int64 `json:"provisionedBytes"`
	UsedBytes        int64 `json:"usedBytes"`
	FreeBytes        int64 `json:"freeBytes"`
	AvailableBytes   int64 `json:"availableBytes"`
	// Human-readable copies for `kubectl get` columns (e.g. "9.8Gi").
	Capacity    string `json:"capacity,omitempty"`
	Provisioned string `json:"provisioned,omitempty"`
	Used        string `json:"used,omitempty"`
	Free        string `json:"free,omitempty"`
	Available   string `json:"available,omitempty"`

	Volumes            int `json:"volumes"`
	QuarantinedVolumes int `json:"quarantinedVolumes,omitempty"`

	Health Health `json:"health"`
	RAID   RAID   `json:"raid"`
	Trash  Trash  `json:"trash"`
	// Restores answers spec.restores, one result per request still there.
	Restores []RestoreResult `json:"restores,omitempty"`

	// DriverVersion of the dhpp-driver that wrote this status.
	DriverVersion string `json:"driverVersion,omitempty"`
	// UpdatedAt is when the driver last wrote this status; it is rewritten
	// only when something else changed, or every RefreshEvery (5 min) so a
	// dead driver shows as a stale timestamp.
	UpdatedAt metav1.Time `json:"updatedAt,omitempty"`
}

// Health is the pool's disk health probe state (pkg/health).
type Health struct {
	// State is Healthy, Failing or Fenced.
	State string `json:"state"`
	// Reason is the failure reason (timeout, io_error, ..., manual).
	Reason string `json:"reason,omitempty"`
	// Message says in a sentence why (the last error or the fence reason).
	Message string `json:"message,omitempty"`
	// Manual is true for a pool fenced by hand (kubectl dhpp fence, restore).
	Manual bool        `json:"manual,omitempty"`
	Since  metav1.Time `json:"since,omitempty"`
	// ProbeLatency is the last probe I/O's duration, rounded to 0.1 ms
	// (e.g. "2.3ms"); ProbeLatencyMicros the same number for machines,
	// rounded to a quarter of its order of magnitude so it does not cause
	// a write at every probe.
	ProbeLatency       string `json:"probeLatency,omitempty"`
	ProbeLatencyMicros int64  `json:"probeLatencyMicros,omitempty"`
}

// Propagation values of Mount (findmnt's names).
const (
	PropagationShared     = "shared"
	PropagationSlave      = "slave"
	PropagationPrivate    = "private"
	PropagationUnbindable = "unbindable"
)

// Mount is a pool's data directory mount in the driver's container.
type Mount struct {
	// Point is the mount point (deploy/ mounts the node's data directory
	// at the same path).
	Point string `json:"point"`
	// Propagation is shared, slave, private or unbindable: deploy/'s
	// Bidirectional mount is shared; slave is HostToContainer; private
	// means the driver never sees what the node mounts there after it
	// started (a disk replaced, a pool's disk mounted late).
	Propagation string `json:"propagation"`
}

// RAID is the md degradation under the pool (pkg/raid; never fences).
type RAID struct {
	Degraded bool   `json:"degraded"`
	Detail   string `json:"detail,omitempty"`
}

// Trash is what the pool's trash holds: deleted volumes (still
// recoverable) and snapshots, until the purger removes them.
type Trash struct {
	Entries int `json:"entries"`
	// Bytes is the sum of the entries' recorded sizes (TrashEntry.SizeBytes).
	Bytes int64  `json:"bytes"`
	Size  string `json:"size,omitempty"`
	// Items lists the entries, newest first, at most MaxTrashItems.
	Items []TrashEntry `json:"items,omitempty"`
}

// MaxTrashItems bounds the entries listed in a status (the object stays
// small whatever the delete rate); Trash.Entries counts them all.
const MaxTrashItems = 100

// Kinds of a TrashEntry.
const (
	// TrashKindVolume is a deleted volume: kubectl dhpp restore brings it back.
	TrashKindVolume = "Volume"
	// TrashKindSnapshot is a deleted snapshot: its data waits for the purge
	// like a volume's, but it cannot be restored as a volume.
	TrashKindSnapshot = "Snapshot"
)

// SnapshotEntryPrefix starts the entry name of a deleted snapshot
// (pkg/node's trash naming), which tells its kind even when the driver
// that published it predates TrashEntry.Kind or could not read its record.
const SnapshotEntryPrefix = "snapshot:"

// KindOf is e's kind: its Kind, else what its name says.
func KindOf(e TrashEntry) string {
	switch {
	case e.Kind != "":
		return e.Kind
	case strings.HasPrefix(e.Entry, SnapshotEntryPrefix):
		return TrashKindSnapshot
	}
	return TrashKindVolume
}

// TrashEntry is one deleted volume or snapshot in the trash.
type TrashEntry struct {
	// Entry is the directory name in <pool>/.dhpp/trash: <name>@<nanos>
	// for a volume, snapshot:<name>@<nanos> for a snapshot.
	Entry string `json:"entry"`
	// Kind is Volume or Snapshot.
	Kind string `json:"kind"`
	// VolumeID, PV, Namespace and Claim come from a volume's record
	// (empty when the record was unreadable). For a snapshot, Namespace is
	// its VolumeSnapshot's (from csi-snapshotter's --extra-create-metadata;
	// empty for snapshots taken without it).
	VolumeID  string `json:"volumeID,omitempty"`
	PV        string `json:"pv,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Claim     string `json:"claim,omitempty"`
	// VolumeSnapshot, SnapshotContent, SnapshotID and SourceVolumeID come
	// from a snapshot's record: who asked for it and what it was taken of.
	VolumeSnapshot  string `json:"volumeSnapshot,omitempty"`
	SnapshotContent string `json:"snapshotContent,omitempty"`
	SnapshotID      string `json:"snapshotID,omitempty"`
	SourceVolumeID  string `json:"sourceVolumeID,omitempty"`
	// SizeBytes is a volume's capacity, or a snapshot's size (its source's:
	// the smallest volume it would restore into).
	SizeBytes int64       `json:"sizeBytes,omitempty"`
	DeletedAt metav1.Time `json:"deletedAt"`
	PurgeAt   metav1.Time `json:"purgeAt"`
}

// Name is the object name of node's pool: "<node>.<pool>". Pool names are
// DNS labels (no dot), so the last dot splits it unambiguously. A name that
// would exceed 253 characters ends in a hash instead; the labels and the
// spec always carry the node and pool in full.
func Name(node, pool string) string {
	n := node + "." + pool
	if len(n) <= validation.DNS1123SubdomainMaxLength {
		return n
	}
	h := fnv.New64a()
	h.Write([]byte(n))
	suffix := fmt.Sprintf(".%016x", h.Sum64())
	return node[:validation.DNS1123SubdomainMaxLength-len(suffix)] + suffix
}

// ToUnstructured converts p for the dynamic client.
func ToUnstructured(p *DhppPool) (*unstructured.Unstructured, error) {
	c := p.DeepCopy()
	c.APIVersion, c.Kind = APIVersion, Kind
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(c)
	if err != nil {
		return nil, fmt.Errorf("convert DhppPool %s: %w", p.Name, err)
	}
	return &unstructured.Unstructured{Object: m}, nil
}

// FromUnstructured converts an object read with the dynamic client.
func FromUnstructured(u *unstructured.Unstructured) (*DhppPool, error) {
	p := &DhppPool{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p); err != nil {
		return nil, fmt.Errorf("read DhppPool %s: %w", u.GetName(), err)
	}
	return p, nil
}

// DeepCopy returns a deep copy of p.
func (p *DhppPool) DeepCopy() *DhppPool {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	if p.Spec.Fence != nil {
		f := *p.Spec.Fence
		c.Spec.Fence = &f
	}
	if p.Status.Mount != nil {
		m := *p.Status.Mount
		c.Status.Mount = &m
	}
	c.Status.Trash.Items = append([]TrashEntry(nil), p.Status.Trash.Items...)
	c.Spec.Restores = append([]RestoreRequest(nil), p.Spec.Restores...)
	c.Status.Restores = make([]RestoreResult, len(p.Status.Restores))
	for i, r := range p.Status.Restores {
		c.Status.Restores[i] = r
		c.Status.Restores[i].VolumeContext = maps.Clone(r.VolumeContext)
	}
	if p.Status.Restores == nil {
		c.Status.Restores = nil
	}
	return &c
}
