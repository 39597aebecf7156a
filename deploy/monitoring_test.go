package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// monitoringGroup is the API group of the Prometheus Operator's objects,
// which client-go's scheme (and so parse) does not know.
const monitoringGroup = "monitoring.coreos.com/"

// monitoringFiles are deploy/monitoring's objects that the Helm chart
// carries a copy of in files/monitoring/.
var monitoringFiles = []string{
	"podmonitor-node.yaml", "podmonitor-controller.yaml",
	"prometheusrule-node.yaml", "prometheusrule-controller.yaml", "dashboard.json",
}

// wantAlerts are the alerts issue 16 asks for, by what they watch.
var wantAlerts = map[string]string{
	"pool fenced":          "DhppPoolFenced",
	"pool degraded (RAID)": "DhppPoolDegraded",
	"probe failing":        "DhppPoolProbeFailing",
	"pool nearly full":     "DhppPoolNearlyFull",
	"volume nearly full":   "DhppVolumeNearlyFull",
	"orphans":              "DhppOrphanVolumes",
	"driver down":          "DhppDriverDown",
	"controller down":      "DhppControllerDown",
	"CSI error rate":       "DhppCSIErrorRate",
}

// splitMonitoring takes the Prometheus Operator's objects out of a rendered
// stream: it returns the rest (for parse) and those objects by key.
func splitMonitoring(t *testing.T, stream []byte) ([]byte, map[string]map[string]any) {
	t.Helper()
	var rest bytes.Buffer
	mon := map[string]map[string]any{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return rest.Bytes(), mon
		}
		if err != nil {
			t.Fatalf("split YAML stream: %v", err)
		}
		var raw map[string]any
		if err := yaml.Unmarshal(doc, &raw); err != nil {
			t.Fatalf("parse YAML document: %v\n%s", err, doc)
		}
		if api, _ := raw["apiVersion"].(string); strings.HasPrefix(api, monitoringGroup) {
			meta, _ := raw["metadata"].(map[string]any)
			mon[fmt.Sprintf("%s/%v/%v", raw["kind"], meta["namespace"], meta["name"])] = raw
			continue
		}
		rest.WriteString("---\n")
		rest.Write(doc)
	}
}

// TestMonitoringHelmCopies: the chart cannot read files outside its
// directory, so it carries copies of deploy/monitoring's files.
func TestMonitoringHelmCopies(t *testing.T) {
	for _, f := range monitoringFiles {
		a, err := os.ReadFile(filepath.Join("monitoring", f))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join("helm/dhpp/files/monitoring", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("helm/dhpp/files/monitoring/%s differs from monitoring/%s: cp deploy/monitoring/%[1]s deploy/helm/dhpp/files/monitoring/", f, f)
		}
	}
}

