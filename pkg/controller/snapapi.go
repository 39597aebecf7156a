package controller

import (
	"context"
	"sync"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	snaplisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// snapshotGroupVersion is the API of the snapshot CRDs (installed with the
// snapshot-controller, not by Kubernetes itself).
const snapshotGroupVersion = "snapshot.storage.k8s.io/v1"

// snapshotAPI gives the controller cached VolumeSnapshots and
// VolumeSnapshotContents once their CRDs exist. A cluster without them is
// normal (snapshots are optional): the node-loss work must not wait for
// them, and informers on a missing API would only log list errors, so the
// CRDs are looked up first, again every retry period until they appear.
type snapshotAPI struct {
	client snapclient.Interface // nil: snapshots are not used at all
	resync time.Duration
	every  time.Duration // how often discovery is retried

	mu        sync.RWMutex
	snapshots snaplisters.VolumeSnapshotLister
	contents  snaplisters.VolumeSnapshotContentLister
}

// listers returns the caches, or false while the CRDs are absent.
func (s *snapshotAPI) listers() (snaplisters.VolumeSnapshotLister, snaplisters.VolumeSnapshotContentLister, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.snapshots, s.contents, s.snapshots != nil
}

// installed reports whether the API server serves both snapshot resources.
func installed(d discovery.DiscoveryInterface) (bool, error) {
	list, err := d.ServerResourcesForGroupVersion(snapshotGroupVersion)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	var snaps, contents bool
	for _, r := range list.APIResources {
		snaps = snaps || r.Name == "volumesnapshots"
		contents = contents || r.Name == "volumesnapshotcontents"
	}
	return snaps && contents, nil
}

// run waits for the snapshot CRDs (logging their absence once), then starts
// the informers, calls onContent for every content event, and publishes
// the listers once the caches are synced. It returns when ctx is done.
func (s *snapshotAPI) run(ctx context.Context, lookup func() (bool, error), onContent func(any)) {
	if s.client == nil {
		return
	}
	logged := false
	for {
		ok, err := lookup()
		switch {
		case ok:
			s.start(ctx, onContent)
			return
		case err != nil:
			klog.ErrorS(err, "Looking up the snapshot API; retrying", "groupVersion", snapshotGroupVersion, "retryIn", s.every)
		case !logged:
			klog.InfoS("Snapshot CRDs not installed: restores and clones are not placed and pre-provisioned snapshot contents not labelled until they are; node-loss handling runs regardless",
				"groupVersion", snapshotGroupVersion, "checkingEvery", s.every)
			logged = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.every):
		}
	}
}

func (s *snapshotAPI) start(ctx context.Context, onContent func(any)) {
	f := snapinformers.NewSharedInformerFactory(s.client, s.resync)
	snapInf := f.Snapshot().V1().VolumeSnapshots().Informer()
	contentInf := f.Snapshot().V1().VolumeSnapshotContents().Informer()
	if _, err := contentInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onContent,
		UpdateFunc: func(_, n any) { onContent(n) },
	}); err != nil {
		klog.ErrorS(err, "Watching VolumeSnapshotContents")
		return
	}
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), snapInf.HasSynced, contentInf.HasSynced) {
		return
	}
	s.mu.Lock()
	s.snapshots = f.Snapshot().V1().VolumeSnapshots().Lister()
	s.contents = f.Snapshot().V1().VolumeSnapshotContents().Lister()
	s.mu.Unlock()
	klog.InfoS("Watching VolumeSnapshots and VolumeSnapshotContents", "groupVersion", snapshotGroupVersion)
}
