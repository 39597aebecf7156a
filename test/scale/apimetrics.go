package scale

import (
	"fmt"
	"io"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// WatchStats is what the apiserver's own metrics say about the watch
// traffic of one resource (persistentvolumeclaims, ...), summed over every
// watcher.
type WatchStats struct {
	// Events and Bytes sent to watchers (apiserver_watch_events_total,
	// apiserver_watch_events_sizes_sum): each event counts once per watcher.
	Events, Bytes float64
	// Watchers is the number of open watches
	// (apiserver_longrunning_requests{verb="WATCH"}).
	Watchers float64
}

// The apiserver's metrics this reads. The watch event metrics are labelled
// by resource since Kubernetes 1.34 and by kind before.
const (
	metricWatchEvents = "apiserver_watch_events_total"
	metricWatchSizes  = "apiserver_watch_events_sizes"
	metricLongRunning = "apiserver_longrunning_requests"
)

// kindResources maps the kinds the report looks at to their resources.
var kindResources = map[string]string{
	"PersistentVolumeClaim": "persistentvolumeclaims",
	"PersistentVolume":      "persistentvolumes",
}

// resourceOf names a sample's resource, from its resource or kind label.
func resourceOf(m *dto.Metric) string {
	if r := labelOf(m, "resource"); r != "" {
		return r
	}
	k := labelOf(m, "kind")
	if r, ok := kindResources[k]; ok {
		return r
	}
	return strings.ToLower(k) + "s"
}

// ParseWatchStats reads the apiserver's /metrics text and returns the watch
// traffic per resource.
func ParseWatchStats(r io.Reader) (map[string]WatchStats, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse apiserver metrics: %w", err)
	}
	out := map[string]WatchStats{}
	each := func(name string, f func(res string, m *dto.Metric)) {
		if fam := fams[name]; fam != nil {
			for _, m := range fam.GetMetric() {
				f(resourceOf(m), m)
			}
		}
	}
	each(metricWatchEvents, func(res string, m *dto.Metric) {
		s := out[res]
		s.Events += m.GetCounter().GetValue()
		out[res] = s
	})
	each(metricWatchSizes, func(res string, m *dto.Metric) {
		s := out[res]
		s.Bytes += m.GetHistogram().GetSampleSum()
		out[res] = s
	})
	each(metricLongRunning, func(res string, m *dto.Metric) {
		if labelOf(m, "verb") != "WATCH" || labelOf(m, "subresource") != "" {
			return
		}
		s := out[res]
		s.Watchers += m.GetGauge().GetValue()
		out[res] = s
	})
	return out, nil
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Sub is the traffic between two scrapes (watchers: the later value).
func (s WatchStats) Sub(before WatchStats) WatchStats {
	return WatchStats{Events: s.Events - before.Events, Bytes: s.Bytes - before.Bytes, Watchers: s.Watchers}
}
