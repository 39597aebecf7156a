package app

import (
	"context"
	"strings"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/poolstatus"
	"github.com/dhpp-io/dhpp/pkg/raid"
	"k8s.io/client-go/dynamic"
)

// nodeSide is the driver's cluster side (connectNode); all nil outside a
// cluster.
type nodeSide struct {
	client  kube.API
	dynamic dynamic.Interface
	fencer  *kube.Fencer
	events  *kube.NodeEvents
}

// newPublisher makes the DhppPool publisher: each pool's figures from the
// Manager, its health from the Monitor, its RAID state from the watcher
// and its trash read from the pool directory, republished soon after the
// Manager signals a change; it restores trash entries through the Manager
// (spec.restores).
func newPublisher(c Config, side nodeSide, period time.Duration, mgr *node.Manager, mon *health.Monitor, arrays *raid.Watcher) (*poolstatus.Publisher, error) {
	return poolstatus.New(poolstatus.Config{
		Client:   side.dynamic,
		NodeName: c.NodeID,
		NodeUID: func(ctx context.Context) (string, error) {
			n, err := side.client.GetNode(ctx, c.NodeID)
			if err != nil {
				return "", err
			}
			return string(n.UID), nil
		},
		Pools: func() []poolstatus.PoolInfo {
			pools := mgr.Pools()
			out := make([]poolstatus.PoolInfo, len(pools))
			for i, p := range pools {
				out[i] = poolstatus.FromPool(p)
			}
			return out
		},
		Health:   mon,
		Degraded: arrays.PoolDegraded,
		Trash: func(pi poolstatus.PoolInfo) (v1.Trash, error) {
			p, err := mgr.Pool(pi.Name)
			if err != nil {
				return v1.Trash{}, err
			}
			entries, err := p.Trash()
			return poolstatus.TrashOf(entries, c.TrashRetention), err
		},
		Restore: func(ctx context.Context, pool string, req v1.RestoreRequest) (*node.Volume, error) {
			labels := map[string]string{}
			if req.PV != "" {
				labels["pv"] = req.PV
			}
			if ns, claim, ok := strings.Cut(req.Claim, "/"); ok {
				labels["namespace"], labels["pvc"] = ns, claim
			}
			return mgr.Untrash(ctx, node.UntrashRequest{Pool: pool, Entry: req.Entry, Labels: labels})
		},
		Changed: mgr.Changed(),
		Version: dhpp.Version,
		Period:  period,
	})
}
