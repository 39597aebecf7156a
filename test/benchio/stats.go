package benchio

import (
	"fmt"
	"slices"
	"time"
)

// Target kinds and the tolerance the issue sets for each: a quota backend
// (and the dir backend, which adds nothing to the path) must stay within
// 3 % of the plain directory, a loop volume within 10 %.
const (
	TolQuota = 0.03
	TolLoop  = 0.10
)

// Spec names a place fio runs and what it is compared with.
type Spec struct {
	// Name is shown in tables and the chart, e.g. "btrfs qgroup".
	Name string
	// Baseline is the Name of the plain directory this one is compared
	// with; empty for a baseline.
	Baseline string
	// Tolerance is the allowed relative cost (TolQuota, TolLoop).
	Tolerance float64
	// Control marks a candidate whose I/O path is its baseline's (the
	// dir backend: a directory and a bind mount): the spread of its
	// ratios is the method's noise, against which the others are judged.
	Control bool
}

// Sample is one job's figures in one round.
type Sample struct {
	Target, Workload string
	Round            int
	// Pair is, for a baseline's sample, the candidate it ran next to;
	// empty for a candidate, and for a baseline run shared by all of
	// its candidates.
	Pair string
	Figures
}

// Row is one candidate on one workload: medians over the rounds, and the
// medians of the per-round ratios to the baseline. Each ratio divides by
// the baseline run made right next to the candidate's (its Pair), so load
// that changes over the run hits both sides of a ratio alike.
type Row struct {
	Target, Baseline, Workload string
	Tolerance                  float64
	Rounds                     int
	// Base and Cand are the median figures of the baseline and candidate.
	Base, Cand Figures
	// IOPS, P50, P99 are median ratios candidate/baseline: IOPS above 1
	// is faster, latency above 1 slower. (Throughput has the IOPS ratio:
	// the block size is the same.)
	IOPS, P50, P99 float64
	// IOPSRounds are the per-round IOPS ratios, sorted.
	IOPSRounds []float64
}

// Met says whether the row is within its tolerance: IOPS no more than the
// tolerance below the baseline and p50 latency no more above it. p99 is
// reported but not judged: a few seconds of fio give a p99 of a few dozen
// slow I/Os, which the machine's other load moves more than 3 %.
func (r Row) Met() bool {
	return r.IOPS >= 1-r.Tolerance && r.P50 <= 1+r.Tolerance
}

// Ratios pairs every candidate's samples with its baseline's of the same
// workload and round. Rows follow the order of specs, then of workloads.
// A candidate with a round its baseline lacks (or the reverse) is an error:
// the harness lost a run.
func Ratios(specs []Spec, workloads []Workload, samples []Sample) ([]Row, error) {
	type key struct {
		target, workload string
		round            int
		pair             string
	}
	by := map[key]Figures{}
	for _, s := range samples {
		k := key{s.Target, s.Workload, s.Round, s.Pair}
		if _, dup := by[k]; dup {
			return nil, fmt.Errorf("two samples of %s / %s in round %d (pair %q)", s.Target, s.Workload, s.Round, s.Pair)
		}
		by[k] = s.Figures
	}
	var rows []Row
	for _, sp := range specs {
		if sp.Baseline == "" {
			continue
		}
		for _, w := range workloads {
			row := Row{Target: sp.Name, Baseline: sp.Baseline, Workload: w.Name, Tolerance: sp.Tolerance}
			var base, cand []Figures
			var iops, p50, p99 []float64
			for k, c := range by {
				if k.target != sp.Name || k.workload != w.Name || k.pair != "" {
					continue
				}
				b, ok := by[key{sp.Baseline, w.Name, k.round, sp.Name}]
				if !ok {
					b, ok = by[key{sp.Baseline, w.Name, k.round, ""}]
				}
				if !ok {
					return nil, fmt.Errorf("%s / %s round %d has no baseline (%s) run", sp.Name, w.Name, k.round, sp.Baseline)
				}
				base, cand = append(base, b), append(cand, c)
				iops = append(iops, c.IOPS/b.IOPS)
				p50 = append(p50, float64(c.P50)/float64(b.P50))
				p99 = append(p99, float64(c.P99)/float64(b.P99))
			}
			if len(cand) == 0 {
				return nil, fmt.Errorf("no samples of %s / %s", sp.Name, w.Name)
			}
			row.Rounds = len(cand)
			row.Base, row.Cand = medianFigures(base), medianFigures(cand)
			row.IOPS, row.P50, row.P99 = Median(iops), Median(p50), Median(p99)
			slices.Sort(iops)
			row.IOPSRounds = iops
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// Median of xs (the mean of the middle two for an even count); 0 if empty.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianFigures takes the median of each figure on its own.
func medianFigures(fs []Figures) Figures {
	pick := func(f func(Figures) float64) float64 {
		xs := make([]float64, len(fs))
		for i, x := range fs {
			xs[i] = f(x)
		}
		return Median(xs)
	}
	return Figures{
		BytesPerSec: pick(func(f Figures) float64 { return f.BytesPerSec }),
		IOPS:        pick(func(f Figures) float64 { return f.IOPS }),
		P50:         time.Duration(pick(func(f Figures) float64 { return float64(f.P50) })),
		P99:         time.Duration(pick(func(f Figures) float64 { return float64(f.P99) })),
		Sync:        time.Duration(pick(func(f Figures) float64 { return float64(f.Sync) })),
	}
}

// FirstWriteOf is the layout workload w run once on every target before
// the rounds: into a file (or device) never written, where a sparse loop
// image still has to be allocated. In the rounds, w overwrites.
func FirstWriteOf(w Workload) Workload {
	w.Name, w.Title = "first-write", w.Title+", into a never-written file"
	return w
}

// Verdicts of a row against its target, given the control's rounds.
const (
	VerdictMet     = "met"
	VerdictMissed  = "missed"
	VerdictNoise   = "in noise"
	VerdictUnknown = "not decidable"
	VerdictOne     = "one sample"
)

// Verdict judges r's IOPS against its target with the noise floor the
// control's per-round ratios on the same workload show. Missed: every
// round below both the target and the control's lowest round. Met: every
// round within the target and the control itself within it (else a met
// target could be noise). In noise: the median within the target or the
// control's range. Otherwise not decidable.
func Verdict(r Row, control []float64) string {
	if len(r.IOPSRounds) < 2 || len(control) < 2 {
		return VerdictOne
	}
	lo, hi := slices.Min(control), slices.Max(control)
	floor := 1 - r.Tolerance
	switch {
	case r.IOPSRounds[len(r.IOPSRounds)-1] < min(floor, lo):
		return VerdictMissed
	case lo >= floor && hi <= 1+r.Tolerance && r.IOPSRounds[0] >= floor:
		return VerdictMet
	case r.IOPS >= floor || r.IOPS >= lo:
		return VerdictNoise
	}
	return VerdictUnknown
}
