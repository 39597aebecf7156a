package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// Packages are the Debian packages the cluster runs or builds images from.
var Packages = []string{"containerd", "runc", "etcd-server", "containernetworking-plugins", "busybox-static",
	"iptables", "conntrack", "socat", "util-linux", "mount", "e2fsprogs", "xfsprogs", "btrfs-progs", "gcc", "libc6-dev", "iproute2"}

// phases prints how long each step of up or down took.
type phases struct {
	out   io.Writer
	start time.Time
	times []string
}

func (p *phases) do(name string, f func() error) error {
	t := time.Now()
	fmt.Fprintf(p.out, "==> %s\n", name)
	err := f()
	d := time.Since(t).Round(100 * time.Millisecond)
	p.times = append(p.times, fmt.Sprintf("%-26s %8s", name, d))
	if err != nil {
		fmt.Fprintf(p.out, "    %s FAILED after %s\n", name, d)
		return fmt.Errorf("%s: %w", name, err)
	}
	fmt.Fprintf(p.out, "    %s took %s\n", name, d)
	return nil
}

func (p *phases) summary(what string) {
	fmt.Fprintf(p.out, "\n%s timings:\n", what)
	for _, t := range p.times {
		fmt.Fprintf(p.out, "  %s\n", t)
	}
	fmt.Fprintf(p.out, "  %-26s %8s\n", "total", time.Since(p.start).Round(100*time.Millisecond))
}

