package benchio

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Workload is one fio job. All but the translog use libaio with O_DIRECT,
// so the page cache of neither the volume's filesystem nor the host hides
// the path under test.
type Workload struct {
	// Name is the short, stable key (tables, flags, the smoke test).
	Name string
	// Title says what it stands for, for the report.
	Title string
	// RW is fio's rw= (write, read, randread, randwrite).
	RW string
	// BlockSize is fio's bs=.
	BlockSize string
	// Depth is the queue depth (libaio iodepth=).
	Depth int
	// Translog makes it small buffered appends each followed by
	// fdatasync (psync engine), like a database's write-ahead log.
	Translog bool
	// Layout runs the job by size, not by time: it writes the whole data
	// file, which the workloads after it read and overwrite.
	Layout bool
}

// Workloads are the data-path workloads, in the order they run: the
// sequential write lays out the data file the others use.
var Workloads = []Workload{
	{Name: "seq-write", Title: "sequential write 1 MiB, qd 4", RW: "write", BlockSize: "1M", Depth: 4, Layout: true},
	{Name: "seq-read", Title: "sequential read 1 MiB, qd 4", RW: "read", BlockSize: "1M", Depth: 4},
	{Name: "rand-read-qd1", Title: "random read 4 KiB, qd 1", RW: "randread", BlockSize: "4k", Depth: 1},
	{Name: "rand-read-qd32", Title: "random read 4 KiB, qd 32", RW: "randread", BlockSize: "4k", Depth: 32},
	{Name: "rand-write-qd1", Title: "random write 4 KiB, qd 1", RW: "randwrite", BlockSize: "4k", Depth: 1},
	{Name: "rand-write-qd32", Title: "random write 4 KiB, qd 32", RW: "randwrite", BlockSize: "4k", Depth: 32},
	{Name: "translog", Title: "4 KiB append + fdatasync (translog)", RW: "write", BlockSize: "4k", Depth: 1, Translog: true},
}

