// Package kubetest adapts client-go's fake clientset to kube.API for tests.
// Only tests import it: it pulls in the full typed clientset that the driver
// itself avoids.
package kubetest

import (
	"context"

	"github.com/dhpp-io/dhpp/pkg/kube"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
)

// FakeAPI is a kube.API over a fake clientset.
type FakeAPI struct{ C *fake.Clientset }

var _ kube.API = FakeAPI{}

// IsWatchListSemanticsUnSupported tells the informer, as the fake clientset
// itself does, that this client cannot stream an initial list.
func (FakeAPI) IsWatchListSemanticsUnSupported() bool { return true }

func (f FakeAPI) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	return f.C.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
}

func (f FakeAPI) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	return f.C.CoreV1().Nodes().List(ctx, opts)
}

func (f FakeAPI) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return f.C.CoreV1().Nodes().Watch(ctx, opts)
}

func (f FakeAPI) PatchNode(ctx context.Context, name string, pt types.PatchType, data []byte, subresource string) (*corev1.Node, error) {
	if subresource != "" {
		return f.C.CoreV1().Nodes().Patch(ctx, name, pt, data, metav1.PatchOptions{}, subresource)
	}
	return f.C.CoreV1().Nodes().Patch(ctx, name, pt, data, metav1.PatchOptions{})
}

func (f FakeAPI) CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	return f.C.CoreV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
}

func (f FakeAPI) ListPersistentVolumes(ctx context.Context, opts metav1.ListOptions) (*corev1.PersistentVolumeList, error) {
	return f.C.CoreV1().PersistentVolumes().List(ctx, opts)
}
