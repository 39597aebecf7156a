// Package metrics exports the node's pools and volumes to Prometheus. Every
// value is computed when Prometheus scrapes (a prometheus.Collector), from the
// pools' statfs and the backends' own accounting: there is no background loop
// and nothing walks a volume's files, so a scrape costs the same whether a
// volume holds ten files or ten million.
//
// Pool health series (dhpp_pool_fenced and friends) come from pkg/health's
// Monitor.Register; CSI operation counts and latencies from csi-lib-utils.
// docs/metrics.md lists them all.
package metrics

import (
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// Source is what the collector reads; *node.Manager implements it.
type Source interface {
	Pools() []*node.Pool
	ListVolumes() []*node.Volume
	// VolumeAllocated is what a volume occupies by its backend's own
	// account; accounted is false where the backend keeps none (dir).
	VolumeAllocated(id string) (bytes int64, accounted bool, err error)
}

var _ Source = (*node.Manager)(nil)

var (
	descPoolCapacity = prometheus.NewDesc("dhpp_pool_capacity_bytes",
		"Size of the filesystem holding the pool.", []string{"pool", "backend"}, nil)
	descPoolAvailable = prometheus.NewDesc("dhpp_pool_available_bytes",
		"Bytes a new volume may still get from the pool (what GetCapacity reports for a healthy pool): free space minus space promised to existing volumes.", []string{"pool"}, nil)
	descPoolProvisioned = prometheus.NewDesc("dhpp_pool_provisioned_bytes",
		"Sum of the sizes of the pool's volumes, and of what its snapshots occupied when taken.", []string{"pool"}, nil)
	descPoolVolumes = prometheus.NewDesc("dhpp_pool_volumes",
		"Number of volumes in the pool.", []string{"pool"}, nil)
	descPoolQuarantined = prometheus.NewDesc("dhpp_pool_quarantined_volumes",
		"Volume directories of the pool whose record cannot be trusted (unreadable, or disagreeing with where it lies): left untouched, their names reserved, every request on them refused until an operator acts.", []string{"pool"}, nil)
	descPoolMissing = prometheus.NewDesc("dhpp_pool_missing",
		"1 while the pool's directory is missing or is not the one the driver opened (an unmounted data disk?): the pool refuses every request; else 0.", []string{"pool"}, nil)
	descVolumeCapacity = prometheus.NewDesc("dhpp_volume_capacity_bytes",
		"Provisioned size of a volume.", []string{"pool", "volume", "backend"}, nil)
	descVolumeUsed = prometheus.NewDesc("dhpp_volume_used_bytes",
		"Bytes a volume uses by its backend's accounting: btrfs qgroup referenced bytes, or a loop image's allocated blocks. Not reported for dir volumes (no per-volume accounting without walking the tree).", []string{"pool", "volume", "backend"}, nil)
	descScrapeErrors = prometheus.NewDesc("dhpp_metrics_collect_errors",
		"Pools and volumes whose figures could not be read in this scrape (e.g. a vanished disk); their series are missing from it.", nil, nil)
)

// Collector is a prometheus.Collector over a node's pools and volumes.
type Collector struct {
	src Source
}

// NewCollector returns a Collector reading src at every scrape.
func NewCollector(src Source) *Collector { return &Collector{src: src} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPoolCapacity, descPoolAvailable, descPoolProvisioned,
		descPoolVolumes, descPoolQuarantined, descPoolMissing, descVolumeCapacity, descVolumeUsed, descScrapeErrors} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A pool or volume whose figures
// cannot be read is left out of this scrape and counted in
// dhpp_metrics_collect_errors rather than failing the whole scrape: a dead
// disk must not hide the health metrics that say it is dead.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	errs := 0
	for _, p := range c.src.Pools() {
		ch <- prometheus.MustNewConstMetric(descPoolVolumes, prometheus.GaugeValue, float64(p.VolumeCount()), p.Name)
		ch <- prometheus.MustNewConstMetric(descPoolQuarantined, prometheus.GaugeValue, float64(len(p.Quarantined())), p.Name)
		missing := p.Missing() != nil
		ch <- prometheus.MustNewConstMetric(descPoolMissing, prometheus.GaugeValue, boolGauge(missing), p.Name)
		if missing {
			continue // dhpp_pool_missing says why its figures are absent
		}
		capa, err := p.Capacity()
		if err != nil {
			errs++
			klog.V(2).InfoS("Metrics: pool capacity unreadable", "pool", p.Name, "err", err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(descPoolCapacity, prometheus.GaugeValue, float64(capa.Total), p.Name, string(p.Backend()))
		ch <- prometheus.MustNewConstMetric(descPoolAvailable, prometheus.GaugeValue, float64(capa.Available), p.Name)
		ch <- prometheus.MustNewConstMetric(descPoolProvisioned, prometheus.GaugeValue, float64(capa.Provisioned), p.Name)
	}
	for _, v := range c.src.ListVolumes() {
		name := volumeName(v)
		ch <- prometheus.MustNewConstMetric(descVolumeCapacity, prometheus.GaugeValue, float64(v.CapacityBytes), v.Pool, name, string(v.Backend))
		// The scrape has no volume path (only the kubelet knows where a
		// volume is staged), so "used" is what the volume costs the pool.
		used, ok, err := c.src.VolumeAllocated(v.ID)
		if err != nil {
			errs++
			klog.V(2).InfoS("Metrics: volume usage unreadable", "volume", v.ID, "err", err)
			continue
		}
		if ok {
			ch <- prometheus.MustNewConstMetric(descVolumeUsed, prometheus.GaugeValue, float64(used), v.Pool, name, string(v.Backend))
		}
	}
	ch <- prometheus.MustNewConstMetric(descScrapeErrors, prometheus.GaugeValue, float64(errs))
}

// volumeName is the name the volume was created with (the PV name), so the
// series joins with kube-state-metrics' PV series.
func volumeName(v *node.Volume) string {
	if v.CSIName != "" {
		return v.CSIName
	}
	return v.Name
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
