package app

import (
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/orphans"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// orphanChecker is the orphan and missing-volume check with its own metrics
// registry (served on /metrics next to the others).
type orphanChecker struct {
	*orphans.Checker
	registry *prometheus.Registry
}

// newOrphanChecker returns the check of this node's volumes against the
// cluster's PVs, or nil when --orphan-check-period=0 turns it off.
func newOrphanChecker(c Config, client kube.API, events *kube.NodeEvents, mgr *node.Manager) *orphanChecker {
	if c.Orphans.Period == 0 {
		klog.InfoS("Orphan check off (--orphan-check-period=0): volumes without a PV and PVs without a volume are not reported")
		return nil
	}
	var pools []string
	for _, p := range mgr.Pools() {
		pools = append(pools, p.Name)
	}
	chk := orphans.New(orphans.Config{
		NodeID: c.NodeID, Pools: pools, Volumes: mgr, API: client, Events: events,
		Grace: c.Orphans.Grace, Period: c.Orphans.Period, Trash: c.Orphans.Trash,
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(chk) // a fresh registry: cannot collide
	klog.InfoS("Orphan check on", "grace", c.Orphans.Grace, "period", c.Orphans.Period, "trash", c.Orphans.Trash)
	return &orphanChecker{Checker: chk, registry: reg}
}
