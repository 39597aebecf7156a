package scale

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// Tally is what one watcher of a resource receives: every change of every
// object of that resource in the cluster, whoever it belongs to. Each
// csi-provisioner (one per node) and the csi-resizer leader receive the
// same for PVCs and PVs.
type Tally struct {
	Events, Bytes atomic.Int64
}

// TallyValue is a copy of a Tally.
type TallyValue struct{ Events, Bytes int64 }

func (t *Tally) value() TallyValue { return TallyValue{t.Events.Load(), t.Bytes.Load()} }

// Sub is the traffic between two readings.
func (v TallyValue) Sub(b TallyValue) TallyValue {
	return TallyValue{v.Events - b.Events, v.Bytes - b.Bytes}
}

// watchTally watches PVCs (claims=true) or PVs cluster-wide until ctx ends,
// counting events and the JSON size of each object (what a JSON client gets
// on the wire, less the event envelope). It starts from the current
// resource version, so the cluster's existing objects are not counted, and
// watches again from where it was when the server ends a watch.
func watchTally(ctx context.Context, c kubernetes.Interface, claims bool, t *Tally) {
	rv := ""
	for ctx.Err() == nil {
		if rv == "" {
			var err error
			if rv, err = currentRV(ctx, c, claims); err != nil {
				klog.V(2).InfoS("list failed, retrying", "claims", claims, "err", err)
				time.Sleep(time.Second)
				continue
			}
		}
		opts := metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true}
		var w watch.Interface
		var err error
		if claims {
			w, err = c.CoreV1().PersistentVolumeClaims("").Watch(ctx, opts)
		} else {
			w, err = c.CoreV1().PersistentVolumes().Watch(ctx, opts)
		}
		if err != nil {
			rv = ""
			continue
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				rv = "" // expired: start again from now
				break
			}
			m, ok := ev.Object.(metav1.Object)
			if !ok {
				continue
			}
			rv = m.GetResourceVersion()
			if ev.Type == watch.Bookmark {
				continue
			}
			if b, err := json.Marshal(ev.Object); err == nil {
				t.Events.Add(1)
				t.Bytes.Add(int64(len(b)))
			}
		}
		w.Stop()
	}
}

// currentRV is the resource version of a one-item list: watching from it
// sees every change from now on.
func currentRV(ctx context.Context, c kubernetes.Interface, claims bool) (string, error) {
	opts := metav1.ListOptions{Limit: 1}
	if claims {
		l, err := c.CoreV1().PersistentVolumeClaims("").List(ctx, opts)
		if err != nil {
			return "", err
		}
		return l.ResourceVersion, nil
	}
	l, err := c.CoreV1().PersistentVolumes().List(ctx, opts)
	if err != nil {
		return "", err
	}
	return l.ResourceVersion, nil
}
