package scale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/dhpp-io/dhpp/test/e2e/bench"
	"github.com/dhpp-io/dhpp/test/e2e/cluster"
)

// Options configure one invocation.
type Options struct {
	// Levels are the numbers of claims (and about as many PVs), ascending.
	Levels []int
	// PendingEvery leaves every n-th claim Pending (no PV); 0: none.
	PendingEvery int
	// Settle bounds the wait after the objects are bound, before the
	// window: it ends earlier once the PVC and PV watch streams are quiet
	// (at most QuietEvents events in the last Quiet).
	Settle      time.Duration
	Quiet       time.Duration
	QuietEvents int64
	// Window is how long each level's steady state is sampled.
	Window   time.Duration
	Parallel int
	Timeout  time.Duration
	ProcRoot string
}

// Growth is what adding a level's objects cost.
type Growth struct {
	Created int
	// Duration is from the first create to all claims bound; Create is
	// the part until the last create returned.
	Duration, Create time.Duration
	// PVC and PV are what one watcher of each received.
	PVC, PV TallyValue
	// APIServer is the watch traffic to all watchers, by kind.
	APIServer map[string]WatchStats
	Procs     []ProcStats
}

// Steady is one level's steady-state window.
type Steady struct {
	Seconds   float64
	Procs     []ProcStats
	Requests  []ComponentRequests
	PVC, PV   TallyValue
	APIServer map[string]WatchStats
	// AuditLinesSkipped counts lines of the audit log that did not parse.
	AuditLinesSkipped int
}

// Level is the result at one population.
type Level struct {
	Claims, Bound, Pending, PVs int
	// ListBytes is the JSON size of all PVCs plus all PVs: what each
	// provisioner (and the resizer leader) downloads when it starts.
	ListBytes int64
	Grow      Growth
	// Settled is how long the watch streams took to fall quiet after the
	// last claim was bound.
	Settled time.Duration
	Steady  Steady
}

// RunWindow is the whole measurement, from the end of the install's
// rollout to the end of the last level: long enough to count the slow
// periodic requests (Lease polls every ~30 s, the orphan check every 10
// min) that one level's window catches only a few of.
type RunWindow struct {
	Seconds  float64
	Requests []ComponentRequests
	// Leases are the Lease requests of each leader-electing component.
	Leases map[string]LeaseRates
	// OrphanPeriod is dhpp-driver's --orphan-check-period; Held is how
	// long the last level was kept after its window so that every driver's
	// first periodic listing falls in the run (holdForOrphanCheck).
	OrphanPeriod, Held time.Duration
}

// Report is one invocation.
type Report struct {
	Started  time.Time
	Duration time.Duration
	// Total is the whole invocation: cluster up, install, levels, down.
	Total   time.Duration
	Machine string
	Command string
	Nodes   int
	// DaemonSetArgs are the node DaemonSet's arguments as deployed.
	DaemonSetArgs map[string][]string
	// LoadBefore and LoadAfter are /proc/loadavg at the start and the end:
	// the machine is shared, and CPU figures depend on it.
	LoadBefore, LoadAfter string
	Levels                []Level
	Run                   RunWindow
}

