package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/metrics"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dhpp-io/dhpp/pkg/controller"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/health"
	dhppmetrics "github.com/dhpp-io/dhpp/pkg/metrics"
	"github.com/dhpp-io/dhpp/pkg/orphans"
	"github.com/dhpp-io/dhpp/pkg/raid"
)

// metricInfo is one series name the code exports and its label names.
type metricInfo struct {
	labels    []string
	histogram bool
}

// targetLabels are the labels a scrape adds to every series: job and
// instance by Prometheus, namespace/pod/container/endpoint by the Prometheus
// Operator, node by deploy/monitoring's PodMonitors.
var targetLabels = []string{"job", "instance", "namespace", "pod", "container", "endpoint", "node"}

// externalMetrics are the only series the rules use that dhpp does not
// export: Prometheus writes `up` for every target it scrapes.
var externalMetrics = map[string]metricInfo{"up": {}}

// recorder is a prometheus.Registerer that keeps what collectors describe.
type recorder struct{ descs []*prometheus.Desc }

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		r.descs = append(r.descs, d)
	}
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *recorder) Unregister(prometheus.Collector) bool { return false }

var (
	descName   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}\}$`)
)

// codeMetrics returns every series name the driver and the controller
// export, asked of the code itself: the collectors dhpp-driver and
// dhpp-controller register (internal/app wires the same ones) and
// csi-lib-utils' CSI operation histogram.
func codeMetrics(t *testing.T) map[string]metricInfo {
	t.Helper()
	out := map[string]metricInfo{}
	rec := &recorder{}
	rec.MustRegister(dhppmetrics.NewCollector(nil), raid.NewCollector(nil), orphans.New(orphans.Config{}))
	controller.NewMetrics(rec)
	for _, d := range rec.descs {
		s := d.String()
		n, l := descName.FindStringSubmatch(s), descLabels.FindStringSubmatch(s)
		if n == nil || l == nil {
			t.Fatalf("cannot read name and labels from %s", s)
		}
		labels := []string{}
		if l[1] != "" {
			labels = strings.Split(l[1], ",")
		}
		out[n[1]] = metricInfo{labels: labels}
	}

	// Vectors describe no labels; gather them with one series each.
	mon, err := health.NewMonitor(health.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.AddPool("default", filepath.Join(t.TempDir(), "health")); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := mon.Register(reg); err != nil {
		t.Fatal(err)
	}
	gather(t, reg, out)
	cmm := metrics.NewCSIMetricsManagerForPlugin(dhpp.DriverName)
	cmm.RecordMetrics("/csi.v1.Node/NodeGetInfo", nil, time.Millisecond)
	gather(t, cmm.GetRegistry(), out)
	return out
}

func gather(t *testing.T, g prometheus.Gatherer, out map[string]metricInfo) {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range fams {
		var labels []string
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !slices.Contains(labels, lp.GetName()) {
					labels = append(labels, lp.GetName())
				}
			}
		}
		out[f.GetName()] = metricInfo{labels: labels, histogram: f.GetType() == dto.MetricType_HISTOGRAM}
	}
}

// lookup finds a series name in the inventory, including a histogram's
// _bucket (with its le label), _sum and _count series.
func lookup(known map[string]metricInfo, name string) (metricInfo, bool) {
	if m, ok := known[name]; ok {
		return m, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if m, ok := known[base]; ok && m.histogram {
				if suffix == "_bucket" {
					m.labels = append(slices.Clone(m.labels), "le")
				}
				return m, true
			}
		}
	}
	return metricInfo{}, false
}

// selector is one vector selector of a PromQL expression: its metric name
// and the label names of its matchers.
type selector struct {
	Metric string   `json:"metric"`
	Labels []string `json:"labels"`
}

// promqlRefs is what dhpp-promql exprs says of one expression.
type promqlRefs struct {
	Expr      string     `json:"expr"`
	Error     string     `json:"error"`
	Selectors []selector `json:"selectors"`
	Grouping  []string   `json:"grouping"`
}

// parsePromQL parses expressions with Prometheus's own parser, run by
// dhpp-promql (hack/deploytools/promql) so its module stays out of go.mod.
func parsePromQL(t *testing.T, exprs []string) []promqlRefs {
	t.Helper()
	in, err := json.Marshal(exprs)
	if err != nil {
		t.Fatal(err)
	}
	var out []promqlRefs
	if err := json.Unmarshal(runStdin(t, in, tool(t, "dhpp-promql"), "exprs"), &out); err != nil {
		t.Fatalf("read dhpp-promql's answer: %v", err)
	}
	if len(out) != len(exprs) {
		t.Fatalf("dhpp-promql answered %d expressions for %d", len(out), len(exprs))
	}
	return out
}

// runStdin is run with stdin.
func runStdin(t *testing.T, stdin []byte, bin string, args ...string) []byte {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes()
}

// checkPromQL reports a parse error, every metric name the expression uses
// that the code does not export, every matcher on a label the metric does
// not have, and every grouping label that none of its metrics has.
func checkPromQL(known map[string]metricInfo, refs promqlRefs) []string {
	if refs.Error != "" {
		return []string{"does not parse: " + refs.Error}
	}
	var problems []string
	available := slices.Clone(targetLabels)
	for _, s := range refs.Selectors {
		if s.Metric == "" {
			problems = append(problems, "selector without a metric name")
			continue
		}
		m, ok := lookup(known, s.Metric)
		if !ok {
			problems = append(problems, fmt.Sprintf("metric %s is not exported by dhpp", s.Metric))
			continue
		}
		available = append(available, m.labels...)
		for _, l := range s.Labels {
			if !slices.Contains(m.labels, l) && !slices.Contains(targetLabels, l) {
				problems = append(problems, fmt.Sprintf("%s has no label %s (it has %v and the target labels)", s.Metric, l, m.labels))
			}
		}
	}
	for _, l := range refs.Grouping {
		if !slices.Contains(available, l) {
			problems = append(problems, fmt.Sprintf("grouping label %s is on none of the expression's metrics", l))
		}
	}
	return problems
}

// TestCheckPromQLCatchesWrongNames proves the name check can fail.
func TestCheckPromQLCatchesWrongNames(t *testing.T) {
	known := codeMetrics(t)
	tests := []struct {
		expr string
		want string // substring of the only problem; "" for none
	}{
		{`dhpp_pool_fenced{pool="default", node="n1"} == 1`, ""},
		{`histogram_quantile(0.9, sum by (pool, le) (rate(dhpp_health_probe_duration_seconds_bucket[5m])))`, ""},
		{`sum by (method_name) (rate(csi_plugin_operations_seconds_count{grpc_status_code!="OK"}[5m]))`, ""},
		{`dhpp_pool_fenced_total == 1`, "dhpp_pool_fenced_total is not exported"},
		{`dhpp_pool_capacity_bytes_bucket`, "not exported"}, // not a histogram
		{`dhpp_pool_fenced{volume="x"}`, "has no label volume"},
		{`sum by (volume) (dhpp_pool_fenced)`, "grouping label volume"},
		{`dhpp_controller_leader{pool="x"}`, "has no label pool"},
		{`sum(dhpp_pool_fenced) by pool`, "does not parse"},
		{`dhpp_pool_available_bytes / ignoring (backend) dhpp_pool_capacity_bytes`, ""},
		{`dhpp_pool_fenced unless on (volume) dhpp_pool_degraded`, "grouping label volume"},
	}
	exprs := make([]string, len(tests))
	for i, tt := range tests {
		exprs[i] = tt.expr
	}
	parsed := parsePromQL(t, exprs)
	for i, tt := range tests {
		got := checkPromQL(known, parsed[i])
		if tt.want == "" && len(got) != 0 || tt.want != "" && (len(got) != 1 || !strings.Contains(got[0], tt.want)) {
			t.Errorf("checkPromQL(%q) = %q, want one problem containing %q", tt.expr, got, tt.want)
		}
	}
}
