package benchio

import (
	"bytes"
	"image/color"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

var testSpecs = []Spec{
	{Name: "plain"},
	{Name: "quota", Baseline: "plain", Tolerance: TolQuota},
	{Name: "loop", Baseline: "plain", Tolerance: TolLoop},
}

func fig(iops float64, p50, p99 time.Duration) Figures {
	return Figures{IOPS: iops, BytesPerSec: iops * 4096, P50: p50, P99: p99}
}

// TestRatios: ratios are paired by round, then the median is taken, so a
// round where the whole machine was slow does not count against a target.
func TestRatios(t *testing.T) {
	w := []Workload{mustWorkload(t, "rand-read-qd1")}
	us := time.Microsecond
	samples := []Sample{
		// Round 1 normal, round 2 twice as slow for everyone, round 3
		// the candidate hit by a spike.
		{"plain", "rand-read-qd1", 1, "", fig(1000, 100*us, 400*us)},
		{"quota", "rand-read-qd1", 1, "", fig(990, 101*us, 420*us)},
		{"loop", "rand-read-qd1", 1, "", fig(900, 110*us, 500*us)},
		{"plain", "rand-read-qd1", 2, "", fig(500, 200*us, 800*us)},
		{"quota", "rand-read-qd1", 2, "", fig(490, 204*us, 800*us)},
		{"loop", "rand-read-qd1", 2, "", fig(460, 220*us, 1000*us)},
		{"plain", "rand-read-qd1", 3, "", fig(1000, 100*us, 400*us)},
		{"quota", "rand-read-qd1", 3, "", fig(400, 300*us, 2000*us)},
		{"loop", "rand-read-qd1", 3, "", fig(910, 110*us, 440*us)},
	}
	rows, err := Ratios(testSpecs, w, samples)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Target != "quota" || rows[1].Target != "loop" {
		t.Fatalf("rows %+v, want quota then loop", rows)
	}
	q, l := rows[0], rows[1]
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	near("quota IOPS", q.IOPS, 0.98) // median of 0.99, 0.98, 0.40
	near("quota p50", q.P50, 1.02)   // median of 1.01, 1.02, 3.0
	near("quota p99", q.P99, 1.05)   // median of 1.05, 1.00, 5.0
	near("loop IOPS", l.IOPS, 0.91)  // median of 0.90, 0.92, 0.91
	near("loop p50", l.P50, 1.1)     // 1.1 every round
	if q.Rounds != 3 || q.Base.IOPS != 1000 || q.Cand.IOPS != 490 {
		t.Errorf("quota medians: rounds %d, base %v, cand %v; want 3, 1000, 490", q.Rounds, q.Base.IOPS, q.Cand.IOPS)
	}
	if !q.Met() {
		t.Error("quota within 3 % reported missed")
	}
	if !l.Met() {
		t.Error("loop within 10 % reported missed")
	}
	l.IOPS = 0.89
	if l.Met() {
		t.Error("loop 11 % slower reported met")
	}
	q.P50 = 1.031
	if q.Met() {
		t.Error("quota with p50 3.1 % slower reported met")
	}
}

func TestRatiosRejectsLostRuns(t *testing.T) {
	w := []Workload{mustWorkload(t, "translog")}
	f := fig(100, time.Millisecond, time.Millisecond)
	for name, samples := range map[string][]Sample{
		"no baseline for a round": {{"plain", "translog", 1, "", f}, {"quota", "translog", 1, "", f}, {"quota", "translog", 2, "", f}, {"loop", "translog", 1, "", f}},
		"candidate never ran":     {{"plain", "translog", 1, "", f}, {"quota", "translog", 1, "", f}},
		"a sample twice":          {{"plain", "translog", 1, "", f}, {"plain", "translog", 1, "", f}},
	} {
		if _, err := Ratios(testSpecs, w, samples); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestRatiosPairs: a baseline run next to a candidate (Pair) is the one
// its ratio divides by; a shared baseline run (no Pair) serves the rest.
func TestRatiosPairs(t *testing.T) {
	w := []Workload{mustWorkload(t, "translog")}
	samples := []Sample{
		{Target: "plain", Workload: "translog", Round: 1, Pair: "quota", Figures: fig(100, time.Millisecond, time.Millisecond)},
		{Target: "plain", Workload: "translog", Round: 1, Figures: fig(200, time.Millisecond, time.Millisecond)},
		{Target: "quota", Workload: "translog", Round: 1, Figures: fig(100, time.Millisecond, time.Millisecond)},
		{Target: "loop", Workload: "translog", Round: 1, Figures: fig(100, time.Millisecond, time.Millisecond)},
	}
	rows, err := Ratios(testSpecs, w, samples)
	if err != nil {
		t.Fatal(err)
	}
	if rows[0].IOPS != 1 || rows[1].IOPS != 0.5 {
		t.Errorf("IOPS ratios quota %v, loop %v; want 1 (its own pair) and 0.5 (the shared run)", rows[0].IOPS, rows[1].IOPS)
	}
	if fw := FirstWriteOf(mustWorkload(t, "seq-write")); fw.Name != "first-write" || !fw.Layout || fw.RW != "write" {
		t.Errorf("FirstWriteOf = %+v", fw)
	}
}

func TestMarkdownAndChart(t *testing.T) {
	rows := []Row{
		{Target: "quota", Baseline: "plain", Workload: "translog", Tolerance: TolQuota, Rounds: 3,
			Base: fig(200, 2*time.Millisecond, 9*time.Millisecond), Cand: fig(196, 2*time.Millisecond, 9*time.Millisecond), IOPS: 0.98, P50: 1.01, P99: 1.2},
		{Target: "loop", Baseline: "plain", Workload: "translog", Tolerance: TolLoop, Rounds: 3,
			Base: fig(200, 2*time.Millisecond, 9*time.Millisecond), Cand: fig(100, 4*time.Millisecond, 9*time.Millisecond), IOPS: 0.5, P50: 2, P99: 1},
	}
	var buf bytes.Buffer
	specs := append(slices.Clone(testSpecs), Spec{Name: "ctl", Baseline: "plain", Tolerance: TolQuota, Control: true})
	rows[1].IOPSRounds = []float64{0.4, 0.5, 0.6}
	rows = append(rows, Row{Target: "ctl", Baseline: "plain", Workload: "translog", Tolerance: TolQuota, Rounds: 3,
		Base: fig(200, 2*time.Millisecond, 9*time.Millisecond), Cand: fig(200, 2*time.Millisecond, 9*time.Millisecond), IOPS: 1, P50: 1, P99: 1,
		IOPSRounds: []float64{0.9, 1, 1.1}})
	Markdown(&buf, Meta{Date: "d", Rounds: 3, Notes: []string{"disk note"}}, specs, rows)
	md := buf.String()
	for _, want := range []string{
		"| workload | quota | loop |",
		"| translog | 0.98 / 1.01 | **0.50 / 2.00** |",
		"| quota | translog | 200 | 0.8 | 2 ms | 9 ms | 0.980 | 1.010 | 1.200 | 0 µs / 0 µs | ±3 %: met |",
		"±10 %: **missed**",
		"- disk note",
		"(the control: ctl)",
		"| translog | 0.90–1.10 | one sample (0.98) | **missed** (0.50) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	img, err := Chart(rows)
	if err != nil {
		t.Fatal(err)
	}
	// The missed row's bar is red, the met one's blue.
	count := map[color.RGBA]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			count[img.RGBAAt(x, y)]++
		}
	}
	if count[badColor] == 0 || count[metColor] == 0 {
		t.Errorf("chart has %d red and %d blue pixels, want both", count[badColor], count[metColor])
	}
	if _, err := Chart(nil); err == nil {
		t.Error("Chart(nil) succeeded")
	}
}

// TestVerdict: a target is judged against the control's spread, never
// against 1.0 alone.
func TestVerdict(t *testing.T) {
	quiet := []float64{0.99, 1.0, 1.02}  // a control within 3 %
	noisy := []float64{0.80, 0.95, 1.20} // a control spread ±20 %
	row := func(tol float64, rounds ...float64) Row {
		return Row{Tolerance: tol, IOPS: Median(rounds), IOPSRounds: rounds}
	}
	for _, tc := range []struct {
		name    string
		r       Row
		control []float64
		want    string
	}{
		{"within target, quiet control", row(TolQuota, 0.98, 0.99, 1.01), quiet, VerdictMet},
		{"within target, noisy control", row(TolQuota, 0.98, 0.99, 1.01), noisy, VerdictNoise},
		{"far below target and control", row(TolLoop, 0.30, 0.35, 0.60), noisy, VerdictMissed},
		{"below target, inside control's range", row(TolLoop, 0.82, 0.85, 0.88), noisy, VerdictNoise},
		{"one round inside the control's range", row(TolLoop, 0.60, 0.70, 0.85), noisy, VerdictUnknown},
		{"below a quiet control in every round", row(TolQuota, 0.90, 0.92, 0.95), quiet, VerdictMissed},
		{"one sample", row(TolQuota, 0.5), quiet, VerdictOne},
		{"no control", row(TolQuota, 0.5, 0.5), nil, VerdictOne},
	} {
		if got := Verdict(tc.r, tc.control); got != tc.want {
			t.Errorf("%s: Verdict = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestOnlySpecs(t *testing.T) {
	specs := []Spec{
		{Name: "btrfs plain dir"},
		{Name: "btrfs qgroup", Baseline: "btrfs plain dir"},
		{Name: "xfs plain dir"},
		{Name: "dir", Baseline: "xfs plain dir", Control: true},
		{Name: "loop ext4", Baseline: "xfs plain dir"},
		{Name: "loop ext4, preallocated", Baseline: "xfs plain dir"},
	}
	names := func(ss []Spec) string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Name)
		}
		return strings.Join(out, "; ")
	}
	for _, tt := range []struct{ only, want string }{
		{"preallocated", "xfs plain dir; dir; loop ext4, preallocated"},
		{"^loop ext4", "xfs plain dir; dir; loop ext4; loop ext4, preallocated"},
		{"qgroup", "btrfs plain dir; btrfs qgroup; xfs plain dir; dir"},
		{"nothing matches this", "xfs plain dir; dir"},
	} {
		if got := names(onlySpecs(specs, regexp.MustCompile(tt.only))); got != tt.want {
			t.Errorf("onlySpecs(%q) = %s, want %s", tt.only, got, tt.want)
		}
	}
}
