package benchio

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// Flags of BenchmarkIO (make bench-io sets -benchio.out).
var (
	flagOut     = flag.String("benchio.out", "", "directory for benchmarks-io.md and benchmarks-io.png (empty: log only)")
	flagRounds  = flag.Int("benchio.rounds", 3, "rounds; every round runs every workload on every target")
	flagRuntime = flag.Duration("benchio.runtime", 1500*time.Millisecond, "measured time of each time-based fio job")
	flagRamp    = flag.Duration("benchio.ramp", 300*time.Millisecond, "unmeasured ramp before each time-based fio job")
	flagSize    = flag.Int64("benchio.size", 256<<20, "data file size in bytes")
	flagNice    = flag.Int("benchio.nice", -15, "run fio under nice -n this (0: as is)")
	flagSubvols = flag.Int("benchio.subvols", 1000, "volumes in the btrfs pools that measure accounting with many subvolumes")
	flagOnly    = flag.String("benchio.only", "", "regexp: run only the targets it matches (with their baselines and the control); empty: all")
	flagReport  = flag.String("benchio.report", "benchmarks-io", "base name of the report files in -benchio.out")
)

// BenchmarkIO is `make bench-io`: every workload on every target, rounds
// interleaved, the report and chart written to -benchio.out. It runs
// once whatever b.N is (use -benchtime 1x); its figures are ratios, not
// ns/op.
func BenchmarkIO(b *testing.B) {
	p := Params{FileSize: *flagSize, Runtime: *flagRuntime, Ramp: *flagRamp, Nice: *flagNice}
	start := time.Now()
	bn := setup(b, layout{volSize: 4 * p.FileSize, subvols: *flagSubvols})
	b.Logf("set-up took %s", time.Since(start).Round(time.Second))
	if *flagOnly != "" {
		only, err := regexp.Compile(*flagOnly)
		if err != nil {
			b.Fatalf("-benchio.only: %v", err)
		}
		bn.specs = onlySpecs(bn.specs, only)
	}
	rep := run(b, bn, Workloads, p, *flagRounds)
	b.Logf("runs took %s\n%s", time.Since(start).Round(time.Second), rep.markdown)
	writeReport(b, *flagOut, *flagReport, rep)
}

// writeReport writes rep as <name>.md, .png and .json (the samples) into
// dir; an empty dir writes nothing.
func writeReport(tb testing.TB, dir, name string, rep report) {
	tb.Helper()
	if dir == "" {
		return
	}
	if err := os.WriteFile(filepath.Join(dir, name+".md"), rep.markdown, 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := WriteChart(filepath.Join(dir, name+".png"), rep.rows); err != nil {
		tb.Fatal(err)
	}
	js, err := json.MarshalIndent(rep.samples, "", " ")
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name+".json"), js, 0o644)
	}
	if err != nil {
		tb.Fatal(err)
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
	for _, name := range []string{"loop ext4", "loop xfs", "loop block", "loop ext4, preallocated", "loop xfs, preallocated", "loop block, preallocated"} {
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
	if !bytes.Contains(rep.markdown, []byte("(the control: dir)")) {
		t.Errorf("report lacks the verdicts against the dir control:\n%s", rep.markdown)
	}
	if _, err := Chart(rep.rows); err != nil {
		t.Error(err)
	}
}

type report struct {
	samples  []Sample
	rows     []Row
	markdown []byte
}

// run runs the workloads on every target. The layout workload first runs
// once on every target (FirstWriteOf). Then, in each round, every workload
// runs on each candidate right next to a run on the candidate's baseline
// (baseline first in odd rounds, second in even ones, and the candidates
// in reverse order every other round), so that the machine's other load
// hits both sides of each ratio alike.
func run(tb testing.TB, bn *bench, workloads []Workload, p Params, rounds int) report {
	tb.Helper()
	ctx := context.Background()
	load0 := loadAvg()
	var samples []Sample
	one := func(round int, w Workload, target, pair, as string) {
		f, err := Run(ctx, w, bn.targets[target], p)
		if err != nil {
			tb.Fatalf("round %d: %s on %s: %v", round, w.Name, target, err)
		}
		samples = append(samples, Sample{Target: target, Workload: as, Round: round, Pair: pair, Figures: f})
	}
	reported := workloads
	for _, w := range workloads {
		if w.Layout {
			fw := FirstWriteOf(w)
			for _, s := range bn.specs {
				one(1, w, s.Name, "", fw.Name)
			}
			reported = append([]Workload{fw}, workloads...)
		}
	}
	var cands []Spec
	for _, s := range bn.specs {
		if s.Baseline != "" {
			cands = append(cands, s)
		}
	}
	for round := 1; round <= rounds; round++ {
		order := slices.Clone(cands)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, w := range workloads {
			for _, c := range order {
				if round%2 == 1 {
					one(round, w, c.Baseline, c.Name, w.Name)
					one(round, w, c.Name, "", w.Name)
				} else {
					one(round, w, c.Name, "", w.Name)
					one(round, w, c.Baseline, c.Name, w.Name)
				}
			}
		}
		tb.Logf("round %d of %d done", round, rounds)
	}
	rows, err := Ratios(bn.specs, reported, samples)
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
	return report{samples: samples, rows: rows, markdown: buf.Bytes()}
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