// Run measures every level on the local cluster with dhpp installed as
// users install it (writeShippedOverlay). A cluster it brings up (with the
// audit log) it takes down at the end, which is faster than deleting
// thousands of objects one by one; in a cluster it found running it
// deletes its objects and re-installs the local overlay the e2e tests
// expect.
func Run(ctx context.Context, opt Options, out io.Writer) (*Report, error) {
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		return nil, err
	}
	cfg.InstallDHPP, cfg.Audit, cfg.Overlay = true, true, filepath.Join(cfg.RepoRoot, ShippedDir)
	if err := writeShippedOverlay(cfg.RepoRoot, cfg.Overlay); err != nil {
		return nil, fmt.Errorf("write the shipped overlay: %w", err)
	}
	loadBefore := loadavg()
	err = cluster.Up(ctx, cfg, out)
	startedHere := err == nil
	switch {
	case errors.Is(err, cluster.ErrAlreadyRunning):
		// Apply this checkout's manifests: the run measures its flags.
		if err := cluster.InstallDHPP(ctx, cfg, out); err != nil {
			return nil, fmt.Errorf("install dhpp: %w", err)
		}
	case err != nil:
		// Up leaves a failed bring-up's state for Down to clean.
		if derr := cluster.Down(context.Background(), cfg, out); derr != nil {
			fmt.Fprintf(out, "down after the failed up: %v\n", derr)
		}
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	c, err := newClient(cfg.KubeconfigPath())
	if err != nil {
		return nil, err
	}
	defer func() {
		// Not ctx: an interrupted run still cleans up.
		cctx, cancel := context.WithTimeout(context.Background(), opt.Timeout)
		defer cancel()
		if err := leaveCluster(cctx, cfg, c, opt, startedHere, out); err != nil {
			fmt.Fprintf(out, "cleanup: %v\n", err)
		}
	}()
	if err := checkAudit(ctx, c, cfg.AuditLogPath()); err != nil {
		return nil, err
	}
	if err := checkProcs(opt.ProcRoot, len(cfg.Nodes)); err != nil {
		return nil, err
	}
	runFrom, err := fileSize(cfg.AuditLogPath())
	if err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now(), Machine: machine(), Nodes: len(cfg.Nodes), LoadBefore: loadBefore}
	if rep.DaemonSetArgs, err = daemonSetArgs(ctx, c); err != nil {
		return nil, err
	}
	if !startedHere {
		if err := cleanupAndWait(ctx, c, opt); err != nil {
			return nil, fmt.Errorf("leftovers of an earlier run: %w", err)
		}
	}
	if err := setup(ctx, c); err != nil {
		return rep, err
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var pvcT, pvT Tally
	go watchTally(wctx, c, true, &pvcT)
	go watchTally(wctx, c, false, &pvT)

	have := 0
	for _, n := range opt.Levels {
		lv, err := runLevel(ctx, c, cfg, opt, have, n, &pvcT, &pvT, out)
		rep.Levels = append(rep.Levels, lv)
		if err != nil {
			rep.Duration = time.Since(rep.Started)
			return rep, fmt.Errorf("level %d: %w", n, err)
		}
		have = n
	}
	held, err := holdForOrphanCheck(ctx, c, rep.DaemonSetArgs["dhpp-driver"], out)
	if err != nil {
		rep.Duration = time.Since(rep.Started)
		return rep, fmt.Errorf("hold for the orphan check: %w", err)
	}
	period, _ := orphanPeriod(rep.DaemonSetArgs["dhpp-driver"]) // parsed by the hold
	end := time.Now()
	rep.Duration, rep.LoadAfter = end.Sub(rep.Started), loadavg()
	counts, _, err := countAudit(cfg.AuditLogPath(), runFrom, rep.Started, end)
	if err != nil {
		return rep, err
	}
	secs := end.Sub(rep.Started).Seconds()
	rep.Run = RunWindow{Seconds: secs, Requests: ByComponent(counts), Leases: map[string]LeaseRates{}, OrphanPeriod: period, Held: held}
	for _, comp := range []string{"csi-resizer", "dhpp-controller"} {
		rep.Run.Leases[comp] = leaseRates(counts, comp, secs)
	}
	return rep, nil
}

// leaveCluster takes down a cluster the run brought up, or else deletes the
// run's objects and puts the local overlay back.
func leaveCluster(ctx context.Context, cfg cluster.Config, c kubernetes.Interface, opt Options, startedHere bool, out io.Writer) error {
	if startedHere {
		fmt.Fprintln(out, "taking the cluster down (the run brought it up)")
		return cluster.Down(ctx, cfg, out)
	}
	fmt.Fprintln(out, "deleting the benchmark's objects and re-installing the local overlay")
	if err := cleanupAndWait(ctx, c, opt); err != nil {
		return err
	}
	cfg.Overlay = ""
	return cluster.InstallDHPP(ctx, cfg, out)
}

