package app

import (
	"fmt"

	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/node"
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
func reportQuarantined(f *kube.Fencer, pools ...*node.Pool) {
	for _, p := range pools {
		qs := p.Quarantined()
		if len(qs) == 0 {
			continue
		}
		problems := make([]string, len(qs))
		for i, q := range qs {
			problems[i] = fmt.Sprintf("%s: record %s %s", q.Name, q.Record, q.Problem)
		}
		f.VolumesQuarantined(p.Name, problems)
	}
}
