package poolstatus

import (
	"context"
	"fmt"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
	"k8s.io/klog/v2"
)

// RestoreFunc takes a trash entry of pool back as a live volume
// (node.Manager.Untrash) and returns it.
type RestoreFunc func(ctx context.Context, pool string, req v1.RestoreRequest) (*node.Volume, error)

// Restored is the result that reports v restored: what its
// PersistentVolume needs, as CreateVolume returns it (the same
// volume_context keys).
func Restored(req v1.RestoreRequest, v *node.Volume) v1.RestoreResult {
	return v1.RestoreResult{Entry: req.Entry, RequestedAt: req.RequestedAt, Phase: v1.RestoreRestored,
		Message:      fmt.Sprintf("volume %s is live again in pool %s with its data; create its PV and claim (kubectl dhpp restore does)", v.ID, v.Pool),
		VolumeHandle: v.ID, CapacityBytes: v.CapacityBytes, AccessType: string(v.AccessType),
		VolumeContext: map[string]string{dhpp.ContextPool: v.Pool, dhpp.ContextBackend: string(v.Backend)}}
}

// restores answers the pool's spec.restores: a request already answered
// (same entry and requestedAt) keeps its result; a new one is carried
// out, or refused while the pool is fenced. Results of requests no longer
// in the spec are dropped, so the status stays as small as the spec.
func (p *Publisher) restores(ctx context.Context, cur *v1.DhppPool) []v1.RestoreResult {
	if len(cur.Spec.Restores) == 0 {
		return nil
	}
	out := make([]v1.RestoreResult, 0, len(cur.Spec.Restores))
	for _, req := range cur.Spec.Restores {
		if r, ok := answered(cur.Status.Restores, req); ok {
			out = append(out, r)
			continue
		}
		out = append(out, p.restore(ctx, cur.Spec.Pool, req))
	}
	return out
}

func answered(results []v1.RestoreResult, req v1.RestoreRequest) (v1.RestoreResult, bool) {
	for _, r := range results {
		if r.Entry == req.Entry && r.RequestedAt.UTC().Truncate(time.Second).Equal(req.RequestedAt.UTC().Truncate(time.Second)) {
			return r, true
		}
	}
	return v1.RestoreResult{}, false
}

func (p *Publisher) restore(ctx context.Context, pool string, req v1.RestoreRequest) v1.RestoreResult {
	failed := func(msg string) v1.RestoreResult {
		klog.InfoS("Restore from the trash refused", "pool", pool, "entry", req.Entry, "claim", req.Claim, "reason", msg)
		return v1.RestoreResult{Entry: req.Entry, RequestedAt: req.RequestedAt, Phase: v1.RestoreFailed, Message: msg}
	}
	if p.cfg.Restore == nil {
		return failed("this driver does not restore volumes")
	}
	if v1.KindOf(v1.TrashEntry{Entry: req.Entry}) == v1.TrashKindSnapshot {
		return failed(fmt.Sprintf("trash entry %s is a deleted snapshot, not a volume: only volumes are restored from the trash", req.Entry))
	}
	if s, ok := p.cfg.Health.Status(pool); ok && s.State == health.Fenced {
		return failed(fmt.Sprintf("pool %s on node %s is fenced (%s): nothing is restored into a fenced pool; unfence it first (kubectl dhpp unfence %s %s)",
			pool, p.cfg.NodeName, s.LastError, p.cfg.NodeName, pool))
	}
	v, err := p.cfg.Restore(ctx, pool, req)
	if err != nil {
		return failed(err.Error())
	}
	return Restored(req, v)
}

// refresh re-reads pi's figures (a restore changed them).
func (p *Publisher) refresh(pi PoolInfo) PoolInfo {
	for _, n := range p.cfg.Pools() {
		if n.Name == pi.Name {
			return n
		}
	}
	return pi
}
