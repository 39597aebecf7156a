package scale

import (
	"fmt"
	"io"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// WatchStats is what the apiserver's own metrics say about the watch
// traffic of one kind, summed over every watcher.
type WatchStats struct {
	// Events and Bytes sent to watchers (apiserver_watch_events_total,
	// apiserver_watch_events_sizes_sum): each event counts once per watcher.
	Events, Bytes float64
	// Watchers is the number of open watches (apiserver_registered_watchers).
	Watchers float64
}

// The watch metrics of the apiserver, labelled by kind.
const (
	metricWatchEvents   = "apiserver_watch_events_total"
	metricWatchSizes    = "apiserver_watch_events_sizes"
	metricWatchers      = "apiserver_registered_watchers"
	metricWatchersAlpha = "apiserver_watch_cache_registered_watchers"
)

// ParseWatchStats reads the apiserver's /metrics text and returns the watch
// traffic per kind.
func ParseWatchStats(r io.Reader) (map[string]WatchStats, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse apiserver metrics: %w", err)
	}
	out := map[string]WatchStats{}
	each := func(name string, f func(kind string, m *dto.Metric)) {
		if fam := fams[name]; fam != nil {
			for _, m := range fam.GetMetric() {
				f(labelOf(m, "kind"), m)
			}
		}
	}
	each(metricWatchEvents, func(k string, m *dto.Metric) {
		s := out[k]
		s.Events += m.GetCounter().GetValue()
		out[k] = s
	})
	each(metricWatchSizes, func(k string, m *dto.Metric) {
		s := out[k]
		s.Bytes += m.GetHistogram().GetSampleSum()
		out[k] = s
	})
	for _, name := range []string{metricWatchers, metricWatchersAlpha} {
		each(name, func(k string, m *dto.Metric) {
			s := out[k]
			s.Watchers = max(s.Watchers, m.GetGauge().GetValue())
			out[k] = s
		})
	}
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
