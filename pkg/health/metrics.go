package health

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics holds the pool health series. They are created with the Monitor
// and updated whether or not anyone registered them, so Register may come
// before or after AddPool.
type metrics struct {
	state    *prometheus.GaugeVec
	fenced   *prometheus.GaugeVec
	duration *prometheus.HistogramVec
	failures *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dhpp_pool_health_state",
			Help: "1 for the pool's current health state (Healthy, Failing, Fenced), 0 for the others.",
		}, []string{"pool", "state"}),
		fenced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dhpp_pool_fenced",
			Help: "1 if the pool is fenced (takes no new volumes), else 0.",
		}, []string{"pool"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dhpp_health_probe_duration_seconds",
			Help: "Duration of pool health probe I/O (write, read back, compare); timed-out probes count as the timeout.",
			// A healthy 1 MiB O_DIRECT write+read takes milliseconds; the
			// upper buckets show a disk drifting towards the timeout.
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"pool"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dhpp_health_probe_failures_total",
			Help: "Failed pool health probes by reason (timeout, stuck, io_error, read_only, no_space, mismatch, missing, other).",
		}, []string{"pool", "reason"}),
	}
}

// initPool creates every series of a pool at zero, so rate() and absent()
// work from the first scrape.
func (x *metrics) initPool(pool string) {
	for _, s := range States {
		x.state.WithLabelValues(pool, s.String())
	}
	x.fenced.WithLabelValues(pool)
	x.duration.WithLabelValues(pool)
	for _, r := range Reasons {
		x.failures.WithLabelValues(pool, string(r))
	}
}

func (x *metrics) setState(pool string, st State) {
	for _, s := range States {
		v := 0.0
		if s == st {
			v = 1
		}
		x.state.WithLabelValues(pool, s.String()).Set(v)
	}
	f := 0.0
	if st == Fenced {
		f = 1
	}
	x.fenced.WithLabelValues(pool).Set(f)
}

func (x *metrics) observeDuration(pool string, d time.Duration) {
	x.duration.WithLabelValues(pool).Observe(d.Seconds())
}

func (x *metrics) countFailure(pool string, r Reason) {
	x.failures.WithLabelValues(pool, string(r)).Inc()
}

// Register registers the pool health metrics with reg:
// dhpp_pool_health_state{pool,state}, dhpp_pool_fenced{pool},
// dhpp_health_probe_duration_seconds{pool} and
// dhpp_health_probe_failures_total{pool,reason}.
func (m *Monitor) Register(reg prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.metrics.state, m.metrics.fenced, m.metrics.duration, m.metrics.failures} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("register health metrics: %w", errors.Join(errs...))
	}
	return nil
}