// WorkloadByName returns the workload named name.
func WorkloadByName(name string) (Workload, bool) {
	for _, w := range Workloads {
		if w.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}

// Params size a run.
type Params struct {
	// FileSize is the data file (or the region of a block device) the
	// direct workloads use; the translog gets a region as large after it
	// on a block device.
	FileSize int64
	// Runtime and Ramp are per time-based job; the ramp is not counted.
	Runtime, Ramp time.Duration
	// Nice, if not 0, runs fio under `nice -n Nice`: on a machine shared
	// with other work, a negative value keeps fio's own scheduling delays
	// out of the latencies of both sides of a ratio.
	Nice int
}

// Target is where a job runs: a directory (a file in it is used) or a
// block device.
type Target struct {
	Path  string
	Block bool
}

// Data and log file names inside a directory target.
const (
	DataFile = "fio.dat"
	LogFile  = "translog"
)

// Args is the fio command line (without the binary) for w on t.
func Args(w Workload, t Target, p Params) []string {
	a := []string{
		"--name=" + w.Name, "--output-format=json",
		"--rw=" + w.RW, "--bs=" + w.BlockSize,
		"--numjobs=1", "--fallocate=none", "--randrepeat=0",
	}
	if !w.Layout {
		a = append(a, "--time_based",
			"--runtime="+msArg(p.Runtime), "--ramp_time="+msArg(p.Ramp))
	}
	size := strconv.FormatInt(p.FileSize, 10)
	switch {
	case w.Translog && t.Block:
		// No file to append to: write on, past the data region.
		a = append(a, "--filename="+t.Path, "--offset="+size, "--size="+size)
	case w.Translog:
		// Appends grow the file: every fdatasync has to persist
		// the new size and blocks, as a real log's does. The cap is
		// far beyond what a run writes, so fio never wraps.
		a = append(a, "--filename="+t.Path+"/"+LogFile, "--file_append=1", "--size=1g")
	case t.Block:
		a = append(a, "--filename="+t.Path, "--size="+size)
	default:
		a = append(a, "--filename="+t.Path+"/"+DataFile, "--size="+size)
	}
	if w.Translog {
		return append(a, "--ioengine=psync", "--direct=0", "--fdatasync=1")
	}
	return append(a, "--ioengine=libaio", "--direct=1", "--iodepth="+strconv.Itoa(w.Depth))
}

func msArg(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }

// Figures are one job's results.
type Figures struct {
	// BytesPerSec and IOPS are of the job's direction (read or write).
	BytesPerSec, IOPS float64
	// P50 and P99 are completion latencies of the job's I/Os; for the
	// translog, of its fdatasync calls (the time a log append waits).
	P50, P99 time.Duration
	// Sync is how long a syncfs of the target's filesystem took right
	// after the job: the work the job left for the next commit (a btrfs
	// transaction commit does its qgroup accounting then), which would
	// otherwise land in the next target's run.
	Sync time.Duration
}

// fioOutput is the part of fio's JSON output the harness reads.
type fioOutput struct {
	Jobs []struct {
		Error int     `json:"error"`
		Read  fioDir  `json:"read"`
		Write fioDir  `json:"write"`
		Sync  fioSync `json:"sync"`
	} `json:"jobs"`
}

type fioDir struct {
	BW   float64 `json:"bw_bytes"`
	IOPS float64 `json:"iops"`
	IOs  int64   `json:"total_ios"`
	Clat fioLat  `json:"clat_ns"`
}

// fioSync is the job's fsync/fdatasync section. fio 3.33 leaves its
// total_ios at 0; the latency sample count N is the number of calls.
type fioSync struct {
	Lat fioLat `json:"lat_ns"`
}

type fioLat struct {
	N          int64              `json:"N"`
	Percentile map[string]float64 `json:"percentile"`
}

// ParseFio reads the figures of w from fio's JSON output. fio prints
// warnings before the JSON on some errors, so the document is taken from
// the first '{'. A job that reports an error, did no I/O, or lacks the
// latency percentiles is an error: a zero would pass as a ratio.
func ParseFio(w Workload, out []byte) (Figures, error) {
	i := strings.IndexByte(string(out), '{')
	if i < 0 {
		return Figures{}, fmt.Errorf("fio %s: no JSON in output: %.200q", w.Name, out)
	}
	var o fioOutput
	if err := json.Unmarshal(out[i:], &o); err != nil {
		return Figures{}, fmt.Errorf("fio %s: parse JSON: %w", w.Name, err)
	}
	if len(o.Jobs) != 1 {
		return Figures{}, fmt.Errorf("fio %s: %d jobs in output, want 1", w.Name, len(o.Jobs))
	}
	j := o.Jobs[0]
	if j.Error != 0 {
		return Figures{}, fmt.Errorf("fio %s: job error %d", w.Name, j.Error)
	}
	d := j.Write
	if w.RW == "read" || w.RW == "randread" {
		d = j.Read
	}
	if d.IOs == 0 || d.IOPS <= 0 || d.BW <= 0 {
		return Figures{}, fmt.Errorf("fio %s: no I/O completed", w.Name)
	}
	lat := d.Clat
	if w.Translog {
		if j.Sync.Lat.N == 0 {
			return Figures{}, fmt.Errorf("fio %s: no fdatasync completed", w.Name)
		}
		lat = j.Sync.Lat
	}
	p50, ok50 := lat.Percentile["50.000000"]
	p99, ok99 := lat.Percentile["99.000000"]
	if !ok50 || !ok99 {
		return Figures{}, fmt.Errorf("fio %s: latency percentiles missing", w.Name)
	}
	return Figures{
		BytesPerSec: d.BW, IOPS: d.IOPS,
		P50: time.Duration(p50), P99: time.Duration(p99),
	}, nil
}

// Run runs w on t with fio and returns its figures. The translog starts
// from an empty log each time.
func Run(ctx context.Context, w Workload, t Target, p Params) (Figures, error) {
	if w.Translog && !t.Block {
		if err := removeIfExists(t.Path + "/" + LogFile); err != nil {
			return Figures{}, err
		}
	}
	name, args := "fio", Args(w, t, p)
	if p.Nice != 0 {
		name, args = "nice", append([]string{"-n", strconv.Itoa(p.Nice), "fio"}, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		return Figures{}, fmt.Errorf("fio %s on %s: %w: %s %.300s", w.Name, t.Path, err, stderr, out)
	}
	f, err := ParseFio(w, out)
	if err != nil {
		return f, err
	}
	f.Sync, err = syncFS(t.Path)
	return f, err
}
