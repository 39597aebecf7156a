package bench

import (
	"testing"
	"time"
)

func ms(vs ...int) []time.Duration {
	out := make([]time.Duration, len(vs))
	for i, v := range vs {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one value", ms(7), 95, 7 * time.Millisecond},
		{"p50 of odd count is the middle", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"p50 of even count is the lower middle", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p95 of 20 is the 19th", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20), 95, 19 * time.Millisecond},
		{"p95 of 10 is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 95, 10 * time.Millisecond},
		{"p100 is the max", ms(1, 2, 3), 100, 3 * time.Millisecond},
		{"tiny p is the min", ms(4, 5, 6), 0.1, 4 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []time.Duration
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"unsorted input", ms(300, 100, 200), Summary{Count: 3, P50: 200 * time.Millisecond, P95: 300 * time.Millisecond, Max: 300 * time.Millisecond, Mean: 200 * time.Millisecond}},
		{"outlier moves max and mean, not p50", ms(10, 10, 10, 10, 10000), Summary{Count: 5, P50: 10 * time.Millisecond, P95: 10000 * time.Millisecond, Max: 10000 * time.Millisecond, Mean: 2008 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tt.in...)
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.in[i] {
					t.Fatalf("Summarize reordered its input: %v", tt.in)
				}
			}
		})
	}
}

func TestThroughputAndRatio(t *testing.T) {
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"100 in 20s", Throughput(100, 20*time.Second), 5},
		{"none done", Throughput(0, time.Second), 0},
		{"no time", Throughput(5, 0), 0},
		{"ratio", Ratio(30*time.Second, 3*time.Second), 10},
		{"ratio without baseline", Ratio(time.Second, 0), 0},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}