// TestMonitoringRenderings: the kustomize overlay adds exactly the
// monitoring objects to the base, Helm renders the same ones with its
// values on and none by default, and every PodMonitor and PrometheusRule
// decodes strictly with the Prometheus Operator's own types.
func TestMonitoringRenderings(t *testing.T) {
	base := parse(t, kustomizeBuild(t, "kustomize/base"))
	rest, kmon := splitMonitoring(t, kustomizeBuild(t, "kustomize/overlays/monitoring"))
	kust := parse(t, rest)
	dashKey := "/ConfigMap/" + namespace + "/dhpp-dashboard"
	if _, ok := kust[dashKey]; !ok {
		t.Fatalf("overlay lacks the dashboard ConfigMap %s", dashKey)
	}
	if diff := cmp.Diff(append(keys(base), dashKey), keys(kust), cmp.Transformer("sort", func(s []string) []string {
		return slices.Sorted(slices.Values(s))
	})); diff != "" {
		t.Errorf("overlay objects other than monitoring (-base +overlay):\n%s", diff)
	}
	for _, k := range keys(base) {
		if diff := cmp.Diff(base[k].raw, kust[k].raw); diff != "" {
			t.Errorf("overlay changes %s:\n%s", k, diff)
		}
	}
	wantMon := []string{
		"PodMonitor/" + namespace + "/dhpp-controller", "PodMonitor/" + namespace + "/dhpp-node",
		"PrometheusRule/" + namespace + "/dhpp-controller", "PrometheusRule/" + namespace + "/dhpp-node",
	}
	if got := slices.Sorted(func(yield func(string) bool) {
		for k := range kmon {
			if !yield(k) {
				return
			}
		}
	}); !slices.Equal(got, wantMon) {
		t.Errorf("monitoring objects = %v, want %v", got, wantMon)
	}
	var dash map[string]any
	if err := json.Unmarshal([]byte(kust[dashKey].raw["data"].(map[string]any)["dhpp.json"].(string)), &dash); err != nil {
		t.Errorf("dashboard ConfigMap holds no JSON: %v", err)
	}
	if kust[dashKey].raw["metadata"].(map[string]any)["labels"].(map[string]any)["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap lacks grafana_dashboard=1 (the Grafana sidecar's default label)")
	}
	decodeMonitoring(t, kustomizeBuild(t, "kustomize/overlays/monitoring"))

	all := []string{"--set", "monitoring.podMonitors=true", "--set", "monitoring.rules=true", "--set", "monitoring.dashboard=true"}
	hrest, hmon := splitMonitoring(t, helmTemplate(t, all...))
	helm := parse(t, hrest)
	if diff := cmp.Diff(normalize(kust[dashKey].raw), normalize(helm[dashKey].raw)); diff != "" {
		t.Errorf("dashboard ConfigMap differs (-kustomize +helm):\n%s", diff)
	}
	if len(kmon) != len(hmon) {
		t.Errorf("Helm renders %d monitoring objects, kustomize %d", len(hmon), len(kmon))
	}
	for k, obj := range kmon {
		if diff := cmp.Diff(normalize(obj), normalize(hmon[k])); diff != "" {
			t.Errorf("%s differs (-kustomize +helm):\n%s", k, diff)
		}
	}
	decodeMonitoring(t, helmTemplate(t, all...))

	tests := []struct {
		name  string
		set   []string
		check func(t *testing.T, mon map[string]map[string]any, objs map[string]object)
	}{
		{"defaults install no monitoring", nil, func(t *testing.T, mon map[string]map[string]any, objs map[string]object) {
			if len(mon) != 0 || objs[dashKey].raw != nil {
				t.Errorf("monitoring rendered by default: %d objects, dashboard %v", len(mon), objs[dashKey].raw != nil)
			}
		}},
		{"rules only", []string{"--set", "monitoring.rules=true"}, func(t *testing.T, mon map[string]map[string]any, _ map[string]object) {
			for k := range mon {
				if !strings.HasPrefix(k, "PrometheusRule/") {
					t.Errorf("%s rendered with only monitoring.rules", k)
				}
			}
		}},
		{"no controller, no controller monitoring", append(slices.Clone(all), "--set", "controller.enabled=false"), func(t *testing.T, mon map[string]map[string]any, _ map[string]object) {
			if len(mon) != 2 || mon["PodMonitor/"+namespace+"/dhpp-node"] == nil || mon["PrometheusRule/"+namespace+"/dhpp-node"] == nil {
				t.Errorf("monitoring objects = %d, want the node's PodMonitor and PrometheusRule only", len(mon))
			}
		}},
		{"extra labels for the Prometheus selectors", append(slices.Clone(all), "--set", "monitoring.labels.release=kps"), func(t *testing.T, mon map[string]map[string]any, _ map[string]object) {
			for k, o := range mon {
				if l := o["metadata"].(map[string]any)["labels"].(map[string]any); l["release"] != "kps" {
					t.Errorf("%s labels %v lack release=kps", k, l)
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rest, mon := splitMonitoring(t, helmTemplate(t, tc.set...))
			tc.check(t, mon, parse(t, rest))
		})
	}
}

// promRule is one rule as dhpp-promql objects reports it.
type promRule struct {
	Object      string            `json:"object"`
	Group       string            `json:"group"`
	Alert       string            `json:"alert"`
	Record      string            `json:"record"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// decodeMonitoring strictly decodes the stream's PodMonitors and
// PrometheusRules with the Prometheus Operator's types and returns the rules.
func decodeMonitoring(t *testing.T, stream []byte) []promRule {
	t.Helper()
	var rules []promRule
	if err := json.Unmarshal(runStdin(t, stream, tool(t, "dhpp-promql"), "objects"), &rules); err != nil {
		t.Fatalf("read dhpp-promql's answer: %v", err)
	}
	return rules
}

// TestMonitoringDecodingCatchesTypos proves decodeMonitoring can fail.
func TestMonitoringDecodingCatchesTypos(t *testing.T) {
	bin := tool(t, "dhpp-promql")
	for _, doc := range []string{
		"apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\nspec: {podMetricEndpoints: []}\n",
		"apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: x}\nspec: {groups: [{name: g, rules: [{alert: A, expr: up, fr: 1m}]}]}\n",
		"apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitr\nmetadata: {name: x}\n",
	} {
		cmd := exec.Command(bin, "objects")
		cmd.Stdin = strings.NewReader(doc)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("dhpp-promql objects accepted a typo:\n%s\nanswer: %s", doc, out)
		}
	}
}

// runbookHeading matches a "### DhppSomething" heading of docs/metrics.md.
var runbookHeading = regexp.MustCompile(`(?m)^### (Dhpp\w+)\n\n(\S.*)`)

// labelRef matches $labels.name in an alert's annotations.
var labelRef = regexp.MustCompile(`\$labels\.(\w+)`)

// TestMonitoringRules checks every alert: the metric names and labels of
// its expression exist in the code, its expression parses, it has a
// severity, a summary, a description and a runbook in docs/metrics.md, and
// its annotations name only labels its series can carry.
func TestMonitoringRules(t *testing.T) {
	rules := decodeMonitoring(t, kustomizeBuild(t, "kustomize/overlays/monitoring"))
	known := codeMetrics(t)
	for k, v := range externalMetrics {
		known[k] = v
	}
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	runbooks := map[string]bool{}
	for _, m := range runbookHeading.FindAllStringSubmatch(string(doc), -1) {
		runbooks[m[1]] = true
	}

	exprs := make([]string, len(rules))
	for i, r := range rules {
		exprs[i] = r.Expr
	}
	parsed := parsePromQL(t, exprs)
	alerts := map[string]bool{}
	for i, r := range rules {
		t.Run(r.Alert, func(t *testing.T) {
			if r.Alert == "" {
				t.Fatalf("%s group %s has a rule that is not an alert (record %q)", r.Object, r.Group, r.Record)
			}
			if alerts[r.Alert] {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts[r.Alert] = true
			for _, p := range checkPromQL(known, parsed[i]) {
				t.Errorf("expr %q: %s", r.Expr, p)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("severity %q, want critical or warning", s)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("for %q: %v", r.For, err)
				}
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("no %s annotation", a)
				}
			}
			if want := "docs/metrics.md#" + strings.ToLower(r.Alert); !strings.HasSuffix(r.Annotations["runbook_url"], want) {
				t.Errorf("runbook_url %q does not end in %s", r.Annotations["runbook_url"], want)
			}
			if !runbooks[r.Alert] {
				t.Errorf("docs/metrics.md has no runbook for it: add a \"### %s\" heading followed by what it means and what to do", r.Alert)
			}
			labels := slices.Clone(targetLabels)
			for _, s := range parsed[i].Selectors {
				if m, ok := lookup(known, s.Metric); ok {
					labels = append(labels, m.labels...)
				}
			}
			for _, a := range r.Annotations {
				for _, m := range labelRef.FindAllStringSubmatch(a, -1) {
					if !slices.Contains(labels, m[1]) {
						t.Errorf("annotation names $labels.%s, which none of its series carries", m[1])
					}
				}
			}
		})
	}
	for what, name := range wantAlerts {
		if !alerts[name] {
			t.Errorf("no alert %s (%s)", name, what)
		}
	}
	for name := range runbooks {
		if !alerts[name] {
			t.Errorf("docs/metrics.md has a runbook for %s, which no rule defines", name)
		}
	}
}

// grafanaVars are the dashboard's template variables, replaced by what
// Grafana would put in their place before the expressions are parsed.
var grafanaVars = strings.NewReplacer("$__rate_interval", "2m", "$node", ".*", "$pool", ".*")

// labelValues matches a label_values(metric, label) variable query.
var labelValues = regexp.MustCompile(`^label_values\((.+), (\w+)\)$`)

// dashboard is the part of dashboard.json the tests read.
type dashboard struct {
	UID        string           `json:"uid"`
	Panels     []dashboardPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type dashboardPanel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Datasource  *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	return d
}

// TestDashboard checks the Grafana dashboard: valid JSON, unique panel ids,
// every panel placed, described and on the data source variable, and every
// query parses and uses only series and labels the code exports.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" {
		t.Error("dashboard has no uid (Grafana would make a new one on every import)")
	}
	known := codeMetrics(t)
	var exprs, where []string
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if strings.TrimSpace(p.Description) == "" {
			t.Errorf("panel %q has no description (Grafana shows it as the panel's (i) tooltip: say what is counted)", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, grafanaVars.Replace(tg.Expr))
			where = append(where, fmt.Sprintf("panel %q", p.Title))
		}
	}
	vars := 0
	for _, v := range d.Templating.List {
		q, ok := v.Query.(map[string]any)
		if !ok {
			continue // the data source variable
		}
		m := labelValues.FindStringSubmatch(fmt.Sprint(q["query"]))
		if m == nil {
			t.Errorf("variable %s: query %v is not label_values(metric, label)", v.Name, q["query"])
			continue
		}
		vars++
		exprs = append(exprs, grafanaVars.Replace(fmt.Sprintf("sum by (%s) (%s)", m[2], m[1])))
		where = append(where, "variable "+v.Name)
	}
	if vars != 2 {
		t.Errorf("%d label_values variables, want node and pool", vars)
	}
	for i, r := range parsePromQL(t, exprs) {
		for _, p := range checkPromQL(known, r) {
			t.Errorf("%s: %q: %s", where[i], r.Expr, p)
		}
	}
}

