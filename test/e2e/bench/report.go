package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// fmtDur prints a latency at a precision that suits its size: ms below a
// second, 0.01 s below a minute, whole seconds above.
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "–"
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.0f s", d.Seconds())
	}
}

func fmtMiB(b int64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
}

// Markdown writes the results table, the per-process cost table and the
// dhpp/local-path ratios.
func Markdown(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "| provisioner | N | bound | PVC→Bound p50 | p95 | max | pod→Running p50 | p95 | max | PV deleted p50 | p95 | max | bind vol/s | delete vol/s |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.Results {
		fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %.2f |\n",
			r.Provisioner, r.N, r.Bound.Count,
			fmtDur(r.Bound.P50), fmtDur(r.Bound.P95), fmtDur(r.Bound.Max),
			fmtDur(r.Running.P50), fmtDur(r.Running.P95), fmtDur(r.Running.Max),
			fmtDur(r.PVDeleted.P50), fmtDur(r.PVDeleted.P95), fmtDur(r.PVDeleted.Max),
			r.BindThroughput, r.DeleteThroughput)
	}
	fmt.Fprintf(w, "\nWhere the time goes. PVC→Bound: the scheduler selects the node, the provisioner creates the PV, kube-controller-manager's PV binder binds it (each from the claim's create). PV deletion: the binder marks the PV Released, the provisioner deletes the volume and the PV (each from the claim's delete).\n\n")
	fmt.Fprintf(w, "| provisioner | N | node selected p50 | max | PV created p50 | max | Bound p50 | max | PV released p50 | max | PV gone p50 | max |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.Results {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Provisioner, r.N,
			fmtDur(r.NodeSelected.P50), fmtDur(r.NodeSelected.Max), fmtDur(r.PVCreated.P50), fmtDur(r.PVCreated.Max),
			fmtDur(r.Bound.P50), fmtDur(r.Bound.Max), fmtDur(r.PVReleased.P50), fmtDur(r.PVReleased.Max),
			fmtDur(r.PVDeleted.P50), fmtDur(r.PVDeleted.Max))
	}
	fmt.Fprintf(w, "\n| provisioner | N | process (count) | CPU s during the round | peak RSS in the round (one process) | VmHWM (one process) |\n")
	fmt.Fprintf(w, "|---|---:|---|---:|---:|---:|\n")
	for _, r := range rep.Results {
		for _, u := range r.Usage {
			fmt.Fprintf(w, "| %s | %d | %s (%d) | %.1f | %s | %s |\n", r.Provisioner, r.N, u.Executable, u.Processes, u.CPUSeconds, fmtMiB(u.PeakRSS), fmtMiB(u.PeakHWM))
		}
	}
	if rs := Ratios(rep.Results); len(rs) > 0 {
		fmt.Fprintf(w, "\n| N | local-path p50 / dhpp p50 (PVC→Bound) | pod→Running | PV deletion | bind throughput dhpp / local-path |\n|---:|---:|---:|---:|---:|\n")
		for _, x := range rs {
			fmt.Fprintf(w, "| %d | %.1f× | %.1f× | %.1f× | %.1f× |\n", x.N, x.Bound, x.Running, x.Deleted, x.Throughput)
		}
	}
	var errs []string
	for _, r := range rep.Results {
		if r.Err != "" {
			errs = append(errs, fmt.Sprintf("- %s N=%d: %s", r.Provisioner, r.N, r.Err))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(w, "\nErrors:\n%s\n", strings.Join(errs, "\n"))
	}
}

// RatioRow compares local-path with dhpp at one N: how many times slower
// local-path's p50 is, and how many times dhpp's throughput is higher.
type RatioRow struct {
	N                                   int
	Bound, Running, Deleted, Throughput float64
}

// Ratios pairs dhpp and local-path results by N, in ascending N.
func Ratios(rs []Result) []RatioRow {
	by := map[string]map[int]Result{}
	for _, r := range rs {
		if by[r.Provisioner] == nil {
			by[r.Provisioner] = map[int]Result{}
		}
		by[r.Provisioner][r.N] = r
	}
	var out []RatioRow
	for n, d := range by["dhpp"] {
		l, ok := by["local-path"][n]
		if !ok {
			continue
		}
		row := RatioRow{N: n,
			Bound:   Ratio(l.Bound.P50, d.Bound.P50),
			Running: Ratio(l.Running.P50, d.Running.P50),
			Deleted: Ratio(l.PVDeleted.P50, d.PVDeleted.P50),
		}
		if l.BindThroughput > 0 {
			row.Throughput = d.BindThroughput / l.BindThroughput
		}
		out = append(out, row)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N < out[j].N })
	return out
}

// WriteJSON saves the whole report (raw latencies included).
func WriteJSON(path string, rep *Report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteFile writes b to path, creating its directory.
func WriteFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
