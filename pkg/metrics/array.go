package metrics

import (
	"strings"

	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/prometheus/client_golang/prometheus"
)

// PoolArrays is what is known about the md arrays under one pool: none for
// a pool on plain disks.
type PoolArrays struct {
	Pool   string
	Arrays []node.Array
}

// ArraySource gives the arrays under every pool, as last read; the driver's
// array watcher (pkg/app) implements it.
type ArraySource interface {
	PoolArrays() []PoolArrays
}

var (
	descPoolDegraded = prometheus.NewDesc("dhpp_pool_degraded",
		"1 if an md RAID array under the pool has lost redundancy (a failed or missing member) but still serves I/O, else 0. A degraded pool is not fenced and keeps taking volumes.", []string{"pool"}, nil)
	descArrayDegradedDevices = prometheus.NewDesc("dhpp_pool_array_degraded_devices",
		"md/degraded of an md array under the pool: member slots without a working device.", []string{"pool", "array", "level"}, nil)
	descArrayMembers = prometheus.NewDesc("dhpp_pool_array_members",
		"Members of an md array under the pool by state: in_sync, faulty, spare (includes a replacement being rebuilt), other.", []string{"pool", "array", "state"}, nil)
	descArrayRebuilding = prometheus.NewDesc("dhpp_pool_array_rebuilding",
		"1 while an md array under the pool recovers, resyncs or reshapes (md/sync_action), else 0.", []string{"pool", "array"}, nil)
)

// ArrayCollector is a prometheus.Collector of the pools' RAID state. Like
// Collector it does no work of its own between scrapes; it reports the
// source's latest reading.
type ArrayCollector struct {
	src ArraySource
}

// NewArrayCollector returns an ArrayCollector reading src at every scrape.
func NewArrayCollector(src ArraySource) *ArrayCollector { return &ArrayCollector{src: src} }

// Describe implements prometheus.Collector.
func (c *ArrayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPoolDegraded, descArrayDegradedDevices, descArrayMembers, descArrayRebuilding} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: dhpp_pool_degraded for every
// pool, the per-array series only for pools on md arrays.
func (c *ArrayCollector) Collect(ch chan<- prometheus.Metric) {
	for _, pa := range c.src.PoolArrays() {
		degraded := 0.0
		for _, a := range pa.Arrays {
			if a.IsDegraded() {
				degraded = 1
			}
			ch <- prometheus.MustNewConstMetric(descArrayDegradedDevices, prometheus.GaugeValue, float64(a.Degraded), pa.Pool, a.Name, a.Level)
			count := map[string]int{}
			for _, m := range a.Members {
				count[m.Class()]++
			}
			for _, class := range node.MemberClasses {
				ch <- prometheus.MustNewConstMetric(descArrayMembers, prometheus.GaugeValue, float64(count[class]), pa.Pool, a.Name, class)
			}
			ch <- prometheus.MustNewConstMetric(descArrayRebuilding, prometheus.GaugeValue, boolGauge(rebuilding(a.SyncAction)), pa.Pool, a.Name)
		}
		ch <- prometheus.MustNewConstMetric(descPoolDegraded, prometheus.GaugeValue, degraded, pa.Pool)
	}
}

// rebuilding reports whether md/sync_action means data is being copied to
// restore or change redundancy ("check" and "repair" only read and compare).
func rebuilding(action string) bool {
	switch strings.TrimSpace(action) {
	case "recover", "resync", "reshape":
		return true
	}
	return false
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