// TestDashboardControllerActions: dhpp_controller_actions_total counts
// every action dhpp-controller takes, on lost volumes and on snapshots alike
// (a panel once titled "Actions on lost volumes" plotted both). Every
// action the code defines is drawn by exactly one query, so none is dropped
// or counted twice; the legend names action and result, and the panel's
// description explains every action and result by name.
func TestDashboardControllerActions(t *testing.T) {
	actions, results := controllerLabelValues(t)
	d := readDashboard(t)
	panels := 0
	for _, p := range d.Panels {
		var drawn []string
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, "dhpp_controller_actions_total") {
				continue
			}
			if !strings.Contains(tg.LegendFormat, "{{action}}") || !strings.Contains(tg.LegendFormat, "{{result}}") {
				t.Errorf("panel %q: legend %q does not name {{action}} and {{result}}", p.Title, tg.LegendFormat)
			}
			sel, err := actionSelector(tg.Expr)
			if err != nil {
				t.Fatalf("panel %q: %v", p.Title, err)
			}
			for _, a := range actions {
				if sel(a) {
					drawn = append(drawn, a)
				}
			}
		}
		if drawn == nil {
			continue
		}
		panels++
		for _, a := range actions {
			if n := countOf(drawn, a); n != 1 {
				t.Errorf("panel %q: action %s is drawn by %d queries, want exactly 1", p.Title, a, n)
			}
		}
		for _, v := range append(slices.Clone(actions), results...) {
			if !strings.Contains(p.Description, v) {
				t.Errorf("panel %q: description does not explain %s: %q", p.Title, v, p.Description)
			}
		}
	}
	if panels == 0 {
		t.Error("no panel draws dhpp_controller_actions_total")
	}
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// actionMatcher is the action label matcher of a query on
// dhpp_controller_actions_total: action="x" or action=~"x|y".
var actionMatcher = regexp.MustCompile(`dhpp_controller_actions_total\{[^}]*\baction(=~|=)"([^"]*)"`)

