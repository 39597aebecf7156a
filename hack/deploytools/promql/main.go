// Command dhpp-promql reads PromQL for deploy/'s tests, which cannot import
// Prometheus's parser (a module of its own keeps Prometheus's and the
// Prometheus Operator's dependency graphs out of the driver's go.mod).
//
//	dhpp-promql exprs   < ["expr", ...]       (JSON)
//	dhpp-promql objects < a YAML stream
//	dhpp-promql test TESTS.yaml < a YAML stream
//
// exprs parses every expression with Prometheus's own parser and prints, for
// each, its metric selectors (name and matcher label names), its grouping
// labels (by, without, on, ignoring, group_left/right) and its parse error.
// objects strictly decodes every PodMonitor and PrometheusRule of the stream
// with the Prometheus Operator's types (a misspelt field is an error) and
// prints every rule: group, alert or record name, expression, for, labels
// and annotations; other kinds are skipped. test runs alert unit tests in
// promtool's format against the stream's alerts (alerttest.go).
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/prometheus/promql/parser"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Selector is one vector selector: its metric name and the label names of
// its matchers (__name__ excluded).
type Selector struct {
	Metric string   `json:"metric"`
	Labels []string `json:"labels"`
}

// Refs is what one expression refers to.
type Refs struct {
	Expr      string     `json:"expr"`
	Error     string     `json:"error,omitempty"`
	Selectors []Selector `json:"selectors"`
	Grouping  []string   `json:"grouping"`
}

// Rule is one rule of a PrometheusRule.
type Rule struct {
	Object      string            `json:"object"`
	Group       string            `json:"group"`
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] == "test") != (len(os.Args) == 3) || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: dhpp-promql exprs|objects < input, dhpp-promql test TESTS.yaml < input")
		os.Exit(2)
	}
	var out any
	var err error
	switch os.Args[1] {
	case "exprs":
		out, err = exprs(os.Stdin)
	case "objects":
		out, err = objects(os.Stdin)
	case "test":
		var rules []Rule
		if rules, err = objects(os.Stdin); err == nil {
			out, err = runTests(os.Args[2], rules)
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dhpp-promql:", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "dhpp-promql:", err)
		os.Exit(1)
	}
}

func exprs(r io.Reader) ([]Refs, error) {
	var in []string
	if err := json.NewDecoder(r).Decode(&in); err != nil {
		return nil, fmt.Errorf("read the expressions (a JSON array of strings): %w", err)
	}
	out := make([]Refs, 0, len(in))
	for _, e := range in {
		out = append(out, refs(e))
	}
	return out, nil
}

func refs(expr string) Refs {
	r := Refs{Expr: expr, Selectors: []Selector{}, Grouping: []string{}}
	node, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	addGrouping := func(labels []string) {
		for _, l := range labels {
			if !slices.Contains(r.Grouping, l) {
				r.Grouping = append(r.Grouping, l)
			}
		}
	}
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			s := Selector{Metric: n.Name, Labels: []string{}}
			for _, m := range n.LabelMatchers {
				if m.Name != "__name__" {
					s.Labels = append(s.Labels, m.Name)
				}
			}
			r.Selectors = append(r.Selectors, s)
		case *parser.AggregateExpr:
			addGrouping(n.Grouping)
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				addGrouping(n.VectorMatching.MatchingLabels)
				addGrouping(n.VectorMatching.Include)
			}
		}
		return nil
	})
	return r
}

// typeMeta picks the kind out of a document before decoding it strictly.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func objects(r io.Reader) ([]Rule, error) {
	rules := []Rule{}
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for {
		doc, err := yr.Read()
		if errors.Is(err, io.EOF) {
			return rules, nil
		}
		if err != nil {
			return nil, fmt.Errorf("split YAML stream: %w", err)
		}
		var tm typeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("parse YAML document: %w", err)
		}
		if tm.APIVersion != monitoringv1.SchemeGroupVersion.String() {
			continue
		}
		what := tm.Kind + " " + tm.Metadata.Name
		switch tm.Kind {
		case monitoringv1.PodMonitorsKind:
			var pm monitoringv1.PodMonitor
			if err := yaml.UnmarshalStrict(doc, &pm); err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
		case monitoringv1.PrometheusRuleKind:
			var pr monitoringv1.PrometheusRule
			if err := yaml.UnmarshalStrict(doc, &pr); err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			for _, g := range pr.Spec.Groups {
				for _, ru := range g.Rules {
					rule := Rule{Object: what, Group: g.Name, Alert: ru.Alert, Record: ru.Record,
						Expr: ru.Expr.String(), Labels: ru.Labels, Annotations: ru.Annotations}
					if ru.For != nil {
						rule.For = string(*ru.For)
					}
					rules = append(rules, rule)
				}
			}
		default:
			return nil, fmt.Errorf("%s: a kind this tool does not know", what)
		}
	}
}
