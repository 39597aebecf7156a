package kubectl

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/kube"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// getPool reads node's pool, with an error that says what to check when
// there is none.
func getPool(ctx context.Context, env Env, node, pool string) (*v1.DhppPool, error) {
	u, err := env.Dyn.Resource(v1.GroupVersionResource).Get(ctx, v1.Name(node, pool), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("node %q has no pool %q published (DhppPool %s not found): check the names with `kubectl dhpp pools`", node, pool, v1.Name(node, pool))
	}
	if err != nil {
		return nil, fmt.Errorf("read DhppPool %s: %w", v1.Name(node, pool), err)
	}
	return v1.FromUnstructured(u)
}

// fence asks the pool's driver to fence it (spec.fence) and waits until
// it reports the pool Fenced.
func fence(ctx context.Context, env Env, node, pool string, o Options) error {
	if strings.TrimSpace(o.Reason) == "" {
		return fmt.Errorf("--reason is required: say why (it is shown on the pool and the Node, e.g. --reason \"replacing disk sdb\")")
	}
	p, err := getPool(ctx, env, node, pool)
	if err != nil {
		return err
	}
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"fence": v1.Fence{Reason: o.Reason, RequestedAt: metav1.NewTime(env.Now().UTC().Truncate(time.Second))}}})
	if _, err := env.Dyn.Resource(v1.GroupVersionResource).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("request the fence on DhppPool %s: %w", p.Name, err)
	}
	if err := waitState(ctx, env, node, pool, o.Timeout, func(s string) bool { return s == "Fenced" }); err != nil {
		return fmt.Errorf("fence requested, but %w", err)
	}
	fmt.Fprintf(env.Out, "pool %s on node %s fenced: no new volumes go there; existing volumes and mounts keep working.\nUndo with: kubectl dhpp unfence %s %s\n", pool, node, node, pool)
	return nil
}

// unfence clears the fence request, then sets the Node's unfence
// annotation, the one way out of any fence (by hand, restored, or by the
// disk probe), and waits until the driver reports the pool not fenced. The
// order matters: the driver would fence again while spec.fence is set.
func unfence(ctx context.Context, env Env, node, pool string, o Options) error {
	p, err := getPool(ctx, env, node, pool)
	if err != nil {
		return err
	}
	if p.Spec.Fence != nil {
		patch := []byte(`{"spec":{"fence":null}}`)
		if _, err := env.Dyn.Resource(v1.GroupVersionResource).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("clear the fence request on DhppPool %s: %w", p.Name, err)
		}
	}
	ann, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		kube.UnfenceAnnotationPrefix + pool: env.Now().UTC().Format(time.RFC3339)}}})
	if _, err := env.Kube.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, ann, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s with %s%s: %w", node, kube.UnfenceAnnotationPrefix, pool, err)
	}
	if err := waitState(ctx, env, node, pool, o.Timeout, func(s string) bool { return s != "Fenced" }); err != nil {
		return fmt.Errorf("unfence requested, but %w", err)
	}
	fmt.Fprintf(env.Out, "pool %s on node %s unfenced: it takes new volumes again; its disk probe keeps running and fences it again after repeated failures.\n", pool, node)
	return nil
}

// waitState polls the pool's published health until ok says yes, for at
// most timeout (0: do not wait).
func waitState(ctx context.Context, env Env, node, pool string, timeout time.Duration, ok func(string) bool) error {
	if timeout <= 0 {
		return nil
	}
	var last string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := getPool(ctx, env, node, pool)
		if err != nil {
			return false, nil
		}
		last = p.Status.Health.State
		return ok(last), nil
	})
	if err != nil {
		return fmt.Errorf("the driver on node %s still reports pool %s %s after %s: is it running? (kubectl dhpp doctor)", node, pool, last, timeout)
	}
	return nil
}
