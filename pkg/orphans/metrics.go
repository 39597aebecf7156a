package orphans

import "github.com/prometheus/client_golang/prometheus"

var (
	descOrphans = prometheus.NewDesc("dhpp_orphan_volumes",
		"Volumes on the pool whose PersistentVolume has been gone for longer than --orphan-grace and that are still on the pool (not trashed: trashing is off, refused by the every-volume guard, or failed).", []string{"pool"}, nil)
	descTrashed = prometheus.NewDesc("dhpp_orphan_volumes_trashed_total",
		"Orphaned volumes moved to the pool's trash.", []string{"pool"}, nil)
	descMissing = prometheus.NewDesc("dhpp_missing_volumes",
		"Bound PersistentVolumes of this node whose volume has not been on the pool for longer than --orphan-grace.", []string{"pool"}, nil)
	descListFailures = prometheus.NewDesc("dhpp_pv_list_failures_total",
		"Listings of PersistentVolumes that failed; a failed listing judges nothing.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Checker) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOrphans, descTrashed, descMissing, descListFailures} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: a series per pool for each
// gauge and counter, 0 until something is found.
func (c *Checker) Collect(ch chan<- prometheus.Metric) {
	pools, orphans, missing, trashed, failures := c.snapshot()
	for _, p := range pools {
		ch <- prometheus.MustNewConstMetric(descOrphans, prometheus.GaugeValue, float64(orphans[p]), p)
		ch <- prometheus.MustNewConstMetric(descTrashed, prometheus.CounterValue, float64(trashed[p]), p)
		ch <- prometheus.MustNewConstMetric(descMissing, prometheus.GaugeValue, float64(missing[p]), p)
	}
	ch <- prometheus.MustNewConstMetric(descListFailures, prometheus.CounterValue, float64(failures))
}