func runLevel(ctx context.Context, c kubernetes.Interface, cfg cluster.Config, opt Options, have, n int, pvcT, pvT *Tally, out io.Writer) (Level, error) {
	pop := Population{N: n, PendingEvery: opt.PendingEvery}
	lv := Level{Claims: n}
	lv.Bound, lv.Pending = pop.Counts()
	lv.PVs = lv.Bound

	fmt.Fprintf(out, "level %d: creating %d claims (%d bound to static PVs, %d Pending)\n", n, n-have, lv.Bound, lv.Pending)
	g0, err := snapshot(ctx, c, opt.ProcRoot, pvcT, pvT)
	if err != nil {
		return lv, err
	}
	if err := grow(ctx, c, pop, have, opt.Parallel); err != nil {
		return lv, err
	}
	created := time.Now()
	if err := waitBound(ctx, c, lv.Bound, opt.Timeout); err != nil {
		return lv, err
	}
	g1, err := snapshot(ctx, c, opt.ProcRoot, pvcT, pvT)
	if err != nil {
		return lv, err
	}
	lv.Grow = Growth{Created: n - have, Duration: g1.at.Sub(g0.at), Create: created.Sub(g0.at), PVC: g1.pvc.Sub(g0.pvc), PV: g1.pv.Sub(g0.pv),
		APIServer: subStats(g1.api, g0.api), Procs: procWindow(g0.procs, g1.procs, g1.at.Sub(g0.at).Seconds())}
	fmt.Fprintf(out, "level %d: created in %s, bound after %s; settling\n", n, lv.Grow.Create.Round(time.Second), lv.Grow.Duration.Round(time.Second))
	if lv.ListBytes, err = listBytes(ctx, c); err != nil {
		return lv, err
	}
	if lv.Settled, err = settle(ctx, pvcT, pvT, opt); err != nil {
		return lv, err
	}

	fmt.Fprintf(out, "level %d: quiet after %s; sampling %s\n", n, lv.Settled.Round(time.Second), opt.Window)
	auditFrom, err := fileSize(cfg.AuditLogPath())
	if err != nil {
		return lv, err
	}
	s0, err := snapshot(ctx, c, opt.ProcRoot, pvcT, pvT)
	if err != nil {
		return lv, err
	}
	if err := sleep(ctx, opt.Window); err != nil {
		return lv, err
	}
	s1, err := snapshot(ctx, c, opt.ProcRoot, pvcT, pvT)
	if err != nil {
		return lv, err
	}
	secs := s1.at.Sub(s0.at).Seconds()
	lv.Steady = Steady{Seconds: secs, Procs: procWindow(s0.procs, s1.procs, secs), PVC: s1.pvc.Sub(s0.pvc), PV: s1.pv.Sub(s0.pv),
		APIServer: subStats(s1.api, s0.api)}
	// Requests still being logged when the window closed are in the file
	// within a moment (the log backend writes synchronously).
	time.Sleep(2 * time.Second)
	counts, bad, err := countAudit(cfg.AuditLogPath(), auditFrom, s0.at, s1.at)
	if err != nil {
		return lv, err
	}
	lv.Steady.Requests, lv.Steady.AuditLinesSkipped = ByComponent(counts), bad
	return lv, nil
}

// point is everything read at one moment.
type point struct {
	at      time.Time
	procs   []bench.ProcSample
	pvc, pv TallyValue
	api     map[string]WatchStats
}

func snapshot(ctx context.Context, c kubernetes.Interface, procRoot string, pvcT, pvT *Tally) (point, error) {
	p := point{at: time.Now(), pvc: pvcT.value(), pv: pvT.value()}
	var err error
	if p.procs, err = sampleProcs(procRoot); err != nil {
		return p, err
	}
	raw, err := c.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return p, fmt.Errorf("apiserver metrics: %w", err)
	}
	p.api, err = ParseWatchStats(strings.NewReader(string(raw)))
	return p, err
}

func subStats(a, b map[string]WatchStats) map[string]WatchStats {
	out := map[string]WatchStats{}
	for k, v := range a {
		out[k] = v.Sub(b[k])
	}
	return out
}

