package main

// `dhpp-promql test TESTS.yaml < stream` runs alert unit tests written in
// promtool's `test rules` format (the subset below) against the alerts of
// the PrometheusRules in the stream, with Prometheus's own PromQL engine
// and template expander over in-memory series. promtool itself does not
// build here in reasonable time (it links every service-discovery SDK, and
// so does Prometheus's rules package); this evaluates alerts the way
// rules.AlertingRule does: the expression at every evaluation interval, an
// alert pending from the first evaluation that returned its series and
// firing once it has been for `for`, labels and annotations expanded from
// the sample.
//
// Supported: evaluation_interval; tests[].interval, input_series
// (series, values in promtool's expanding notation: "0 1+1x5 _ 3x2"),
// alert_rule_test (eval_time, alertname, exp_alerts with exp_labels and
// exp_annotations). Unlike promtool, exp_annotations lists only the
// annotations to compare (promtool wants all of them). Not supported: recording rules, promql_expr_test,
// external_labels, keep_firing_for, native histograms.

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/template"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
	"sigs.k8s.io/yaml"
)

type testFile struct {
	// RuleFiles is promtool's; the rules come from the stream instead.
	RuleFiles          []string       `json:"rule_files"`
	EvaluationInterval model.Duration `json:"evaluation_interval"`
	Tests              []testGroup    `json:"tests"`
}

type testGroup struct {
	Name          string          `json:"name"`
	Interval      model.Duration  `json:"interval"`
	InputSeries   []inputSeries   `json:"input_series"`
	AlertRuleTest []alertTestCase `json:"alert_rule_test"`
}

type inputSeries struct {
	Series string `json:"series"`
	Values string `json:"values"`
}

type alertTestCase struct {
	EvalTime  model.Duration `json:"eval_time"`
	Alertname string         `json:"alertname"`
	ExpAlerts []expAlert     `json:"exp_alerts"`
}

type expAlert struct {
	ExpLabels      map[string]string `json:"exp_labels"`
	ExpAnnotations map[string]string `json:"exp_annotations"`
}

// TestReport is what `test` prints.
type TestReport struct {
	Cases    int      `json:"cases"`
	Failures []string `json:"failures"`
	// Fired and Quiet name the alerts with at least one case expecting
	// them to fire, and one expecting them not to.
	Fired []string `json:"fired"`
	Quiet []string `json:"quiet"`
}

// alert is the part of a rule the evaluation needs.
type alert struct {
	name        string
	expr        string
	hold        time.Duration
	labels      map[string]string
	annotations map[string]string
}

func runTests(path string, rules []Rule) (*TestReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var tf testFile
	if err := yaml.UnmarshalStrict(b, &tf); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if tf.EvaluationInterval == 0 {
		tf.EvaluationInterval = model.Duration(time.Minute)
	}
	alerts := map[string]alert{}
	for _, r := range rules {
		if r.Alert == "" {
			continue
		}
		hold, err := model.ParseDuration(orZero(r.For))
		if err != nil {
			return nil, fmt.Errorf("alert %s: for %q: %w", r.Alert, r.For, err)
		}
		alerts[r.Alert] = alert{name: r.Alert, expr: r.Expr, hold: time.Duration(hold), labels: r.Labels, annotations: r.Annotations}
	}
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1e6, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	rep := &TestReport{Failures: []string{}, Fired: []string{}, Quiet: []string{}}
	for _, g := range tf.Tests {
		if g.Interval == 0 {
			g.Interval = tf.EvaluationInterval
		}
		q, err := loadSeries(g)
		if err != nil {
			return nil, fmt.Errorf("test %q: %w", g.Name, err)
		}
		for _, tc := range g.AlertRuleTest {
			rep.Cases++
			a, ok := alerts[tc.Alertname]
			if !ok {
				rep.Failures = append(rep.Failures, fmt.Sprintf("test %q: no alert %s in the rules", g.Name, tc.Alertname))
				continue
			}
			list := &rep.Quiet
			if len(tc.ExpAlerts) > 0 {
				list = &rep.Fired
			}
			if !slices.Contains(*list, a.name) {
				*list = append(*list, a.name)
			}
			got, err := evalAlert(engine, q, a, time.Duration(tf.EvaluationInterval), time.Duration(tc.EvalTime))
			if err != nil {
				rep.Failures = append(rep.Failures, fmt.Sprintf("test %q: %s at %s: %v", g.Name, a.name, tc.EvalTime, err))
				continue
			}
			if msg := compareAlerts(tc.ExpAlerts, got, a.name); msg != "" {
				rep.Failures = append(rep.Failures, fmt.Sprintf("test %q: %s at %s: %s", g.Name, a.name, tc.EvalTime, msg))
			}
		}
	}
	sort.Strings(rep.Fired)
	sort.Strings(rep.Quiet)
	return rep, nil
}

func orZero(d string) string {
	if d == "" {
		return "0s"
	}
	return d
}

// fSample is one float sample of an input series.
type fSample struct {
	t int64
	f float64
}

func (s fSample) T() int64                      { return s.t }
func (s fSample) ST() int64                     { return 0 }
func (s fSample) F() float64                    { return s.f }
func (s fSample) H() *histogram.Histogram       { return nil }
func (s fSample) FH() *histogram.FloatHistogram { return nil }
func (s fSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s fSample) Copy() chunks.Sample           { return s }

