package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFmtDur(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{0, "–"},
		{1500 * time.Microsecond, "1 ms"},
		{950 * time.Millisecond, "950 ms"},
		{12345 * time.Millisecond, "12.35 s"},
		{95 * time.Second, "95 s"},
	}
	for _, tt := range tests {
		if got := fmtDur(tt.in); got != tt.want {
			t.Errorf("fmtDur(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRatios(t *testing.T) {
	rs := []Result{
		{Provisioner: "local-path", N: 100, Bound: Summary{P50: 30 * time.Second}, Running: Summary{P50: 40 * time.Second}, PVDeleted: Summary{P50: 2 * time.Second}, BindThroughput: 1},
		{Provisioner: "dhpp", N: 100, Bound: Summary{P50: 3 * time.Second}, Running: Summary{P50: 4 * time.Second}, PVDeleted: Summary{P50: time.Second}, BindThroughput: 5},
		{Provisioner: "dhpp", N: 10, Bound: Summary{P50: time.Second}},
		{Provisioner: "local-path", N: 10, Bound: Summary{P50: 4 * time.Second}},
		{Provisioner: "dhpp", N: 300, Bound: Summary{P50: time.Second}}, // no partner
	}
	got := Ratios(rs)
	want := []RatioRow{{N: 10, Bound: 4}, {N: 100, Bound: 10, Running: 10, Deleted: 2, Throughput: 5}}
	if len(got) != len(want) {
		t.Fatalf("Ratios = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestMarkdownAndJSON(t *testing.T) {
	rep := &Report{Results: []Result{
		{Provisioner: "dhpp", N: 10, Bound: Summary{Count: 10, P50: 200 * time.Millisecond}, BindThroughput: 2.5,
			NodeSelected: Summary{Count: 10, P50: 20 * time.Millisecond, Max: 40 * time.Millisecond},
			PVCreated:    Summary{Count: 10, P50: 90 * time.Millisecond, Max: 1500 * time.Millisecond},
			PVReleased:   Summary{Count: 10, P50: 300 * time.Millisecond},
			Usage:        []ProcUsage{{Executable: "dhpp-driver", Processes: 3, CPUSeconds: 1.25, PeakRSS: 30 << 20}}},
		{Provisioner: "local-path", N: 10, Bound: Summary{Count: 9, P50: 4 * time.Second}, Err: "claims not bound"},
	}}
	var b strings.Builder
	Markdown(&b, rep)
	out := b.String()
	for _, want := range []string{
		"| dhpp | 10 | 10 | 200 ms |",
		"| local-path | 10 | 9 | 4.00 s |",
		"| dhpp | 10 | dhpp-driver (3) | 1.2 | 30 MiB | – |",
		"| 10 | 20.0× |",
		"| dhpp | 10 | 20 ms | 40 ms | 90 ms | 1.50 s | 200 ms | – | 300 ms | – | – | – |",
		"- local-path N=10: claims not bound",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("markdown lacks %q:\n%s", want, out)
		}
	}
	path := filepath.Join(t.TempDir(), "sub", "r.json")
	if err := WriteJSON(path, rep); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Results) != 2 || back.Results[0].Bound.P50 != 200*time.Millisecond {
		t.Errorf("round trip lost data: %+v", back.Results)
	}
}

func TestIsE2E(t *testing.T) {
	tests := []struct {
		argv []string
		want bool
	}{
		{[]string{"/tmp/go-build1/b001/e2e.test", "-test.v=true"}, true},
		{[]string{"go", "test", "-tags", "e2e", "-v", "./test/e2e/"}, true},
		{[]string{"/usr/local/go/bin/go", "test", "-tags=e2e", "./test/e2e/"}, true},
		{[]string{"go", "test", "./test/e2e/bench"}, false},
		{[]string{"go", "run", "-tags", "e2e", "./x"}, false},
		{[]string{"bench.test"}, false},
	}
	for _, tt := range tests {
		if got := isE2E(tt.argv); got != tt.want {
			t.Errorf("isE2E(%q) = %v, want %v", tt.argv, got, tt.want)
		}
	}
}
