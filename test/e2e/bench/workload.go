package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Workload is one measured round: N claims of one StorageClass in one
// namespace, each used by one pod pinned round-robin to the nodes.
type Workload struct {
	Client       kubernetes.Interface
	Namespace    string
	StorageClass string
	N            int
	Nodes        []string
	Size         string
	Image        string
	// Parallel is how many create/delete calls the benchmark has in flight;
	// enough that the client is never what is measured.
	Parallel int
	// Timeout bounds each phase (bind+run, pod teardown, PV deletion).
	Timeout time.Duration
}

// Timings are the per-claim results of a round, indexed by claim. A zero
// duration means the event was not seen before the timeout.
type Timings struct {
	Bound, Running, PVDeleted []time.Duration
	// The stages of PVC→Bound, from the claim's create: the scheduler
	// writing the selected-node annotation, and the PV object appearing
	// (the provisioner's work done; the rest is the PV binder's).
	NodeSelected, PVCreated []time.Duration
	// The first stage of PV deletion, from the claim's delete: the PV
	// binder marking the PV Released (then the provisioner deletes it).
	PVReleased []time.Duration
	// Spans from the first create to the last Bound/Running, and from the
	// first PVC delete to the last PV gone: the throughput denominators.
	BindSpan, RunSpan, DeleteSpan time.Duration
	// PodTeardown is from deleting all pods to the last pod gone.
	PodTeardown time.Duration
	Nodes       map[string]int // claims per node, as bound
}

func (w Workload) pvcName(i int) string { return fmt.Sprintf("vol-%04d", i) }
func (w Workload) podName(i int) string { return fmt.Sprintf("pod-%04d", i) }

// times is a set of first-seen timestamps by object name.
type times struct {
	mu   sync.Mutex
	seen map[string]time.Time
	ch   chan struct{} // gets a token on every new entry
}

func newTimes() *times { return &times{seen: map[string]time.Time{}, ch: make(chan struct{}, 1)} }

func (t *times) mark(name string, at time.Time) {
	t.mu.Lock()
	if _, ok := t.seen[name]; !ok {
		t.seen[name] = at
		select {
		case t.ch <- struct{}{}:
		default:
		}
	}
	t.mu.Unlock()
}

func (t *times) get(name string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.seen[name]
	return v, ok
}

func (t *times) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.seen)
}

// waitCount blocks until n entries are seen or ctx ends.
func (t *times) waitCount(ctx context.Context, n int) error {
	for t.count() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d seen: %w", t.count(), n, ctx.Err())
		case <-t.ch:
		case <-time.After(time.Second):
		}
	}
	return nil
}

