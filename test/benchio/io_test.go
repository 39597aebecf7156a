package benchio

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// Flags of BenchmarkIO (make bench-io sets -benchio.out).
var (
	flagOut     = flag.String("benchio.out", "", "directory for benchmarks-io.md and benchmarks-io.png (empty: log only)")
	flagRounds  = flag.Int("benchio.rounds", 4, "rounds; every round runs every workload on every target")
	flagRuntime = flag.Duration("benchio.runtime", 1500*time.Millisecond, "measured time of each time-based fio job")
	flagRamp    = flag.Duration("benchio.ramp", 300*time.Millisecond, "unmeasured ramp before each time-based fio job")
	flagSize    = flag.Int64("benchio.size", 256<<20, "data file size in bytes")
	flagSubvols = flag.Int("benchio.subvols", 1000, "volumes in the btrfs pools that measure accounting with many subvolumes")
)

// BenchmarkIO is `make bench-io`: every workload on every target, rounds
// interleaved, the report and chart written to -benchio.out. It runs
// once whatever b.N is (use -benchtime 1x); its figures are ratios, not
// ns/op.
func BenchmarkIO(b *testing.B) {
	p := Params{FileSize: *flagSize, Runtime: *flagRuntime, Ramp: *flagRamp}
	start := time.Now()
	bn := setup(b, layout{volSize: 4 * p.FileSize, subvols: *flagSubvols})
	b.Logf("set-up took %s", time.Since(start).Round(time.Second))
	rep := run(b, bn, Workloads, p, *flagRounds)
	b.Logf("runs took %s\n%s", time.Since(start).Round(time.Second), rep.markdown)
	if *flagOut == "" {
		return
	}
	if err := os.WriteFile(filepath.Join(*flagOut, "benchmarks-io.md"), rep.markdown, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := WriteChart(filepath.Join(*flagOut, "benchmarks-io.png"), rep.rows); err != nil {
		b.Fatal(err)
	}
}

// TestSmoke runs one short workload on every target the host supports, so
// the harness (disks, volumes through pkg/node, fio, parsing, report,
// chart) cannot rot. It checks that every figure is real and that dhpp's
// loop devices run with direct I/O; the ratios of so short a run are
// noise and are not judged.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("needs root, loop devices and fio")
	}
	p := Params{FileSize: 8 << 20, Runtime: 300 * time.Millisecond, Ramp: 0}
	bn := setup(t, layout{volSize: 512 << 20})
	w, _ := WorkloadByName("rand-write-qd1")
	rep := run(t, bn, []Workload{w}, p, 1)

	if want := len(candidates(bn.specs)); len(rep.rows) != want {
		t.Fatalf("%d rows, want one per candidate (%d)", len(rep.rows), want)
	}
	for _, r := range rep.rows {
		if r.Cand.IOPS <= 0 || r.Base.IOPS <= 0 || r.Cand.P50 <= 0 || r.IOPS <= 0 || r.P99 <= 0 {
			t.Errorf("%s: figures not measured: %+v", r.Target, r)
		}
	}
	for _, name := range []string{"loop ext4", "loop xfs", "loop block"} {
		tg := bn.targets[name]
		d, err := readDevice(tg.Path, tg.Block)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.HasPrefix(d.Name, "loop") || d.DirectIO != "1" {
			t.Errorf("%s runs on %s with loop direct I/O %q, want a loop device with 1 (no double caching)", name, d.Name, d.DirectIO)
		}
	}
	if !bytes.Contains(rep.markdown, []byte("| loop block | rand-write-qd1 |")) {
		t.Errorf("report lacks the loop block row:\n%s", rep.markdown)
	}
	if _, err := Chart(rep.rows); err != nil {
		t.Error(err)
	}
}

type report struct {
	rows     []Row
	markdown []byte
}

// run runs the workloads on every target for rounds rounds. Within a round
// each workload runs on every target back to back (the baselines among
// them), in reverse order every other round, so that load on the machine
// hits baseline and candidates alike.
func run(tb testing.TB, bn *bench, workloads []Workload, p Params, rounds int) report {
	tb.Helper()
	ctx := context.Background()
	load0 := loadAvg()
	var samples []Sample
	for round := 1; round <= rounds; round++ {
		order := slices.Clone(bn.specs)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, w := range workloads {
			for _, s := range order {
				f, err := Run(ctx, w, bn.targets[s.Name], p)
				if err != nil {
					tb.Fatalf("round %d: %s on %s: %v", round, w.Name, s.Name, err)
				}
				samples = append(samples, Sample{Target: s.Name, Workload: w.Name, Round: round, Figures: f})
			}
		}
		tb.Logf("round %d of %d done", round, rounds)
	}
	workloads, samples = SplitFirstWrite(workloads, samples)
	rows, err := Ratios(bn.specs, workloads, samples)
	if err != nil {
		tb.Fatal(err)
	}
	meta := Meta{
		Date:    time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Machine: machine(),
		Load:    load0 + " → " + loadAvg(),
		Params:  p, Rounds: rounds, Notes: bn.notes,
	}
	var buf bytes.Buffer
	Markdown(&buf, meta, bn.specs, rows)
	return report{rows: rows, markdown: buf.Bytes()}
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machine() string {
	kernel := "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	fio := "fio ?"
	if out, err := exec.Command("fio", "--version").Output(); err == nil {
		fio = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%d CPUs, kernel %s, %s", runtime.NumCPU(), kernel, fio)
}