// actionSelector says which action values expr selects; without an action
// matcher it selects every one.
func actionSelector(expr string) (func(string) bool, error) {
	m := actionMatcher.FindStringSubmatch(expr)
	if m == nil {
		return func(string) bool { return true }, nil
	}
	if m[1] == "=" {
		return func(a string) bool { return a == m[2] }, nil
	}
	// PromQL regex matchers are anchored at both ends.
	re, err := regexp.Compile("^(?:" + m[2] + ")$")
	if err != nil {
		return nil, fmt.Errorf("action matcher %q: %w", m[2], err)
	}
	return re.MatchString, nil
}

// controllerLabelValues reads the values of the Action* and Result*
// constants from pkg/controller/metrics.go, so an action added there must
// show up on the dashboard without anyone remembering this test.
func controllerLabelValues(t *testing.T) (actions, results []string) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../pkg/controller/metrics.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case strings.HasPrefix(name.Name, "Action"):
					actions = append(actions, v)
				case strings.HasPrefix(name.Name, "Result"):
					results = append(results, v)
				}
			}
		}
	}
	if len(actions) < 6 || len(results) < 4 {
		t.Fatalf("read %d actions and %d results from pkg/controller/metrics.go; the constants moved?", len(actions), len(results))
	}
	return actions, results
}

