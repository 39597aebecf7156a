//go:build e2e

package e2e

import "testing"

// TestSampleSum checks the small Prometheus text parser the fencing test
// reads the driver's metrics with.
func TestSampleSum(t *testing.T) {
	const text = `# HELP dhpp_pool_fenced 1 if the pool is fenced.
# TYPE dhpp_pool_fenced gauge
dhpp_pool_fenced{pool="default"} 1
dhpp_pool_fenced{pool="fast"} 0
dhpp_pool_fenced_other{pool="default"} 7
dhpp_health_probe_failures_total{pool="default",reason="read_only"} 3
dhpp_health_probe_failures_total{pool="default",reason="timeout"} 2
dhpp_health_probe_failures_total{pool="fast",reason="timeout"} 5
process_open_fds 12
`
	tests := []struct {
		name, metric, labels string
		want                 float64
		found                bool
	}{
		{"one series", "dhpp_pool_fenced", `pool="default"`, 1, true},
		{"zero is found", "dhpp_pool_fenced", `pool="fast"`, 0, true},
		{"prefix of another metric is not it", "dhpp_pool_fenced_other", `pool="fast"`, 0, false},
		{"sum over reasons", "dhpp_health_probe_failures_total", `pool="default"`, 5, true},
		{"no labels", "process_open_fds", "", 12, true},
		{"missing", "dhpp_pool_volumes", `pool="default"`, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := sampleSum(text, tt.metric, tt.labels)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || found != tt.found {
				t.Errorf("sampleSum(%s, %s) = %v, %v; want %v, %v", tt.metric, tt.labels, got, found, tt.want, tt.found)
			}
		})
	}
}
