package poolstatus

import (
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/node"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrashOf is the published form of a pool's trash (node.Pool.Trash, newest
// first): who the volumes belonged to, their size, and when the purger may
// remove each (the deletion time plus retention). Only the newest
// v1.MaxTrashItems are listed; the counts cover every entry.
func TrashOf(entries []node.TrashedVolume, retention time.Duration) v1.Trash {
	var t v1.Trash
	for _, tv := range entries {
		e := v1.TrashEntry{Entry: tv.Entry, DeletedAt: metav1.NewTime(tv.DeletedAt.UTC()),
			PurgeAt: metav1.NewTime(tv.DeletedAt.Add(retention).UTC())}
		if r := tv.Volume; r != nil {
			e.VolumeID, e.SizeBytes = r.ID, r.CapacityBytes
			e.PV, e.Namespace, e.Claim = r.Labels["pv"], r.Labels["namespace"], r.Labels["pvc"]
			if e.PV == "" {
				e.PV = r.CSIName
			}
		}
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
