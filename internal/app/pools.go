package app

import (
	"fmt"
	"path/filepath"

	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/raid"
	"k8s.io/klog/v2"
)

// fenceMissingPools fences each pool whose directory was missing at start,
// as its probe would after a few failures: no volume goes there, GetCapacity
// is 0, and (through the Fencer) the Node gets the PoolFenced Event, label
// and condition with the reason. The pool opens when its directory appears
// but, like any fenced pool, takes volumes again only once unfenced.
func fenceMissingPools(mon *health.Monitor, pools []*node.Pool) {
	for _, p := range pools {
		err := p.Missing()
		if err == nil {
			continue
		}
		msg := fmt.Sprintf("%v. It stays fenced after the directory appears until unfenced", err)
		if ferr := mon.Fence(p.Name, msg); ferr != nil {
			klog.ErrorS(ferr, "Fencing a missing pool", "pool", p.Name)
		}
	}
}

// reportQuarantined posts one VolumesQuarantined Event per pool that has
// quarantined volumes (each one is also logged when it is read).
func reportQuarantined(events *kube.NodeEvents, pools ...*node.Pool) {
	for _, p := range pools {
		qs := p.Quarantined()
		if len(qs) == 0 {
			continue
		}
		problems := make([]string, len(qs))
		for i, q := range qs {
			problems[i] = fmt.Sprintf("%s: record %s %s", q.Name, q.Record, q.Problem)
		}
		events.VolumesQuarantined(p.Name, problems)
	}
}

// newMonitor makes the Monitor with one probe per pool, on the pool's own
// disk at <pool>/.dhpp/health.
func newMonitor(cfg health.Config, pools []*node.Pool) (*health.Monitor, error) {
	mon, err := health.NewMonitor(cfg)
	if err != nil {
		return nil, err
	}
	for _, p := range pools {
		if err := mon.AddPool(p.Name, filepath.Join(p.Path, filepath.FromSlash(node.HealthFile))); err != nil {
			return nil, err
		}
	}
	return mon, nil
}

// raidPools lists the pools for the RAID watcher.
func raidPools(pools []*node.Pool) []raid.Pool {
	out := make([]raid.Pool, len(pools))
	for i, p := range pools {
		out[i] = raid.Pool{Name: p.Name, Path: p.Path}
	}
	return out
}
