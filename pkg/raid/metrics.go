package raid

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// PoolArrays is what is known about the md arrays under one pool: none for
// a pool on plain disks.
type PoolArrays struct {
	Pool   string
	Arrays []Array
}

// Source gives the arrays under every pool, as last read; Watcher
// implements it.
type Source interface {
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

// Collector is a prometheus.Collector of the pools' RAID state. It does no
// work of its own between scrapes; it reports the source's latest reading.
type Collector struct {
	src Source
}

// NewCollector returns a Collector reading src at every scrape.
func NewCollector(src Source) *Collector { return &Collector{src: src} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPoolDegraded, descArrayDegradedDevices, descArrayMembers, descArrayRebuilding} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: dhpp_pool_degraded for every
// pool, the per-array series only for pools on md arrays.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
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
			for _, class := range MemberClasses {
				ch <- prometheus.MustNewConstMetric(descArrayMembers, prometheus.GaugeValue, float64(count[class]), pa.Pool, a.Name, class)
			}
			rebuild := 0.0
			if rebuilding(a.SyncAction) {
				rebuild = 1
			}
			ch <- prometheus.MustNewConstMetric(descArrayRebuilding, prometheus.GaugeValue, rebuild, pa.Pool, a.Name)
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