// EnsurePackages installs the missing Debian packages with apt-get.
func EnsurePackages(ctx context.Context) error {
	var missing []string
	for _, p := range Packages {
		out, err := run(ctx, "dpkg-query", "-W", "-f=${Status}", p)
		if err != nil || !strings.Contains(out, "install ok installed") {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	klog.InfoS("installing Debian packages", "packages", missing)
	install := func() error {
		// Lock timeout: other apt users on this machine hold the lock briefly.
		args := append([]string{"-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "--no-install-recommends"}, missing...)
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(hostEnv(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install %s: %w\n%s", strings.Join(missing, " "), err, tailLines(string(out), 15))
		}
		return nil
	}
	if err := install(); err != nil {
		// A fresh machine has no package lists yet.
		if _, uerr := run(ctx, "apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"); uerr != nil {
			return fmt.Errorf("%w; apt-get update: %v", err, uerr)
		}
		return install()
	}
	return nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// BuildImages runs hack/images into the output directory and returns the
// tarballs it wrote; only, if given, limits it to those images (by name).
func BuildImages(ctx context.Context, cfg Config, only ...string) ([]string, error) {
	args := []string{"run", "./hack/images", "-out", cfg.imagesDir()}
	if len(only) > 0 {
		args = append(args, "-only", strings.Join(only, ","))
	}
	// Sidecar images are built when their tools are (up always builds them).
	for flag, bin := range map[string]string{
		"-provisioner": cfg.provisionerBin(), "-resizer": cfg.resizerBin(),
		"-snapshotter": cfg.snapshotterBin("csi-snapshotter"), "-snapshot-controller": cfg.snapshotterBin("snapshot-controller"),
	} {
		if _, err := os.Stat(bin); err == nil {
			args = append(args, flag, bin)
		}
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = cfg.RepoRoot
	cmd.Env = append(hostEnv(), "GOTOOLCHAIN=local")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("hack/images: %w\n%s", err, stderr.String())
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		klog.Info(s)
	}
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Split(line, "\t"); len(f) == 3 {
			files = append(files, f[2])
		}
	}
	if len(files) < 2 {
		return nil, fmt.Errorf("hack/images built only %v; pause and busybox are required", files)
	}
	return files, nil
}

// lockPath is the machine-wide lock of the cluster harness. The cluster's
// names (dhpp-br0, dhpp-node-N, /mnt/dhpp-data, ...) are machine-wide, so
// the lock is too; it lives in the tool cache, which persists anyway.
func lockPath() string {
	dir := os.Getenv("DHPP_CACHE")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = "/root"
		}
		dir = filepath.Join(home, ".cache", "dhpp")
	}
	return filepath.Join(dir, "cluster.lock")
}

// lock waits (up to timeout) for the machine-wide harness lock, so that two
// up/down commands, or a test and a person, never build or tear down
// clusters at the same time. The kernel releases it if the process dies.
func lock(ctx context.Context, out io.Writer, timeout time.Duration) (unlock func(), err error) {
	path := lockPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for said := false; ; said = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s (another dhpp-cluster up/down or cluster test is running): %w", path, err)
		}
		if !said {
			fmt.Fprintf(out, "waiting for another dhpp-cluster up/down or cluster test (lock %s)\n", path)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ErrAlreadyRunning is returned by Up when a live cluster is found.
var ErrAlreadyRunning = errors.New("cluster is already running")

// locked runs f as root under the machine-wide harness lock, so up, down
// and the node test never interleave.
func locked(ctx context.Context, cfg Config, out io.Writer, f func(context.Context, Config, io.Writer) error) error {
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	unlock, err := lock(ctx, out, 30*time.Minute)
	if err != nil {
		return err
	}
	defer unlock()
	return f(ctx, cfg, out)
}

// Up brings the cluster up and prints each phase's duration to out. On a
// failure it leaves the state on disk; Down cleans it up.
func Up(ctx context.Context, cfg Config, out io.Writer) error {
	return locked(ctx, cfg, out, up)
}

func up(ctx context.Context, cfg Config, out io.Writer) error {
	st, err := loadState(cfg.statePath())
	if err != nil {
		return err
	}
	if st != nil {
		sameVersion := st.KubernetesVersion == cfg.KubernetesVersion
		if st.Ready && allAlive(st) && len(st.Nodes) == len(cfg.Nodes) && sameVersion {
			fmt.Fprintf(out, "cluster is already running (Kubernetes %s, started %s); kubeconfig: %s\n",
				st.KubernetesVersion, st.StartedAt.Format(time.RFC3339), cfg.KubeconfigPath())
			return ErrAlreadyRunning
		}
		switch {
		case st.Ready && allAlive(st) && !sameVersion:
			fmt.Fprintf(out, "the running cluster runs Kubernetes %q, %s is wanted (DHPP_K8S_VERSION): tearing it down first\n", st.KubernetesVersion, cfg.KubernetesVersion)
		case st.Ready && allAlive(st):
			fmt.Fprintf(out, "the running cluster has %d nodes, %d are wanted (DHPP_E2E_NODES): tearing it down first\n", len(st.Nodes), len(cfg.Nodes))
		default:
			fmt.Fprintln(out, "found the state of an earlier, incomplete cluster: tearing it down first")
		}
		if err := down(ctx, cfg, out); err != nil {
			return fmt.Errorf("clean up earlier cluster: %w", err)
		}
	}
	if err := checkNoLeftovers(ctx, cfg); err != nil {
		return err
	}

	ph := &phases{out: out, start: time.Now()}
	defer ph.summary("up")
	if !cfg.SkipPackages {
		if err := ph.do("debian packages", func() error { return EnsurePackages(ctx) }); err != nil {
			return err
		}
	}
	if err := ph.do("tools (go build, cached)", func() error { return BuildTools(ctx, cfg) }); err != nil {
		return err
	}
	for _, d := range []string{cfg.OutputDir, cfg.logDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	var images []string
	if err := ph.do("images", func() (err error) {
		images, err = BuildImages(ctx, cfg)
		if err != nil && !cfg.InstallDHPP {
			// The driver is written in parallel with this harness: a
			// driver that does not build must not keep the cluster down.
			fmt.Fprintf(out, "    WARNING: %v\n    continuing without the dhpp-driver image\n", err)
			images, err = BuildImages(ctx, cfg, "pause", "busybox", "csi-provisioner", "csi-resizer", "csi-snapshotter", "snapshot-controller")
		}
		return err
	}); err != nil {
		return err
	}
	st = &State{StartedAt: time.Now(), KubernetesVersion: cfg.KubernetesVersion, path: cfg.statePath()}
	if err := st.save(); err != nil {
		return err
	}
	var pki *PKI
	if err := ph.do("pki and kubeconfig", func() error {
		var err error
		if pki, err = NewPKI(cfg.pkiDir(), cfg.Nodes); err != nil {
			return err
		}
		return pki.WriteKubeconfig(cfg.KubeconfigPath(), "admin")
	}); err != nil {
		return err
	}
	if err := ph.do("host network", func() error {
		if err := ensureHostDirs(st); err != nil {
			return err
		}
		err := setupHostNetwork(ctx, st)
		if serr := st.save(); err == nil {
			err = serr
		}
		return err
	}); err != nil {
		return err
	}
	if err := ph.do("control plane", func() error { return startControlPlane(ctx, cfg, pki, st) }); err != nil {
		return err
	}
	if err := ph.do("nodes: netns, disk, containerd, images", func() error {
		for _, n := range cfg.Nodes {
			st.Nodes = append(st.Nodes, NodeState{Spec: n})
		}
		errs := make([]error, len(cfg.Nodes))
		var wg sync.WaitGroup
		for i := range cfg.Nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = startNodeBase(ctx, cfg, st, i, images)
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}); err != nil {
		return err
	}
	if err := ph.do("nodes: kubelet, CNI, kube-proxy", func() error {
		for i := range st.Nodes {
			if err := startKubelet(ctx, cfg, pki, st, &st.Nodes[i]); err != nil {
				return err
			}
		}
		for i := range st.Nodes {
			if err := waitPodCIDR(ctx, cfg, st, &st.Nodes[i]); err != nil {
				return err
			}
			if err := startKubeProxy(cfg, pki, st, &st.Nodes[i]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := ph.do("nodes Ready", func() error { return waitNodesReady(ctx, cfg, len(cfg.Nodes), 3*time.Minute) }); err != nil {
		return err
	}
	st.Ready = true
	if err := st.save(); err != nil {
		return err
	}
	if cfg.InstallDHPP {
		if err := ph.do("install dhpp", func() error { return InstallDHPP(ctx, cfg, out) }); err != nil {
			return err
		}
	}
	if nodes, err := kubectl(ctx, cfg, "get", "nodes", "-o", "wide"); err == nil {
		fmt.Fprintf(out, "\n%s\n", nodes)
	}
	fmt.Fprintf(out, "\nkubeconfig: %s\n  export KUBECONFIG=%s\n  kubectl: %s\n", cfg.KubeconfigPath(), cfg.KubeconfigPath(), cfg.KubeBin("kubectl"))
	return nil
}

func allAlive(st *State) bool {
	for _, p := range st.procs() {
		if !p.Alive() {
			return false
		}
	}
	return len(st.Nodes) > 0
}

// checkNoLeftovers refuses to start over pieces of a cluster that the state
// does not know (another checkout's cluster, or a crashed run whose state
// was deleted): they would collide.
func checkNoLeftovers(ctx context.Context, cfg Config) error {
	var found []string
	if _, err := run(ctx, "ip", "link", "show", BridgeName); err == nil {
		found = append(found, "bridge "+BridgeName)
	}
	for _, n := range cfg.Nodes {
		if _, err := os.Stat("/run/netns/" + n.Name); err == nil {
			found = append(found, "netns "+n.Name)
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("found %s from a cluster this checkout has no state for; run `down` (it cleans by name too)", strings.Join(found, ", "))
	}
	return nil
}

// waitNodesReady waits until want nodes report Ready.
func waitNodesReady(ctx context.Context, cfg Config, want int, timeout time.Duration) error {
	return poll(ctx, timeout, time.Second, fmt.Sprintf("%d nodes Ready", want), func() (bool, error) {
		out, err := kubectl(ctx, cfg, "get", "nodes", "-o",
			`jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			return false, err
		}
		ready := 0
		for _, l := range strings.Split(out, "\n") {
			if strings.HasSuffix(l, "=True") {
				ready++
			}
		}
		if ready >= want {
			return true, nil
		}
		return false, fmt.Errorf("nodes: %s", strings.ReplaceAll(out, "\n", " "))
	})
}

// LocalOverlay is the kustomize overlay that installs dhpp with the locally
// built images.
const LocalOverlay = "deploy/kustomize/overlays/local"

// overlayDir is the directory of the kustomization InstallDHPP applies.
func (c Config) overlayDir() string {
	switch {
	case c.Overlay == "":
		return filepath.Join(c.RepoRoot, LocalOverlay)
	case filepath.IsAbs(c.Overlay):
		return c.Overlay
	}
	return filepath.Join(c.RepoRoot, c.Overlay)
}

// InstallDHPP applies cfg's overlay (the local one unless set) and waits
// for its DaemonSets and for the dhpp-controller Deployment.
func InstallDHPP(ctx context.Context, cfg Config, out io.Writer) error {
	dir := cfg.overlayDir()
	if _, err := os.Stat(filepath.Join(dir, "kustomization.yaml")); err != nil {
		fmt.Fprintf(out, "    %s does not exist yet: dhpp not installed\n", dir)
		return nil
	}
	if _, err := os.Stat(filepath.Join(cfg.imagesDir(), "dhpp-driver.tar")); err != nil {
		return fmt.Errorf("no dhpp-driver image was built (cmd/dhpp-driver missing?): %w", err)
	}
	res, err := applyWithCRDs(ctx, cfg, dir)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, res)
	dss, err := kubectl(ctx, cfg, "get", "daemonsets", "-A", "-o", `jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}`)
	if err != nil {
		return err
	}
	for _, ds := range strings.Fields(dss) {
		ns, name, _ := strings.Cut(ds, "/")
		fmt.Fprintf(out, "    waiting for DaemonSet %s\n", ds)
		if _, err := kubectl(ctx, cfg, "-n", ns, "rollout", "status", "daemonset/"+name, "--timeout=5m"); err != nil {
			pods, _ := kubectl(ctx, cfg, "-n", ns, "get", "pods", "-o", "wide")
			return fmt.Errorf("DaemonSet %s not ready: %w\n%s", ds, err, pods)
		}
	}
	// dhpp-controller (a Deployment): both replicas up, one of them leads.
	deps, err := kubectl(ctx, cfg, "-n", "dhpp-system", "get", "deployments", "-o", `jsonpath={range .items[*]}{.metadata.name}{"\n"}{end}`)
	if err != nil {
		return err
	}
	for _, d := range strings.Fields(deps) {
		fmt.Fprintf(out, "    waiting for Deployment dhpp-system/%s\n", d)
		if _, err := kubectl(ctx, cfg, "-n", "dhpp-system", "rollout", "status", "deployment/"+d, "--timeout=5m"); err != nil {
			pods, _ := kubectl(ctx, cfg, "-n", "dhpp-system", "get", "pods", "-o", "wide")
			return fmt.Errorf("Deployment %s not ready: %w\n%s", d, err, pods)
		}
	}
	return nil
}

// applyWithCRDs runs `kubectl apply -k dir`, again while it fails only
// because a kind is not served yet: the overlay creates the VolumeSnapshot
// CRDs and the VolumeSnapshotClass in one apply, and the class's kind is
// unknown until the API server has established its CRD.
func applyWithCRDs(ctx context.Context, cfg Config, dir string) (string, error) {
	for attempt := 1; ; attempt++ {
		res, err := kubectl(ctx, cfg, "apply", "-k", dir)
		if err == nil || attempt == 10 || !strings.Contains(err.Error(), "ensure CRDs are installed first") {
			return res, err
		}
		select {
		case <-ctx.Done():
			return res, err
		case <-time.After(time.Second):
		}
	}
}

// Down tears everything down, using the state where there is one and
// cleaning by name (bridge, netns, loop devices of our images, cgroups)
// where there is not. It is safe to run repeatedly.
func Down(ctx context.Context, cfg Config, out io.Writer) error {
	return locked(ctx, cfg, out, down)
}

func down(ctx context.Context, cfg Config, out io.Writer) error {
	st, err := loadState(cfg.statePath())
	if err != nil {
		return err
	}
	lostState := st == nil
	if lostState {
		st = &State{path: cfg.statePath()}
	}
	ph := &phases{out: out, start: time.Now()}
	defer ph.summary("down")
	var errs []error
	keep := func(e ...error) { errs = append(errs, e...) }

	_ = ph.do("stop nodes (kubelet, pods via CRI, containerd)", func() error {
		for i := range st.Nodes {
			keep(stopNode(ctx, cfg, &st.Nodes[i])...)
		}
		// Nodes the state does not know (crashed run): processes in their
		// namespaces and cgroups.
		for _, n := range cfg.Nodes {
			if st.node(n.Name) == nil {
				ns := &NodeState{Spec: n}
				keep(stopNode(ctx, cfg, ns)...)
			}
		}
		return nil
	})
	_ = ph.do("stop control plane", func() error {
		for i := len(st.ControlPlane) - 1; i >= 0; i-- {
			keep(st.ControlPlane[i].Stop(15 * time.Second))
		}
		return nil
	})
	_ = ph.do("stray daemons of this cluster", func() error {
		// Processes the state does not know (it was lost or is stale) but
		// whose command line names this cluster's output directory: every
		// daemon up starts has a flag pointing there.
		for _, p := range straysOf(cfg.OutputDir, daemonNames) {
			klog.InfoS("stopping a daemon of this cluster that the state did not list", "pid", p.PID, "cmd", p.Name)
			keep(p.Stop(10 * time.Second))
		}
		return nil
	})
	_ = ph.do("disks, namespaces, cgroups", func() error {
		for _, n := range cfg.Nodes {
			keep(teardownNodeNetwork(ctx, n.Name))
			keep(removeCgroups(n.Name))
			keep(detachLoops(ctx, filepath.Join(cfg.nodeDir(n.Name), "disk.img")))
		}
		return nil
	})
	_ = ph.do("host network and firewall", func() error {
		keep(teardownHostNetwork(ctx, st)...)
		return nil
	})
	_ = ph.do("files", func() error {
		keep(os.RemoveAll(RunDir))
		dirs := st.HostDirs
		if lostState {
			// Without a record of what up created, remove the mount
			// points only if they are empty (as up leaves them).
			dirs = append(append([]string{}, hostMountPoints...), "/run/containerd")
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			keep(removeEmptyTree(dirs[i]))
		}
		// The node directories hold the 4 GiB sparse disks and containerd's
		// snapshots; logs stay for post-mortems.
		keep(os.RemoveAll(filepath.Join(cfg.OutputDir, "nodes")))
		keep(os.RemoveAll(filepath.Join(cfg.OutputDir, "etcd")))
		keep(os.RemoveAll(cfg.statePath()))
		return nil
	})
	return errors.Join(errs...)
}

// daemonNames are the programs up starts with flags naming the output
// directory; only those are strays (a `tail -f` of a log is not).
var daemonNames = map[string]bool{"etcd": true, "kube-apiserver": true, "kube-controller-manager": true,
	"kube-scheduler": true, "kubelet": true, "kube-proxy": true, "containerd": true}

// straysOf lists live processes named in names whose command line contains
// dir + "/".
func straysOf(dir string, names map[string]bool) []Proc {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var ps []Proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(dir+"/")) {
			continue
		}
		state, start, err := procStat(pid)
		if err != nil || state == 'Z' {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !names[filepath.Base(args[0])] {
			continue
		}
		ps = append(ps, Proc{Name: filepath.Base(args[0]), PID: pid, StartTime: start})
	}
	// Dependents first: etcd last, or the apiserver waits for it on the
	// way down.
	sort.SliceStable(ps, func(i, j int) bool { return stopOrder[ps[i].Name] < stopOrder[ps[j].Name] })
	return ps
}

var stopOrder = map[string]int{"kube-proxy": 0, "kubelet": 1, "containerd": 2, "kube-scheduler": 3,
	"kube-controller-manager": 4, "kube-apiserver": 5, "etcd": 6}

// detachLoops detaches every loop device backed by img, and first every
// loop device whose backing file lives on the filesystem of such a device
// (the driver's loop-backed volumes on the node's data disk): while those
// are attached they keep the data disk's filesystem, and so its loop device,
// busy.
func detachLoops(ctx context.Context, img string) error {
	if _, err := os.Stat(img); err != nil {
		return nil
	}
	out, err := run(ctx, "losetup", "--list", "--json", "-O", "NAME,MAJ:MIN,BACK-MAJ:MIN,BACK-FILE")
	if err != nil {
		return err
	}
	loops, err := parseLoops(out)
	if err != nil {
		return err
	}
	var errs []error
	for _, disk := range loops {
		if !sameFile(disk.backFile, img) {
			continue
		}
		for _, inner := range loops {
			if inner.backMajMin == disk.majMin {
				errs = append(errs, detachLoop(ctx, inner.name))
			}
		}
		errs = append(errs, detachLoop(ctx, disk.name))
	}
	return errors.Join(errs...)
}

type loopDev struct{ name, majMin, backMajMin, backFile string }

// parseLoops parses `losetup --list --json -O NAME,MAJ:MIN,BACK-MAJ:MIN,BACK-FILE`
// (util-linux pads the device numbers with spaces).
func parseLoops(out string) ([]loopDev, error) {
	if strings.TrimSpace(out) == "" {
		return nil, nil // no loop devices at all: losetup prints nothing
	}
	var doc struct {
		Loops []map[string]string `json:"loopdevices"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("parse losetup output: %w", err)
	}
	var ls []loopDev
	for _, l := range doc.Loops {
		ls = append(ls, loopDev{
			name:       strings.TrimSpace(l["name"]),
			majMin:     strings.TrimSpace(l["maj:min"]),
			backMajMin: strings.TrimSpace(l["back-maj:min"]),
			backFile:   strings.TrimSuffix(strings.TrimSpace(l["back-file"]), " (deleted)"),
		})
	}
	return ls, nil
}

func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

func detachLoop(ctx context.Context, dev string) error {
	var err error
	// The filesystem is released when the node's mount namespace dies,
	// which can lag its last process by a moment.
	for try := 0; try < 50; try++ {
		if _, err = run(ctx, "losetup", "-d", dev); err == nil {
			return nil
		}
		if _, serr := os.Stat(dev); serr != nil {
			return nil
		}
		if out, _ := run(ctx, "losetup", "--list", "--noheadings", dev); out == "" {
			return nil // autoclear already detached it
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// removeEmptyTree removes dir and its subdirectories if they contain no files.
func removeEmptyTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() {
			klog.InfoS("leaving non-empty directory in place", "dir", dir, "file", e.Name())
			return nil
		}
		if err := removeEmptyTree(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
		// not empty (a file remained below): leave it
		klog.V(2).InfoS("leaving directory", "dir", dir, "err", err)
	}
	return nil
}

// Status prints the state of every daemon and the nodes as the API sees them.
func Status(ctx context.Context, cfg Config, out io.Writer) error {
	st, err := loadState(cfg.statePath())
	if err != nil {
		return err
	}
	if st == nil {
		fmt.Fprintln(out, "no cluster (no state at", cfg.statePath()+")")
		return nil
	}
	fmt.Fprintf(out, "cluster started %s, Kubernetes %s, ready=%v\n", st.StartedAt.Format(time.RFC3339), st.KubernetesVersion, st.Ready)
	for _, p := range st.procs() {
		if p.PID == 0 {
			continue
		}
		s := "running"
		if !p.Alive() {
			s = "DEAD"
		}
		fmt.Fprintf(out, "  %-28s pid %-7d %s\n", p.Name, p.PID, s)
	}
	for _, n := range st.Nodes {
		fmt.Fprintf(out, "  %-12s ip %s podCIDR %s disk %s (%s) on %s\n", n.Spec.Name, n.Spec.IP, n.PodCIDR, n.Loop, n.Spec.FS, DataMount)
	}
	if nodes, err := kubectl(ctx, cfg, "get", "nodes", "-o", "wide"); err == nil {
		fmt.Fprintf(out, "\n%s\n", nodes)
	} else {
		fmt.Fprintf(out, "\napiserver not answering: %v\n", err)
	}
	fmt.Fprintf(out, "kubeconfig: %s\n", cfg.KubeconfigPath())
	return nil
}
