package poolstatus

import (
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/node"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrashOf is the published form of a pool's trash (node.Pool.Trash, newest
// first): what each entry is (a volume or a snapshot), who it belonged to,
// its size, and when the purger may remove it (the deletion time plus
// retention). Only the newest v1.MaxTrashItems are listed; the counts
// cover every entry.
func TrashOf(entries []node.TrashedVolume, retention time.Duration) v1.Trash {
	var t v1.Trash
	for _, tv := range entries {
		e := trashEntry(tv)
		e.DeletedAt = metav1.NewTime(tv.DeletedAt.UTC())
		e.PurgeAt = metav1.NewTime(tv.DeletedAt.Add(retention).UTC())
		t.Entries++
		t.Bytes += e.SizeBytes
		if len(t.Items) < v1.MaxTrashItems {
			t.Items = append(t.Items, e)
		}
	}
	if t.Entries > 0 {
		t.Size = Bytes(t.Bytes)
	}
	return t
}

// trashEntry names tv from its record: the claim of a volume, the
// VolumeSnapshot and source volume of a snapshot.
func trashEntry(tv node.TrashedVolume) v1.TrashEntry {
	e := v1.TrashEntry{Entry: tv.Entry}
	switch {
	case tv.Volume != nil:
		r := tv.Volume
		e.Kind, e.VolumeID, e.SizeBytes = v1.TrashKindVolume, r.ID, r.CapacityBytes
		e.PV, e.Namespace, e.Claim = r.Labels["pv"], r.Labels["namespace"], r.Labels["pvc"]
		if e.PV == "" {
			e.PV = r.CSIName
		}
	case tv.Snapshot != nil:
		s := tv.Snapshot
		e.Kind, e.SnapshotID, e.SourceVolumeID, e.SizeBytes = v1.TrashKindSnapshot, s.ID, s.SourceVolumeID, s.SizeBytes
		e.Namespace = s.Labels[node.SnapshotLabelNamespace]
		e.VolumeSnapshot = s.Labels[node.SnapshotLabelName]
		e.SnapshotContent = s.Labels[node.SnapshotLabelContent]
	default:
		e.Kind = v1.KindOf(e) // no readable record: the name tells
	}
	return e
}
