package bench

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// Fields 3..22 after the name; utime=14, stime=15, starttime=22.
	tail := "S 1 2 3 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 98765 1000 200"
	tests := []struct {
		name      string
		in        string
		cpu, strt uint64
		wantErr   bool
	}{
		{"plain", "42 (dhpp-driver) " + tail, 300, 98765, false},
		{"name with spaces and parens", "42 (a (b) c) " + tail, 300, 98765, false},
		{"no name", "42 dhpp " + tail, 0, 0, true},
		{"truncated", "42 (x) S 1 2 3", 0, 0, true},
		{"garbage numbers", "42 (x) S 1 2 3 0 -1 4 1 0 0 0 ab 50 0 0 20 0 12 0 98765 1 2", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cpu, start, err := parseStat(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if cpu != tt.cpu || start != tt.strt {
				t.Errorf("got cpu=%d start=%d, want %d %d", cpu, start, tt.cpu, tt.strt)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		rss, hwm int64
		wantErr  bool
	}{
		{"both", "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n", 1 << 20, 2 << 20, false},
		{"kernel thread has neither", "Name:\tkthreadd\nState:\tS\n", 0, 0, true},
		{"bad unit", "VmHWM:\t1 MB\nVmRSS:\t1 kB\n", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rss, hwm, err := parseStatus(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if rss != tt.rss || hwm != tt.hwm {
				t.Errorf("got rss=%d hwm=%d, want %d %d", rss, hwm, tt.rss, tt.hwm)
			}
		})
	}
}

// fakeProc writes a /proc-like entry.
func fakeProc(t *testing.T, root string, pid int, argv0 string, cpu, start uint64, rssKB, hwmKB int) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stat := fmt.Sprintf("%d (%s) S 1 2 3 0 -1 0 0 0 0 0 %d 0 0 0 20 0 1 0 %d 0 0", pid, filepath.Base(argv0), cpu, start)
	status := fmt.Sprintf("Name:\tx\nVmHWM:\t%d kB\nVmRSS:\t%d kB\n", hwmKB, rssKB)
	for f, c := range map[string]string{"stat": stat, "status": status, "cmdline": argv0 + "\x00--v=2\x00"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSamplerAggregates(t *testing.T) {
	root := t.TempDir()
	// Two drivers (two nodes), a sidecar, and an unrelated process.
	fakeProc(t, root, 10, "/dhpp-driver", 100, 5, 20000, 30000)
	fakeProc(t, root, 11, "/dhpp-driver", 200, 6, 10000, 10000)
	fakeProc(t, root, 12, "/csi-provisioner", 50, 7, 40000, 40000)
	fakeProc(t, root, 13, "/usr/bin/containerd", 999, 8, 90000, 90000)
	if err := os.MkdirAll(filepath.Join(root, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := NewSampler(root, []string{"dhpp-driver", "csi-provisioner"}, time.Hour)
	if err := s.Sample(); err != nil {
		t.Fatal(err)
	}
	// Later: driver 10 used 1.5 s and peaked at 50000 kB then fell back;
	// driver 11 was restarted (same PID, new start time) and used 0.3 s.
	fakeProc(t, root, 10, "/dhpp-driver", 250, 5, 50000, 50000)
	if err := s.Sample(); err != nil {
		t.Fatal(err)
	}
	fakeProc(t, root, 10, "/dhpp-driver", 250, 5, 25000, 50000)
	fakeProc(t, root, 11, "/dhpp-driver", 30, 900, 5000, 5000)
	fakeProc(t, root, 12, "/csi-provisioner", 70, 7, 41000, 41000)
	u := s.Stop()

	tests := []struct {
		exe           string
		procs         int
		cpu           float64
		peakRSS, peak int64
	}{
		// 1.5 s (pid 10) + 0 (old pid 11) + 0.3 s (new pid 11).
		{"dhpp-driver", 3, 1.8, 50000 << 10, 50000 << 10},
		{"csi-provisioner", 1, 0.2, 41000 << 10, 41000 << 10},
	}
	for _, tt := range tests {
		got, ok := u[tt.exe]
		if !ok {
			t.Fatalf("no usage for %s in %+v", tt.exe, u)
		}
		if got.Processes != tt.procs || math.Abs(got.CPUSeconds-tt.cpu) > 1e-9 || got.PeakRSS != tt.peakRSS || got.PeakHWM != tt.peak {
			t.Errorf("%s: got %+v, want procs=%d cpu=%v peakRSS=%d hwm=%d", tt.exe, got, tt.procs, tt.cpu, tt.peakRSS, tt.peak)
		}
	}
	if _, ok := u["containerd"]; ok {
		t.Errorf("unrelated process counted: %+v", u)
	}
}