// loadSeries turns a test's input series into an in-memory Queryable.
func loadSeries(g testGroup) (storage.Queryable, error) {
	var all []storage.Series
	for _, in := range g.InputSeries {
		lset, vals, err := parser.NewParser(parser.Options{}).ParseSeriesDesc(in.Series + " " + in.Values)
		if err != nil {
			return nil, fmt.Errorf("input series %s %q: %w", in.Series, in.Values, err)
		}
		var samples []chunks.Sample
		for i, v := range vals {
			if v.Omitted {
				continue
			}
			if v.Histogram != nil {
				return nil, fmt.Errorf("input series %s: histogram samples are not supported", in.Series)
			}
			samples = append(samples, fSample{t: int64(i) * time.Duration(g.Interval).Milliseconds(), f: v.Value})
		}
		all = append(all, storage.NewListSeries(lset, samples))
	}
	sort.Slice(all, func(i, j int) bool { return labels.Compare(all[i].Labels(), all[j].Labels()) < 0 })
	return storage.QueryableFunc(func(_, _ int64) (storage.Querier, error) {
		return &storage.MockQuerier{SelectMockFunction: func(_ bool, _ *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
			var out []storage.Series
			for _, s := range all {
				if matchesAll(s.Labels(), ms) {
					out = append(out, s)
				}
			}
			return &listSeriesSet{series: out, i: -1}
		}}, nil
	}), nil
}

func matchesAll(l labels.Labels, ms []*labels.Matcher) bool {
	for _, m := range ms {
		if !m.Matches(l.Get(m.Name)) {
			return false
		}
	}
	return true
}

type listSeriesSet struct {
	series []storage.Series
	i      int
}

func (s *listSeriesSet) Next() bool                        { s.i++; return s.i < len(s.series) }
func (s *listSeriesSet) At() storage.Series                { return s.series[s.i] }
func (s *listSeriesSet) Err() error                        { return nil }
func (s *listSeriesSet) Warnings() annotations.Annotations { return nil }

// firing is one alert instance: its labels and annotations.
type firing struct {
	labels, annotations map[string]string
}

// evalAlert evaluates a at every evaluation interval from 0 to at and
// returns the instances firing at `at`.
func evalAlert(engine *promql.Engine, q storage.Queryable, a alert, every, at time.Duration) ([]firing, error) {
	ctx := context.Background()
	activeSince := map[string]time.Duration{}
	var last promql.Vector
	for ts := time.Duration(0); ts <= at; ts += every {
		vec, err := instant(ctx, engine, q, a.expr, ts)
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, s := range vec {
			k := s.Metric.String()
			seen[k] = true
			if _, ok := activeSince[k]; !ok {
				activeSince[k] = ts
			}
		}
		for k := range activeSince {
			if !seen[k] {
				delete(activeSince, k) // resolved: a later return starts pending again
			}
		}
		last = vec
	}
	var out []firing
	for _, s := range last {
		if at-activeSince[s.Metric.String()] < a.hold {
			continue // pending
		}
		f, err := expand(ctx, engine, q, a, s, at)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

func instant(ctx context.Context, engine *promql.Engine, q storage.Queryable, expr string, ts time.Duration) (promql.Vector, error) {
	qry, err := engine.NewInstantQuery(ctx, q, nil, expr, time.UnixMilli(ts.Milliseconds()))
	if err != nil {
		return nil, err
	}
	defer qry.Close()
	res := qry.Exec(ctx)
	if res.Err != nil {
		return nil, res.Err
	}
	return res.Vector()
}

// expand builds an instance's labels and annotations as
// rules.AlertingRule does: the sample's labels without __name__, the rule's
// labels and alertname, annotations expanded with $labels and $value.
func expand(ctx context.Context, engine *promql.Engine, q storage.Queryable, a alert, s promql.Sample, at time.Duration) (firing, error) {
	data := template.AlertTemplateData(s.Metric.Map(), nil, "", s)
	defs := "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}"
	query := func(ctx context.Context, qs string, t time.Time) (promql.Vector, error) {
		return instant(ctx, engine, q, qs, time.Duration(t.UnixMilli())*time.Millisecond)
	}
	var errs []string
	text := func(name, t string) string {
		e := template.NewTemplateExpander(ctx, defs+t, "__alert_"+a.name, data, model.Time(at.Milliseconds()), query, &url.URL{}, nil)
		out, err := e.Expand()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", name, err))
		}
		return out
	}
	f := firing{labels: s.Metric.Map(), annotations: map[string]string{}}
	delete(f.labels, labels.MetricName)
	for k, v := range a.labels {
		f.labels[k] = text("label "+k, v)
	}
	f.labels[labels.AlertName] = a.name
	for k, v := range a.annotations {
		f.annotations[k] = text("annotation "+k, v)
	}
	if len(errs) > 0 {
		return f, fmt.Errorf("template: %s", strings.Join(errs, "; "))
	}
	return f, nil
}

// compareAlerts says how the firing instances differ from the expected
// ones ("" if they match), in any order.
func compareAlerts(exp []expAlert, got []firing, name string) string {
	used := make([]bool, len(got))
	var missing []string
	for _, e := range exp {
		want := maps.Clone(e.ExpLabels)
		if want == nil {
			want = map[string]string{}
		}
		want[labels.AlertName] = name
		found := false
		for i, g := range got {
			if used[i] || !maps.Equal(want, g.labels) {
				continue
			}
			if !subset(e.ExpAnnotations, g.annotations) {
				continue
			}
			used[i], found = true, true
			break
		}
		if !found {
			missing = append(missing, fmt.Sprintf("%v %v", want, e.ExpAnnotations))
		}
	}
	var extra []string
	for i, g := range got {
		if !used[i] {
			extra = append(extra, fmt.Sprintf("%v %v", g.labels, g.annotations))
		}
	}
	if len(missing) == 0 && len(extra) == 0 {
		return ""
	}
	return fmt.Sprintf("expected but not firing: %v; firing but not expected: %v", missing, extra)
}

func subset(want, got map[string]string) bool {
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			return false
		}
	}
	return true
}