// checkProcs expects one process of each per-node component on every node:
// a sampler that finds none would report a cost of zero.
func checkProcs(procRoot string, nodes int) error {
	ps, err := sampleProcs(procRoot)
	if err != nil {
		return err
	}
	n := map[string]int{}
	for _, p := range ps {
		n[p.Executable]++
	}
	for c := range perNode {
		if n[c] != nodes {
			return fmt.Errorf("found %d %s processes in the cluster's cgroups, want one per node (%d)", n[c], c, nodes)
		}
	}
	return nil
}

// waitBound waits until want claims of the namespace are Bound.
func waitBound(ctx context.Context, c kubernetes.Interface, want int, timeout time.Duration) error {
	last := -1
	// Every 5 s: each poll lists the namespace's claims, itself load on the
	// apiserver the sidecars share.
	err := wait.PollUntilContextTimeout(ctx, 5*time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		l, err := c.CoreV1().PersistentVolumeClaims(Namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return false, nil
		}
		last = 0
		for _, pvc := range l.Items {
			if pvc.Status.Phase == corev1.ClaimBound {
				last++
			}
		}
		return last >= want, nil
	})
	if err != nil {
		return fmt.Errorf("%d of %d claims bound: %w", last, want, err)
	}
	return nil
}

// listBytes is the JSON size of every PVC and PV in the cluster.
func listBytes(ctx context.Context, c kubernetes.Interface) (int64, error) {
	pvcs, err := c.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return 0, err
	}
	pvs, err := c.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return 0, err
	}
	a, err := json.Marshal(pvcs)
	if err != nil {
		return 0, err
	}
	b, err := json.Marshal(pvs)
	return int64(len(a) + len(b)), err
}

func cleanupAndWait(ctx context.Context, c kubernetes.Interface, opt Options) error {
	if err := cleanup(ctx, c, opt.Parallel); err != nil {
		return err
	}
	sel := metav1.ListOptions{LabelSelector: LabelKey + "=" + LabelValue, Limit: 1}
	return wait.PollUntilContextTimeout(ctx, 2*time.Second, opt.Timeout, true, func(ctx context.Context) (bool, error) {
		pvs, err := c.CoreV1().PersistentVolumes().List(ctx, sel)
		if err != nil {
			return false, nil
		}
		_, err = c.CoreV1().Namespaces().Get(ctx, Namespace, metav1.GetOptions{})
		return len(pvs.Items) == 0 && err != nil, nil
	})
}

// checkAudit makes one request and expects the audit log to grow: a cluster
// brought up without Config.Audit has no (or a stale) log.
func checkAudit(ctx context.Context, c kubernetes.Interface, path string) error {
	before, err := fileSize(path)
	if err != nil {
		return fmt.Errorf("%w: the running cluster has no audit log; take it down (dhpp-cluster down) and run again, or bring it up with --audit", err)
	}
	if _, err := c.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		after, err := fileSize(path)
		return err == nil && after > before, nil
	})
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func countAudit(path string, offset int64, from, to time.Time) (map[ReqKey]int, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < offset {
		offset = 0 // rotated meanwhile
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, 0, err
	}
	return CountRequests(f, from, to)
}

// daemonSetArgs reads the deployed node DaemonSet's container arguments.
func daemonSetArgs(ctx context.Context, c kubernetes.Interface) (map[string][]string, error) {
	ds, err := c.AppsV1().DaemonSets(bench.DHPPNamespace).Get(ctx, "dhpp-node", metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("dhpp-node DaemonSet: %w", err)
	}
	out := map[string][]string{}
	for _, ct := range ds.Spec.Template.Spec.Containers {
		out[ct.Name] = ct.Args
	}
	return out, nil
}

func newClient(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 300, 600
	rc.UserAgent = "dhpp-scale"
	return kubernetes.NewForConfig(rc)
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// machine describes the host.
func machine() string {
	return fmt.Sprintf("%d CPUs", runtime.NumCPU())
}

// loadavg is the 1, 5 and 15 min load averages.
func loadavg() string {
	load, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(load))
	if len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return ""
}