// parallel runs f(0..n-1) on k goroutines and returns the first error.
func parallel(n, k int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	for range max(k, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// Run creates the claims and pods, waits for every claim Bound and pod
// Running, then deletes the pods, then the claims, and waits for every PV to
// be gone. Timestamps are taken when the watch event arrives (sub-ms), the
// create/delete timestamps just before each call. The namespace must exist.
func (w Workload) Run(ctx context.Context) (*Timings, error) {
	bound, running, podGone, pvGone := newTimes(), newTimes(), newTimes(), newTimes()
	selected, pvSeen, released := newTimes(), newTimes(), newTimes()
	var pvMu sync.Mutex
	pvOfClaim := map[string]string{} // PV name -> claim name
	nodeOf := map[string]string{}    // claim -> node

	stop := make(chan struct{})
	defer close(stop)
	// One informer per kind: a watch that breaks is resumed by the reflector,
	// so no event is lost over a long round.
	pvcInf := cache.NewSharedIndexInformer(cache.NewListWatchFromClient(w.Client.CoreV1().RESTClient(), "persistentvolumeclaims", w.Namespace, fields.Everything()), &corev1.PersistentVolumeClaim{}, 0, cache.Indexers{})
	podInf := cache.NewSharedIndexInformer(cache.NewListWatchFromClient(w.Client.CoreV1().RESTClient(), "pods", w.Namespace, fields.Everything()), &corev1.Pod{}, 0, cache.Indexers{})
	pvInf := cache.NewSharedIndexInformer(cache.NewListWatchFromClient(w.Client.CoreV1().RESTClient(), "persistentvolumes", metav1.NamespaceAll, fields.Everything()), &corev1.PersistentVolume{}, 0, cache.Indexers{})

	onPVC := func(obj any) {
		c, ok := obj.(*corev1.PersistentVolumeClaim)
		if !ok {
			return
		}
		now := time.Now()
		if _, ok := c.Annotations[annSelectedNode]; ok {
			selected.mark(c.Name, now)
		}
		if c.Status.Phase == corev1.ClaimBound {
			bound.mark(c.Name, now)
		}
	}
	onPod := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && p.Status.Phase == corev1.PodRunning {
			running.mark(p.Name, time.Now())
		}
	}
	onPV := func(obj any) {
		if pv, ok := obj.(*corev1.PersistentVolume); ok && pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == w.Namespace {
			now := time.Now()
			pvSeen.mark(pv.Spec.ClaimRef.Name, now)
			if pv.Status.Phase == corev1.VolumeReleased {
				released.mark(pv.Spec.ClaimRef.Name, now)
			}
			pvMu.Lock()
			pvOfClaim[pv.Name] = pv.Spec.ClaimRef.Name
			if na := pv.Spec.NodeAffinity; na != nil && na.Required != nil {
				for _, t := range na.Required.NodeSelectorTerms {
					for _, e := range t.MatchExpressions {
						if len(e.Values) == 1 {
							nodeOf[pv.Spec.ClaimRef.Name] = e.Values[0]
						}
					}
				}
			}
			pvMu.Unlock()
		}
	}
	_, _ = pvcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onPVC, UpdateFunc: func(_, n any) { onPVC(n) }})
	_, _ = podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onPod, UpdateFunc: func(_, n any) { onPod(n) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				podGone.mark(p.Name, time.Now())
			}
		},
	})
	_, _ = pvInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onPV, UpdateFunc: func(_, n any) { onPV(n) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pv, ok := obj.(*corev1.PersistentVolume); ok && pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == w.Namespace {
				pvGone.mark(pv.Spec.ClaimRef.Name, time.Now())
			}
		},
	})
	for _, inf := range []cache.SharedIndexInformer{pvcInf, podInf, pvInf} {
		go inf.Run(stop)
	}
	syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), pvcInf.HasSynced, podInf.HasSynced, pvInf.HasSynced) {
		return nil, fmt.Errorf("informers in %s did not sync", w.Namespace)
	}

	created := make([]time.Time, w.N)
	podCreated := make([]time.Time, w.N)
	start := time.Now()
	klog.InfoS("creating claims and pods", "namespace", w.Namespace, "class", w.StorageClass, "n", w.N)
	err := parallel(w.N, w.Parallel, func(i int) error {
		created[i] = time.Now()
		if _, err := w.Client.CoreV1().PersistentVolumeClaims(w.Namespace).Create(ctx, w.claim(i), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create claim %s: %w", w.pvcName(i), err)
		}
		podCreated[i] = time.Now()
		if _, err := w.Client.CoreV1().Pods(w.Namespace).Create(ctx, w.pod(i), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s: %w", w.podName(i), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	upCtx, cancelUp := context.WithTimeout(ctx, w.Timeout)
	defer cancelUp()
	errBound := bound.waitCount(upCtx, w.N)
	errRun := running.waitCount(upCtx, w.N)
	t := &Timings{Bound: make([]time.Duration, w.N), Running: make([]time.Duration, w.N), PVDeleted: make([]time.Duration, w.N),
		NodeSelected: make([]time.Duration, w.N), PVCreated: make([]time.Duration, w.N), PVReleased: make([]time.Duration, w.N),
		Nodes: map[string]int{}}
	var lastBound, lastRun time.Time
	for i := range w.N {
		if at, ok := selected.get(w.pvcName(i)); ok {
			t.NodeSelected[i] = at.Sub(created[i])
		}
		if at, ok := pvSeen.get(w.pvcName(i)); ok {
			t.PVCreated[i] = at.Sub(created[i])
		}
		if at, ok := bound.get(w.pvcName(i)); ok {
			t.Bound[i] = at.Sub(created[i])
			lastBound = later(lastBound, at)
		}
		if at, ok := running.get(w.podName(i)); ok {
			t.Running[i] = at.Sub(podCreated[i])
			lastRun = later(lastRun, at)
		}
	}
	t.BindSpan, t.RunSpan = spanFrom(start, lastBound), spanFrom(start, lastRun)
	klog.InfoS("round up", "namespace", w.Namespace, "bound", bound.count(), "running", running.count(), "bindSpan", t.BindSpan, "runSpan", t.RunSpan)
	if errBound != nil || errRun != nil {
		// Still tear down below: a timed-out round must not leave volumes.
		klog.InfoS("round timed out; cleaning up", "namespace", w.Namespace, "bound", errBound, "running", errRun)
	}

	// Pods first: a claim in use is held by its protection finalizer, and
	// then the PV deletion time would include pod teardown. The delete is
	// graceful, as a StatefulSet's is: the pod object goes only after the
	// kubelet has stopped it and unmounted its volumes. (A grace period of
	// 0 is a force delete: the object vanishes at once while the volume is
	// still mounted, and the provisioner's DeleteVolume then meets a
	// mounted volume and backs off.)
	podDel := time.Now()
	err = parallel(w.N, w.Parallel, func(i int) error {
		err := w.Client.CoreV1().Pods(w.Namespace).Delete(ctx, w.podName(i), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete pod %s: %w", w.podName(i), err)
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	downCtx, cancelDown := context.WithTimeout(ctx, w.Timeout)
	defer cancelDown()
	if err := podGone.waitCount(downCtx, w.N); err != nil {
		return t, fmt.Errorf("pods in %s not gone: %w", w.Namespace, err)
	}
	t.PodTeardown = time.Since(podDel)

	deleted := make([]time.Time, w.N)
	delStart := time.Now()
	err = parallel(w.N, w.Parallel, func(i int) error {
		deleted[i] = time.Now()
		err := w.Client.CoreV1().PersistentVolumeClaims(w.Namespace).Delete(ctx, w.pvcName(i), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete claim %s: %w", w.pvcName(i), err)
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	wantGone := bound.count() // only bound claims had a PV
	delCtx, cancelDel := context.WithTimeout(ctx, w.Timeout)
	defer cancelDel()
	errGone := pvGone.waitCount(delCtx, wantGone)
	var lastGone time.Time
	for i := range w.N {
		if at, ok := released.get(w.pvcName(i)); ok {
			t.PVReleased[i] = at.Sub(deleted[i])
		}
		if at, ok := pvGone.get(w.pvcName(i)); ok {
			t.PVDeleted[i] = at.Sub(deleted[i])
			lastGone = later(lastGone, at)
		}
	}
	t.DeleteSpan = spanFrom(delStart, lastGone)
	pvMu.Lock()
	for _, n := range nodeOf {
		t.Nodes[n]++
	}
	pvMu.Unlock()
	switch {
	case errBound != nil:
		return t, fmt.Errorf("claims in %s not bound within %s: %w", w.Namespace, w.Timeout, errBound)
	case errRun != nil:
		return t, fmt.Errorf("pods in %s not running within %s: %w", w.Namespace, w.Timeout, errRun)
	case errGone != nil:
		return t, fmt.Errorf("PVs of %s not deleted within %s: %w", w.Namespace, w.Timeout, errGone)
	}
	return t, nil
}

// annSelectedNode is how the scheduler hands a WaitForFirstConsumer claim
// its node (k8s.io/component-helpers/storage/volume.AnnSelectedNode).
const annSelectedNode = "volume.kubernetes.io/selected-node"

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func spanFrom(start, end time.Time) time.Duration {
	if end.IsZero() {
		return 0
	}
	return end.Sub(start)
}

func (w Workload) claim(i int) *corev1.PersistentVolumeClaim {
	sc := w.StorageClass
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: w.pvcName(i), Labels: map[string]string{"app.kubernetes.io/name": "dhpp-bench"}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &sc,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(w.Size)}},
		},
	}
}

// pod is a busybox that writes into its volume once (so a volume that is
// not really mounted writable fails the pod) and then sleeps. The node is
// pinned round-robin so both provisioners get the same spread.
func (w Workload) pod(i int) *corev1.Pod {
	// 1 s: sleep as PID 1 ignores SIGTERM, so the kubelet kills it after
	// the grace period; 0 would make every delete a force delete.
	grace := int64(1)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: w.podName(i), Labels: map[string]string{"app.kubernetes.io/name": "dhpp-bench"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "c",
				Image:           w.Image,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Command:         []string{"sh", "-c", "echo ok > /data/ok && exec sleep 86400"},
				VolumeMounts:    []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("1m"), corev1.ResourceMemory: resource.MustParse("4Mi"),
				}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: w.pvcName(i)},
			}}},
		},
	}
	if len(w.Nodes) > 0 {
		p.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": w.Nodes[i%len(w.Nodes)]}
	}
	return p
}