// alertReport is what dhpp-promql test prints.
type alertReport struct {
	Cases    int      `json:"cases"`
	Failures []string `json:"failures"`
	Fired    []string `json:"fired"`
	Quiet    []string `json:"quiet"`
}

// runAlertTests runs promtool-format alert unit tests against the alerts
// of the monitoring overlay, evaluated by Prometheus's PromQL engine.
func runAlertTests(t *testing.T, testFile string) alertReport {
	t.Helper()
	var rep alertReport
	out := runStdin(t, kustomizeBuild(t, "kustomize/overlays/monitoring"), tool(t, "dhpp-promql"), "test", testFile)
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("read dhpp-promql's answer: %v", err)
	}
	return rep
}

// TestMonitoringAlertsFire runs monitoring/tests/alerts_test.yaml: every
// alert must fire on the series that mean trouble, with the labels and
// summaries written there, and stay quiet on a healthy or not-yet-long-enough
// case.
func TestMonitoringAlertsFire(t *testing.T) {
	rep := runAlertTests(t, "monitoring/tests/alerts_test.yaml")
	if rep.Cases == 0 {
		t.Fatal("no alert test case ran")
	}
	for _, f := range rep.Failures {
		t.Error(f)
	}
	for _, r := range decodeMonitoring(t, kustomizeBuild(t, "kustomize/overlays/monitoring")) {
		if !slices.Contains(rep.Fired, r.Alert) {
			t.Errorf("no test case makes %s fire", r.Alert)
		}
		if !slices.Contains(rep.Quiet, r.Alert) {
			t.Errorf("no test case expects %s to stay quiet", r.Alert)
		}
	}
	t.Logf("%d alert test cases passed", rep.Cases)
}

// TestMonitoringAlertTestsCanFail proves the evaluation can fail: an alert
// expected before its `for` has passed, one expected with the wrong labels,
// and one expected quiet while it fires.
func TestMonitoringAlertTestsCanFail(t *testing.T) {
	const wrong = `evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'dhpp_pool_fenced{job="dhpp-node", node="n1", pool="default"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 0m
        alertname: DhppPoolFenced
        exp_alerts:
          - exp_labels: {job: dhpp-node, node: n1, pool: default, severity: critical}
      - eval_time: 5m
        alertname: DhppPoolFenced
        exp_alerts:
          - exp_labels: {job: dhpp-node, node: n1, pool: other, severity: critical}
      - eval_time: 5m
        alertname: DhppPoolFenced
        exp_alerts: []
`
	f := filepath.Join(t.TempDir(), "wrong_test.yaml")
	if err := os.WriteFile(f, []byte(wrong), 0o644); err != nil {
		t.Fatal(err)
	}
	rep := runAlertTests(t, f)
	if rep.Cases != 3 || len(rep.Failures) != 3 {
		t.Errorf("cases %d, failures %q; want 3 cases, all failing", rep.Cases, rep.Failures)
	}
}
