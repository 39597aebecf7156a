package scale

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The objects the benchmark creates. None is dhpp's: static PVs of a CSI
// driver that does not exist, bound to claims of a class without a
// provisioner, and claims of that class left Pending. All carry
// LabelKey=LabelValue so that cleanup finds exactly them.
const (
	Namespace    = "dhpp-scale"
	StorageClass = "dhpp-scale-other"
	// OtherDriver is the CSI driver the static PVs name; nothing serves it.
	OtherDriver = "scale.example.com"
	LabelKey    = "dhpp.io/scale-benchmark"
	LabelValue  = "true"
)

func labels() map[string]string { return map[string]string{LabelKey: LabelValue} }

func pvcName(i int) string { return fmt.Sprintf("claim-%05d", i) }
func pvName(i int) string  { return fmt.Sprintf("dhpp-scale-pv-%05d", i) }

// claim is the i-th claim; bound claims name their PV so that the PV
// binder binds the pair without searching.
func claim(i int, bound bool) *corev1.PersistentVolumeClaim {
	sc := StorageClass
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: pvcName(i), Namespace: Namespace, Labels: labels()},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &sc,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			},
		},
	}
	if bound {
		c.Spec.VolumeName = pvName(i)
	}
	return c
}

// volume is the i-th static PV, pre-bound to claim i.
func volume(i int) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName(i), Labels: labels()},
		Spec: corev1.PersistentVolumeSpec{
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			StorageClassName:              StorageClass,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				CSI: &corev1.CSIPersistentVolumeSource{Driver: OtherDriver, VolumeHandle: fmt.Sprintf("vol-%05d", i)},
			},
			ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: Namespace, Name: pvcName(i)},
		},
	}
}

// Population says which objects exist: claims [0, N); claim i is bound to
// PV i unless i is a multiple of PendingEvery (those stay Pending and have
// no PV).
type Population struct {
	N            int
	PendingEvery int
}

func (p Population) pending(i int) bool { return p.PendingEvery > 0 && i%p.PendingEvery == 0 }

// Counts is how many claims are bound and pending and how many PVs exist.
func (p Population) Counts() (bound, pending int) {
	for i := 0; i < p.N; i++ {
		if p.pending(i) {
			pending++
		} else {
			bound++
		}
	}
	return bound, pending
}

// setup creates the namespace and the class (no provisioner: its claims
// stay Pending unless they name a PV).
func setup(ctx context.Context, c kubernetes.Interface) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace, Labels: labels()}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace: %w", err)
	}
	immediate := storagev1.VolumeBindingImmediate
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: StorageClass, Labels: labels()},
		Provisioner: "kubernetes.io/no-provisioner", VolumeBindingMode: &immediate}
	if _, err := c.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create storage class: %w", err)
	}
	return nil
}

// grow creates the objects of claims [from, to) with parallel calls.
func grow(ctx context.Context, c kubernetes.Interface, p Population, from, parallel int) error {
	idx := make(chan int)
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				if err := createPair(ctx, c, i, !p.pending(i)); err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for i := from; i < p.N && ctx.Err() == nil && firstErr.Load() == nil; i++ {
		idx <- i
	}
	close(idx)
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return ctx.Err()
}

func createPair(ctx context.Context, c kubernetes.Interface, i int, bound bool) error {
	if bound {
		if _, err := c.CoreV1().PersistentVolumes().Create(ctx, volume(i), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create PV %d: %w", i, err)
		}
	}
	if _, err := c.CoreV1().PersistentVolumeClaims(Namespace).Create(ctx, claim(i, bound), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create claim %d: %w", i, err)
	}
	return nil
}

// cleanup deletes what the benchmark created: the namespace (its claims),
// the labelled PVs (one call each, in parallel: a DeleteCollection of
// thousands outlives the request timeout) and the class.
func cleanup(ctx context.Context, c kubernetes.Interface, parallel int) error {
	if err := c.CoreV1().Namespaces().Delete(ctx, Namespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace: %w", err)
	}
	pvs, err := c.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{LabelSelector: LabelKey + "=" + LabelValue})
	if err != nil {
		return fmt.Errorf("list PVs: %w", err)
	}
	names := make(chan string)
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < max(parallel, 1); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range names {
				if err := c.CoreV1().PersistentVolumes().Delete(ctx, n, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					firstErr.CompareAndSwap(nil, fmt.Errorf("delete PV %s: %w", n, err))
				}
			}
		}()
	}
	for _, pv := range pvs.Items {
		names <- pv.Name
	}
	close(names)
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	if err := c.StorageV1().StorageClasses().Delete(ctx, StorageClass, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete storage class: %w", err)
	}
	return nil
}
