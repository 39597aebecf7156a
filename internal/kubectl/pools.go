package kubectl

import (
	"context"
	"fmt"
	"sort"
	"strconv"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// listPools reads the DhppPool objects (of one node if node is set),
// sorted by node and pool.
func listPools(ctx context.Context, env Env, node string) ([]v1.DhppPool, error) {
	opts := metav1.ListOptions{}
	if node != "" {
		opts.LabelSelector = labels.SelectorFromSet(labels.Set{v1.LabelNode: node}).String()
	}
	l, err := env.Dyn.Resource(v1.GroupVersionResource).List(ctx, opts)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("the DhppPool API is not installed (CRD dhpppools.dhpp.io): install dhpp from deploy/ (kubectl apply -k deploy/kustomize/base) or its Helm chart")
	}
	if err != nil {
		return nil, fmt.Errorf("list DhppPools: %w", err)
	}
	out := make([]v1.DhppPool, 0, len(l.Items))
	for i := range l.Items {
		p, err := v1.FromUnstructured(&l.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Spec.Node != out[j].Spec.Node {
			return out[i].Spec.Node < out[j].Spec.Node
		}
		return out[i].Spec.Pool < out[j].Spec.Pool
	})
	return out, nil
}

func pools(ctx context.Context, env Env, o Options) error {
	ps, err := listPools(ctx, env, o.Node)
	if err != nil {
		return err
	}
	if o.Output == "json" || o.Output == "yaml" {
		return structured(env.Out, o.Output, v1.DhppPoolList{
			TypeMeta: metav1.TypeMeta{APIVersion: v1.APIVersion, Kind: v1.Kind + "List"}, Items: withTypeMeta(ps)})
	}
	if len(ps) == 0 {
		if o.Node != "" {
			return fmt.Errorf("no pools published for node %q: is dhpp's driver running there? (kubectl dhpp doctor)", o.Node)
		}
		return fmt.Errorf("no pools published: is dhpp's driver running? (kubectl dhpp doctor)")
	}
	headers := []string{"NODE", "POOL", "BACKEND", "ENFORCED", "CAPACITY", "PROVISIONED", "USED", "FREE", "VOLUMES", "HEALTH", "REASON", "RAID", "PROBE", "TRASH"}
	if o.Output == "wide" {
		headers = append(headers, "AVAILABLE", "PATH", "UPDATED", "VERSION", "MESSAGE")
	}
	rows := make([][]string, 0, len(ps))
	for _, p := range ps {
		s := p.Status
		health := s.Health.State
		if s.Missing != "" {
			health += " (missing)"
		}
		raid := "ok"
		if s.RAID.Degraded {
			raid = "degraded"
		}
		trash := strconv.Itoa(s.Trash.Entries)
		if s.Trash.Entries > 0 {
			trash += " (" + s.Trash.Size + ")"
		}
		r := []string{p.Spec.Node, p.Spec.Pool, s.Backend, yesNo(s.SizeEnforced), s.Capacity, s.Provisioned, s.Used, s.Free,
			strconv.Itoa(s.Volumes), health, s.Health.Reason, raid, s.Health.ProbeLatency, trash}
		if o.Output == "wide" {
			msg := s.Health.Message
			if s.Missing != "" {
				msg = s.Missing
			}
			r = append(r, s.Available, s.Path, age(env.Now(), s.UpdatedAt.Time), s.DriverVersion, msg)
		}
		rows = append(rows, r)
	}
	return table(env.Out, headers, rows)
}

func withTypeMeta(ps []v1.DhppPool) []v1.DhppPool {
	for i := range ps {
		ps[i].APIVersion, ps[i].Kind = v1.APIVersion, v1.Kind
	}
	return ps
}
