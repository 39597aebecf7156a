package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. Linux
// fixes it at 100 on every architecture Kubernetes runs on; Go has no
// sysconf without cgo.
const clockTicks = 100

// ProcSample is what /proc says about one process at one moment.
type ProcSample struct {
	PID int
	// StartTicks (field 22 of stat) tells a restarted process from the old one.
	StartTicks uint64
	// CPUTicks is utime + stime.
	CPUTicks   uint64
	RSS, HWM   int64 // bytes (VmRSS, VmHWM)
	Executable string
}

// parseStat reads utime+stime and the start time from /proc/PID/stat. The
// command name (field 2) may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(s string) (cpu, start uint64, err error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("stat %q: no ')'", s)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime=14, stime=15, starttime=22.
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("stat: %d fields after the name, want >= 20", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, fmt.Errorf("stat: bad numbers utime=%q stime=%q start=%q", f[11], f[12], f[19])
	}
	return ut + st, start, nil
}

// parseStatus reads VmRSS and VmHWM (kB in the file) from /proc/PID/status.
func parseStatus(s string) (rss, hwm int64, err error) {
	var seen int
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("status %s: %q", k, v)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("status %s: %w", k, err)
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
		seen++
	}
	if seen != 2 {
		return 0, 0, fmt.Errorf("status: VmRSS/VmHWM missing (kernel thread or exited?)")
	}
	return rss, hwm, nil
}

// exeName is the base name of argv[0] from a NUL-separated cmdline. The
// containers' processes are visible from the host, and argv[0] (unlike comm)
// is not cut at 15 characters.
func exeName(cmdline []byte) string {
	if i := bytes.IndexByte(cmdline, 0); i >= 0 {
		cmdline = cmdline[:i]
	}
	return filepath.Base(string(cmdline))
}

// readProc samples one process under procRoot (normally /proc).
func readProc(procRoot string, pid int) (ProcSample, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return ProcSample{}, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return ProcSample{}, fmt.Errorf("read status of %d: %w", pid, err)
	}
	cpu, start, err := parseStat(string(stat))
	if err != nil {
		return ProcSample{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	rss, hwm, err := parseStatus(string(status))
	if err != nil {
		return ProcSample{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return ProcSample{PID: pid, StartTicks: start, CPUTicks: cpu, RSS: rss, HWM: hwm}, nil
}

// FindProcs returns the samples of every process under procRoot whose
// argv[0] base name is one of names.
func FindProcs(procRoot string, names map[string]bool) ([]ProcSample, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", procRoot, err)
	}
	var out []ProcSample
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil {
			continue // exited meanwhile
		}
		name := exeName(cl)
		if !names[name] {
			continue
		}
		s, err := readProc(procRoot, pid)
		if err != nil {
			continue // exited between the reads
		}
		s.Executable = name
		out = append(out, s)
	}
	return out, nil
}

// ProcUsage is one executable's use over a measured interval, over all its
// processes (one per node for dhpp's DaemonSet).
type ProcUsage struct {
	Executable string
	Processes  int
	// CPUSeconds is the CPU time all its processes used during the interval.
	CPUSeconds float64
	// PeakRSS is the largest VmRSS any one process had in a sample during
	// the interval; PeakHWM the largest VmHWM (peak since the process
	// started, which may predate the interval).
	PeakRSS, PeakHWM int64
}

type procKey struct {
	pid   int
	start uint64
}

type procTrack struct {
	first, last ProcSample
	maxRSS      int64
}

// Sampler follows processes by name from Start to Stop, sampling every
// interval so that the peak RSS within the run is seen.
type Sampler struct {
	procRoot string
	names    map[string]bool
	interval time.Duration

	mu      sync.Mutex
	tracks  map[procKey]*procTrack
	sampled bool // the first sample (the baseline) has been taken
	cancel  context.CancelFunc
	done    chan struct{}
}

// NewSampler follows the executables named in names under procRoot.
func NewSampler(procRoot string, names []string, interval time.Duration) *Sampler {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return &Sampler{procRoot: procRoot, names: m, interval: interval, tracks: map[procKey]*procTrack{}}
}

// Sample takes one sample of every matching process.
func (s *Sampler) Sample() error {
	ps, err := FindProcs(s.procRoot, s.names)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range ps {
		k := procKey{p.PID, p.StartTicks}
		t := s.tracks[k]
		if t == nil {
			// A process that started after the first sample started with
			// zero CPU; one present at the first sample counts from there.
			first := p
			if s.sampled {
				first.CPUTicks = 0
			}
			t = &procTrack{first: first}
			s.tracks[k] = t
		}
		t.last = p
		t.maxRSS = max(t.maxRSS, p.RSS)
	}
	s.sampled = true
	return nil
}

// Start samples now and then every interval until Stop.
func (s *Sampler) Start(ctx context.Context) error {
	if err := s.Sample(); err != nil {
		return err
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		tk := time.NewTicker(s.interval)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				_ = s.Sample() // a failed sample loses one point, not the run
			}
		}
	}()
	return nil
}

// Stop takes a last sample and returns the usage per executable.
func (s *Sampler) Stop() map[string]ProcUsage {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	_ = s.Sample()
	return s.Usage()
}

// Usage aggregates what was sampled so far.
func (s *Sampler) Usage() map[string]ProcUsage {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]ProcUsage{}
	for _, t := range s.tracks {
		name := t.last.Executable
		u := out[name]
		u.Executable = name
		u.Processes++
		u.CPUSeconds += float64(t.last.CPUTicks-t.first.CPUTicks) / clockTicks
		u.PeakRSS = max(u.PeakRSS, t.maxRSS)
		u.PeakHWM = max(u.PeakHWM, t.last.HWM)
		out[name] = u
	}
	return out
}

// RunningE2E returns the PIDs of e2e test runs under procRoot: a test binary
// e2e.test, or `go test` with the e2e build tag. The cluster is shared, and
// a benchmark next to them would skew both.
func RunningE2E(procRoot string) []int {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil || len(cl) == 0 {
			continue
		}
		if isE2E(strings.Split(strings.TrimRight(string(cl), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func isE2E(argv []string) bool {
	if filepath.Base(argv[0]) == "e2e.test" {
		return true
	}
	if filepath.Base(argv[0]) != "go" || len(argv) < 2 || argv[1] != "test" {
		return false
	}
	for i, a := range argv {
		if a == "-tags=e2e" || a == "--tags=e2e" || ((a == "-tags" || a == "--tags") && i+1 < len(argv) && strings.Contains(argv[i+1], "e2e")) || (strings.HasPrefix(a, "-tags=") && strings.Contains(a, "e2e")) {
			return true
		}
	}
	return false
}
