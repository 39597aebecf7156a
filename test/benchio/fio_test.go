package benchio

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustWorkload(t *testing.T, name string) Workload {
	t.Helper()
	w, ok := WorkloadByName(name)
	if !ok {
		t.Fatalf("no workload %q", name)
	}
	return w
}

// The testdata files are fio-3.33 JSON output from this harness's jobs,
// trimmed to the fields the parser reads (values unchanged).
func TestParseFio(t *testing.T) {
	for _, tc := range []struct {
		file, workload string
		want           Figures
	}{
		// A read job: figures of "read", completion latency.
		{"randread.json", "rand-read-qd1", Figures{BytesPerSec: 37454965, IOPS: 9144.278607, P50: 96768, P99: 2179072}},
		// The translog: IOPS of the writes, latency of the fdatasyncs
		// (fio 3.33 leaves sync.total_ios at 0; N counts them).
		{"translog.json", "translog", Figures{BytesPerSec: 1520206, IOPS: 371.144279, P50: 1417216, P99: 19529728}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile("testdata/" + tc.file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseFio(mustWorkload(t, tc.workload), b)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestParseFioRejects: every way a run can yield no real figure is an
// error, never a zero that would pass as a ratio.
func TestParseFioRejects(t *testing.T) {
	rr, err := os.ReadFile("testdata/randread.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, workload, out, want string
	}{
		{"not JSON", "rand-read-qd1", "fio: file not found", "no JSON"},
		{"broken JSON", "rand-read-qd1", `{"jobs": [`, "parse JSON"},
		{"no job", "rand-read-qd1", `{"jobs": []}`, "0 jobs"},
		{"job error", "rand-read-qd1", `{"jobs": [{"error": 5}]}`, "job error 5"},
		// The read job's output asked as a write workload: the write
		// side did nothing.
		{"wrong direction", "rand-write-qd1", string(rr), "no I/O completed"},
		{"no fdatasync", "translog", `{"jobs": [{"write": {"bw_bytes": 1, "iops": 1, "total_ios": 1, "clat_ns": {"N": 1, "percentile": {"50.000000": 1, "99.000000": 1}}}, "sync": {"lat_ns": {"N": 0}}}]}`, "no fdatasync"},
		{"no percentiles", "rand-read-qd1", `{"jobs": [{"read": {"bw_bytes": 1, "iops": 1, "total_ios": 1, "clat_ns": {"N": 1}}}]}`, "percentiles missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFio(mustWorkload(t, tc.workload), []byte(tc.out))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestArgs(t *testing.T) {
	p := Params{FileSize: 64 << 20, Runtime: 1500 * time.Millisecond, Ramp: 300 * time.Millisecond}
	dir, blk := Target{Path: "/v"}, Target{Path: "/dev/x", Block: true}
	for _, tc := range []struct {
		name, workload string
		target         Target
		want, absent   []string
	}{
		{"layout by size", "seq-write", dir,
			[]string{"--filename=/v/fio.dat", "--size=67108864", "--rw=write", "--bs=1M", "--iodepth=4", "--direct=1", "--ioengine=libaio", "--fallocate=none"},
			[]string{"--time_based"}},
		{"random by time", "rand-read-qd32", dir,
			[]string{"--rw=randread", "--bs=4k", "--iodepth=32", "--time_based", "--runtime=1500ms", "--ramp_time=300ms"}, nil},
		{"translog appends to a file", "translog", dir,
			[]string{"--filename=/v/translog", "--file_append=1", "--fdatasync=1", "--direct=0", "--ioengine=psync"},
			[]string{"--direct=1", "--iodepth=1"}},
		{"block device", "rand-write-qd1", blk, []string{"--filename=/dev/x", "--size=67108864"}, nil},
		{"translog on a block device writes past the data", "translog", blk,
			[]string{"--filename=/dev/x", "--offset=67108864", "--size=67108864"}, []string{"--file_append=1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Args(mustWorkload(t, tc.workload), tc.target, p)
			for _, w := range tc.want {
				if !slices.Contains(a, w) {
					t.Errorf("args %q lack %s", a, w)
				}
			}
			for _, w := range tc.absent {
				if slices.Contains(a, w) {
					t.Errorf("args %q have %s", a, w)
				}
			}
		})
	}
}
