package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/dhpp-io/dhpp/test/e2e/cluster"
)

// Provisioner is one contender: its StorageClass and the host processes
// whose CPU and memory count as its cost.
type Provisioner struct {
	Name         string
	StorageClass string
	Executables  []string
}

// Provisioners are the known contenders by name.
var Provisioners = map[string]Provisioner{
	"dhpp":       {Name: "dhpp", StorageClass: StorageClassDHPP, Executables: []string{"dhpp-driver", "csi-provisioner"}},
	"local-path": {Name: "local-path", StorageClass: "local-path", Executables: []string{"local-path-provisioner"}},
}

// dhpp's shipped StorageClass and namespace (deploy/kustomize/base).
const (
	StorageClassDHPP = "hostpath-dynamic"
	DHPPNamespace    = "dhpp-system"
)

// LocalPathDir is the kustomization that installs local-path-provisioner.
const LocalPathDir = "deploy/bench/local-path"

// BusyboxImage is the cluster's locally built busybox (hack/images).
const BusyboxImage = "dhpp.local/busybox:latest"

// Options configure one invocation.
type Options struct {
	Ns           []int
	Provisioners []string
	Size         string
	// Timeout bounds each phase of each round.
	Timeout  time.Duration
	Parallel int
	// ChartPath and JSONPath receive the chart and the raw results ("" skips).
	ChartPath, JSONPath string
	// KeepLocalPath leaves local-path-provisioner installed afterwards.
	KeepLocalPath bool
	// Settle is the pause between rounds, so one round's trash purge and
	// capacity polls do not land in the next one's numbers.
	Settle time.Duration
}

// Result is one provisioner at one N.
type Result struct {
	Provisioner string
	N           int
	Bound       Summary
	Running     Summary
	PVDeleted   Summary
	// The stages of PVC→Bound, from the claim's create: node selected by
	// the scheduler, PV created by the provisioner.
	NodeSelected, PVCreated Summary
	// The first stage of PV deletion, from the claim's delete: the PV
	// binder marking the PV Released.
	PVReleased Summary
	// Volumes per second: N over the span from the first create to the
	// last Bound, and from the first claim delete to the last PV gone.
	BindThroughput, DeleteThroughput float64
	BindSpan, RunSpan, DeleteSpan    time.Duration
	PodTeardown                      time.Duration
	Usage                            []ProcUsage
	Nodes                            map[string]int
	// Raw per-claim latencies, for the chart and the JSON.
	BoundRaw, RunningRaw, DeletedRaw []time.Duration
	Err                              string
}

// Report is everything one invocation measured.
type Report struct {
	Started  time.Time
	Duration time.Duration
	Machine  string
	Command  string
	Size     string
	Results  []Result
}

