package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// API is every Kubernetes call the driver makes: its own Node, Events, and
// the listing of PersistentVolumes that finds orphaned and missing volumes
// (pkg/orphans).
//
// It is implemented on a bare REST client whose scheme knows only core/v1.
// client-go's typed clientset registers every API group of Kubernetes at
// start-up; measured on dhpp-driver, that alone cost 8-9 MiB of resident
// memory and doubled the binary, for five calls. Tests use
// kubetest.FakeAPI over client-go's fake clientset.
type API interface {
	GetNode(ctx context.Context, name string) (*corev1.Node, error)
	ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
	WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	// PatchNode patches the Node, or its subresource ("status") if given.
	PatchNode(ctx context.Context, name string, pt types.PatchType, data []byte, subresource string) (*corev1.Node, error)
	CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error)
	// ListPersistentVolumes lists PVs (one page when opts.Limit is set).
	ListPersistentVolumes(ctx context.Context, opts metav1.ListOptions) (*corev1.PersistentVolumeList, error)
}

// coreScheme holds core/v1 and the meta/v1 options types, nothing else.
var coreScheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		panic(err) // static registration; cannot fail
	}
	metav1.AddToGroupVersion(s, corev1.SchemeGroupVersion)
	return s
}()

var parameterCodec = runtime.NewParameterCodec(coreScheme)

type restAPI struct{ c rest.Interface }

// newRESTAPI returns an API on cfg (which it copies and points at /api/v1).
func newRESTAPI(cfg *rest.Config) (API, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = serializer.NewCodecFactory(coreScheme).WithoutConversion()
	if c.ContentType == "" {
		c.ContentType = runtime.ContentTypeJSON
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("core/v1 REST client: %w", err)
	}
	return restAPI{rc}, nil
}

func (a restAPI) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	return n, a.c.Get().Resource("nodes").Name(name).Do(ctx).Into(n)
}

func (a restAPI) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	l := &corev1.NodeList{}
	return l, a.c.Get().Resource("nodes").VersionedParams(&opts, parameterCodec).Do(ctx).Into(l)
}

func (a restAPI) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return a.c.Get().Resource("nodes").VersionedParams(&opts, parameterCodec).Watch(ctx)
}

func (a restAPI) PatchNode(ctx context.Context, name string, pt types.PatchType, data []byte, subresource string) (*corev1.Node, error) {
	r := a.c.Patch(pt).Resource("nodes").Name(name)
	if subresource != "" {
		r = r.SubResource(subresource)
	}
	n := &corev1.Node{}
	return n, r.Body(data).Do(ctx).Into(n)
}

func (a restAPI) CreateEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	return out, a.c.Post().Namespace(ev.Namespace).Resource("events").Body(ev).Do(ctx).Into(out)
}

func (a restAPI) ListPersistentVolumes(ctx context.Context, opts metav1.ListOptions) (*corev1.PersistentVolumeList, error) {
	l := &corev1.PersistentVolumeList{}
	return l, a.c.Get().Resource("persistentvolumes").VersionedParams(&opts, parameterCodec).Do(ctx).Into(l)
}
