package scale

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dhpp-io/dhpp/test/e2e/bench"
)

// Components are the per-node containers of dhpp's DaemonSet, by the name
// of their executable, and the cluster-side controller.
var Components = []string{"dhpp-driver", "csi-provisioner", "csi-resizer", "csi-snapshotter", "dhpp-controller"}

// sampleProcs samples every process of the components that runs on a node
// of the cluster. Other processes of the same name on this machine (a
// driver under test/crash, another helper's run) are not the cluster's.
func sampleProcs(procRoot string) ([]bench.ProcSample, error) {
	names := map[string]bool{}
	for _, c := range Components {
		names[c] = true
	}
	ps, err := bench.FindProcs(procRoot, names)
	if err != nil {
		return nil, err
	}
	out := ps[:0]
	for _, p := range ps {
		b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(p.PID), "cgroup"))
		if err == nil && nodeOfCgroup(string(b)) != "" {
			out = append(out, p)
		}
	}
	return out, nil
}

// nodeOfCgroup is the cluster node whose cgroup subtree a process is in:
// every node's kubelet runs its pods under /<node name> (test/e2e/cluster),
// named dhpp-node-N. "" for a process outside the cluster.
func nodeOfCgroup(cgroup string) string {
	for _, line := range strings.Split(cgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		first, _, _ := strings.Cut(strings.TrimPrefix(parts[2], "/"), "/")
		if strings.HasPrefix(first, "dhpp-node-") {
			return first
		}
	}
	return ""
}

// ProcStats is one component's use over a window, over its processes.
type ProcStats struct {
	Component string
	Processes int
	// RSS at the end of the window: mean and largest over the processes.
	RSSMean, RSSMax int64
	// CPU in millicores over the window: mean and largest per process.
	CPUMean, CPUMax float64
}

// procWindow turns two samplings (window start and end, seconds apart) into
// per-component stats. Processes that restarted in between count from zero.
func procWindow(first, last []bench.ProcSample, seconds float64) []ProcStats {
	type key struct {
		pid   int
		start uint64
	}
	base := map[key]uint64{}
	for _, p := range first {
		base[key{p.PID, p.StartTicks}] = p.CPUTicks
	}
	by := map[string]*ProcStats{}
	var sumRSS = map[string]int64{}
	var sumCPU = map[string]float64{}
	for _, p := range last {
		s := by[p.Executable]
		if s == nil {
			s = &ProcStats{Component: p.Executable}
			by[p.Executable] = s
		}
		ticks := p.CPUTicks - base[key{p.PID, p.StartTicks}]
		mc := float64(ticks) / 100 / seconds * 1000 // USER_HZ is 100
		s.Processes++
		s.RSSMax = max(s.RSSMax, p.RSS)
		s.CPUMax = max(s.CPUMax, mc)
		sumRSS[p.Executable] += p.RSS
		sumCPU[p.Executable] += mc
	}
	var out []ProcStats
	for _, c := range Components {
		s := by[c]
		if s == nil {
			continue
		}
		s.RSSMean = sumRSS[c] / int64(s.Processes)
		s.CPUMean = sumCPU[c] / float64(s.Processes)
		out = append(out, *s)
	}
	return out
}