// Run brings the cluster up (or reuses it), installs what the provisioners
// need, runs every round, and cleans up after itself.
func Run(ctx context.Context, opt Options, out io.Writer) (*Report, error) {
	for _, p := range opt.Provisioners {
		if _, ok := Provisioners[p]; !ok {
			return nil, fmt.Errorf("unknown provisioner %q (known: dhpp, local-path)", p)
		}
	}
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		return nil, err
	}
	cfg.InstallDHPP = true
	if err := cluster.Up(ctx, cfg, out); err != nil && !errors.Is(err, cluster.ErrAlreadyRunning) {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	client, err := newClient(cfg.KubeconfigPath())
	if err != nil {
		return nil, err
	}
	if _, err := client.AppsV1().DaemonSets(DHPPNamespace).Get(ctx, "dhpp-node", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		fmt.Fprintln(out, "cluster runs without dhpp: installing it")
		if err := cluster.InstallDHPP(ctx, cfg, out); err != nil {
			return nil, fmt.Errorf("install dhpp: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("look up dhpp's DaemonSet: %w", err)
	}
	if contains(opt.Provisioners, "local-path") {
		if err := installLocalPath(ctx, cfg, client, out); err != nil {
			return nil, err
		}
		if !opt.KeepLocalPath {
			defer uninstallLocalPath(cfg, out)
		}
	}
	nodes, err := readyNodes(ctx, client)
	if err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now(), Machine: machine(), Size: opt.Size}
	for _, name := range opt.Provisioners {
		p := Provisioners[name]
		for _, n := range opt.Ns {
			if len(rep.Results) > 0 && opt.Settle > 0 {
				time.Sleep(opt.Settle)
			}
			r := runRound(ctx, client, p, n, nodes, opt, out)
			rep.Results = append(rep.Results, r)
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
		}
	}
	rep.Duration = time.Since(rep.Started)
	return rep, nil
}

func runRound(ctx context.Context, client kubernetes.Interface, p Provisioner, n int, nodes []string, opt Options, out io.Writer) Result {
	ns := fmt.Sprintf("bench-%s-%d", p.Name, n)
	r := Result{Provisioner: p.Name, N: n}
	fmt.Fprintf(out, "=== %s, N=%d (namespace %s)\n", p.Name, n, ns)
	if err := createNamespace(ctx, client, ns); err != nil {
		r.Err = err.Error()
		return r
	}
	defer func() {
		if err := deleteNamespace(client, ns, opt.Timeout); err != nil {
			klog.ErrorS(err, "namespace cleanup", "namespace", ns)
		}
	}()
	sampler := NewSampler("/proc", p.Executables, 250*time.Millisecond)
	if err := sampler.Start(ctx); err != nil {
		r.Err = err.Error()
		return r
	}
	w := Workload{Client: client, Namespace: ns, StorageClass: p.StorageClass, N: n, Nodes: nodes,
		Size: opt.Size, Image: BusyboxImage, Parallel: opt.Parallel, Timeout: opt.Timeout}
	t, err := w.Run(ctx)
	usage := sampler.Stop()
	for _, e := range p.Executables {
		if u, ok := usage[e]; ok {
			r.Usage = append(r.Usage, u)
		} else {
			r.Usage = append(r.Usage, ProcUsage{Executable: e})
		}
	}
	if err != nil {
		r.Err = err.Error()
		fmt.Fprintf(out, "    error: %v\n", err)
	}
	if t != nil {
		r.BoundRaw, r.RunningRaw, r.DeletedRaw = nonZero(t.Bound), nonZero(t.Running), nonZero(t.PVDeleted)
		r.Bound, r.Running, r.PVDeleted = Summarize(r.BoundRaw), Summarize(r.RunningRaw), Summarize(r.DeletedRaw)
		r.NodeSelected, r.PVCreated = Summarize(nonZero(t.NodeSelected)), Summarize(nonZero(t.PVCreated))
		r.PVReleased = Summarize(nonZero(t.PVReleased))
		r.BindSpan, r.RunSpan, r.DeleteSpan, r.PodTeardown = t.BindSpan, t.RunSpan, t.DeleteSpan, t.PodTeardown
		r.BindThroughput = Throughput(r.Bound.Count, t.BindSpan)
		r.DeleteThroughput = Throughput(r.PVDeleted.Count, t.DeleteSpan)
		r.Nodes = t.Nodes
	}
	fmt.Fprintf(out, "    bound %d/%d p50 %s p95 %s max %s; running p50 %s; PV deleted p50 %s; %.2f vol/s\n",
		r.Bound.Count, n, fmtDur(r.Bound.P50), fmtDur(r.Bound.P95), fmtDur(r.Bound.Max), fmtDur(r.Running.P50), fmtDur(r.PVDeleted.P50), r.BindThroughput)
	return r
}

// nonZero drops the claims whose event never came (they are counted by
// Summary.Count falling short of N, and by the round's error).
func nonZero(ds []time.Duration) []time.Duration {
	var out []time.Duration
	for _, d := range ds {
		if d > 0 {
			out = append(out, d)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func newClient(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	// The benchmark's own client must not be the bottleneck it measures.
	rc.QPS, rc.Burst = 200, 400
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return c, nil
}

func readyNodes(ctx context.Context, c kubernetes.Interface) ([]string, error) {
	list, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var out []string
	for _, n := range list.Items {
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				out = append(out, n.Name)
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no Ready nodes")
	}
	return out, nil
}

func createNamespace(ctx context.Context, c kubernetes.Interface, ns string) error {
	// A namespace left by an interrupted run is removed first.
	if err := deleteNamespace(c, ns, 5*time.Minute); err != nil {
		return err
	}
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return nil
}

// deleteNamespace deletes ns and waits until it is gone. It uses its own
// context so that cleanup still runs after the caller's was cancelled.
func deleteNamespace(c kubernetes.Interface, ns string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	err = wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("namespace %s not gone within %s: %w", ns, timeout, err)
	}
	return nil
}

// Prepare builds what the benchmark installs (the local-path-provisioner
// tool, cached, and its image) without touching the cluster, and returns
// the image tarball.
func Prepare(ctx context.Context) (string, error) {
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		return "", err
	}
	return prepareLocalPath(ctx, cfg)
}

func prepareLocalPath(ctx context.Context, cfg cluster.Config) (string, error) {
	if _, err := cluster.LocalPathTool().Build(ctx, cfg.RepoRoot, filepath.Join(cfg.CacheDir, "bin")); err != nil {
		return "", fmt.Errorf("build local-path-provisioner: %w", err)
	}
	// BuildImages insists on busybox too (it is cheap and already imported).
	files, err := cluster.BuildImages(ctx, cfg, "busybox", "local-path-provisioner")
	if err != nil {
		return "", fmt.Errorf("local-path-provisioner image: %w", err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "local-path-provisioner.tar") {
			return f, nil
		}
	}
	return "", fmt.Errorf("hack/images built no local-path-provisioner image (binary %s missing?)", cfg.LocalPathBin())
}

// installLocalPath prepares local-path-provisioner, imports its image into
// every node's containerd, applies deploy/bench/local-path and waits for
// the Deployment.
func installLocalPath(ctx context.Context, cfg cluster.Config, c kubernetes.Interface, out io.Writer) error {
	start := time.Now()
	img, err := prepareLocalPath(ctx, cfg)
	if err != nil {
		return err
	}
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range nodes.Items {
		sock := filepath.Join(cluster.RunDir, n.Name, "containerd.sock")
		if err := runCmd(ctx, "ctr", "--address", sock, "-n", "k8s.io", "images", "import", img); err != nil {
			return fmt.Errorf("import %s on %s: %w", filepath.Base(img), n.Name, err)
		}
	}
	if _, err := cfg.Kubectl(ctx, "apply", "-k", filepath.Join(cfg.RepoRoot, LocalPathDir)); err != nil {
		return fmt.Errorf("apply %s: %w", LocalPathDir, err)
	}
	if _, err := cfg.Kubectl(ctx, "-n", "bench-local-path-storage", "rollout", "status", "deployment/local-path-provisioner", "--timeout=3m"); err != nil {
		return fmt.Errorf("local-path-provisioner not ready: %w", err)
	}
	fmt.Fprintf(out, "local-path-provisioner %s installed in %s\n", cluster.LocalPathVersion, time.Since(start).Round(time.Second))
	return nil
}

func uninstallLocalPath(cfg cluster.Config, out io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := cfg.Kubectl(ctx, "delete", "-k", filepath.Join(cfg.RepoRoot, LocalPathDir), "--ignore-not-found", "--wait"); err != nil {
		klog.ErrorS(err, "uninstall local-path-provisioner")
		return
	}
	fmt.Fprintln(out, "local-path-provisioner removed")
}

// machine describes the host for the report: CPU model, cores, memory.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if total, err := parseMemTotal(string(b)); err == nil {
			mem = fmt.Sprintf(", %.0f GiB", float64(total)/(1<<30))
		}
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			load = ", load " + strings.Join(f[:3], " ")
		}
	}
	return fmt.Sprintf("%d cores %s%s%s", runtime.NumCPU(), model, mem, load)
}

// parseMemTotal reads MemTotal (bytes) from /proc/meminfo.
func parseMemTotal(s string) (int64, error) {
	for _, l := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == "MemTotal" {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				n, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("MemTotal: %w", err)
				}
				return n << 10, nil
			}
		}
	}
	return 0, errors.New("meminfo: no MemTotal")
}

func runCmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
