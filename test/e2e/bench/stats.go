// Package bench measures provisioning at scale on the local e2e cluster
// (test/e2e/cluster): N claims, each consumed by one pod, for dhpp and for
// rancher/local-path-provisioner one after the other on the same cluster,
// with per-claim latencies, the provisioners' CPU and memory, a markdown
// report and a PNG chart. go run ./test/e2e/cmd/dhpp-bench runs it.
package bench

import (
	"math"
	"sort"
	"time"
)

// Summary condenses one latency series.
type Summary struct {
	Count         int
	P50, P95, Max time.Duration
	Mean          time.Duration
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted: the smallest value with at least p% of the values at or below it.
// Nearest rank never invents a value that was not measured.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

// Summarize sorts a copy of ds and returns its count, p50, p95, max and mean.
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Summary{
		Count: len(s),
		P50:   Percentile(s, 50),
		P95:   Percentile(s, 95),
		Max:   s[len(s)-1],
		Mean:  sum / time.Duration(len(s)),
	}
}

// Throughput is n completions over the wall-clock span, per second; 0 when
// nothing completed or no time passed.
func Throughput(n int, span time.Duration) float64 {
	if n == 0 || span <= 0 {
		return 0
	}
	return float64(n) / span.Seconds()
}

// Ratio is a/b as a float, 0 when b is 0 (no baseline).
func Ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
