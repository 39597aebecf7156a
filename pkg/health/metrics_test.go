package health

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

func TestMetrics(t *testing.T) {
	m, p, f := newTestMonitor(t, testConfig())
	reg := prometheus.NewPedanticRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	if err := m.Register(reg); err == nil {
		t.Error("second Register succeeded, want AlreadyRegistered error")
	}

	// Every series exists at zero before the first probe.
	if n := testutil.CollectAndCount(m.metrics.failures); n != len(Reasons) {
		t.Errorf("%d failure series, want %d", n, len(Reasons))
	}
	rofs := &osErr{unix.EROFS}
	f.set(nil, rofs, rofs, rofs)
	for i := 0; i < 3; i++ {
		m.probeOnce(context.Background(), p)
	}
	want := `
# HELP dhpp_pool_fenced 1 if the pool is fenced (takes no new volumes), else 0.
# TYPE dhpp_pool_fenced gauge
dhpp_pool_fenced{pool="p1"} 1
# HELP dhpp_pool_health_state 1 for the pool's current health state (Healthy, Failing, Fenced), 0 for the others.
# TYPE dhpp_pool_health_state gauge
dhpp_pool_health_state{pool="p1",state="Failing"} 0
dhpp_pool_health_state{pool="p1",state="Fenced"} 1
dhpp_pool_health_state{pool="p1",state="Healthy"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "dhpp_pool_fenced", "dhpp_pool_health_state"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.metrics.failures.WithLabelValues("p1", "read_only")); got != 3 {
		t.Errorf("read_only failures = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.metrics.failures.WithLabelValues("p1", "timeout")); got != 0 {
		t.Errorf("timeout failures = %v, want 0", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "dhpp_health_probe_duration_seconds" {
			found = true
			if c := mf.GetMetric()[0].GetHistogram().GetSampleCount(); c != 3 {
				t.Errorf("histogram count %d, want 3", c)
			}
		}
	}
	if !found {
		t.Error("dhpp_health_probe_duration_seconds not gathered")
	}

	if err := m.Unfence("p1"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.metrics.fenced.WithLabelValues("p1")); got != 0 {
		t.Errorf("dhpp_pool_fenced after Unfence = %v, want 0", got)
	}
	if got := testutil.ToFloat64(m.metrics.state.WithLabelValues("p1", "Healthy")); got != 1 {
		t.Errorf("Healthy gauge after Unfence = %v, want 1", got)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric lint: %s: %s", p.Metric, p.Text)
	}
}
