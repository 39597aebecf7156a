package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// hostMountPoints are the directories the node namespaces mount over. They
// must exist on the host; up creates the missing ones and down removes them.
// kubelet uses /var/lib/kubelet, /var/log/pods and /var/log/containers
// whatever --root-dir says, and libcni caches results in /var/lib/cni, so
// each node binds its own directory there.
var hostMountPoints = []string{"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/cni", DataMount, RunDir}

func ensureHostDirs(st *State) error {
	for _, d := range hostMountPoints {
		if _, err := os.Stat(d); err == nil {
			continue
		}
		// Record the topmost directory MkdirAll creates, so down removes
		// all of it.
		top := d
		for p := filepath.Dir(d); p != "/"; p = filepath.Dir(p) {
			if _, err := os.Stat(p); err == nil {
				break
			}
			top = p
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
		st.HostDirs = append(st.HostDirs, top)
	}
	// containerd 1.6 puts shim sockets under /run/containerd/s whatever its
	// config says; if that directory is ours, down removes it.
	if _, err := os.Stat("/run/containerd"); os.IsNotExist(err) {
		st.HostDirs = append(st.HostDirs, "/run/containerd")
	}
	return st.save()
}

// cgroupV1Hierarchies returns the mount points of the cgroup v1 hierarchies.
func cgroupV1Hierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var dirs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup" {
			dirs = append(dirs, fields[1])
		}
	}
	return dirs, sc.Err()
}

// createCgroupRoot creates /<node> in every cgroup v1 hierarchy: kubelet's
// cgroupRoot must exist beforehand. cpuset needs cpus and mems copied from
// the parent or no task can ever join it.
func createCgroupRoot(node string) error {
	hs, err := cgroupV1Hierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		dir := filepath.Join(h, node)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				return fmt.Errorf("write %s/%s: %w", dir, f, err)
			}
		}
	}
	return nil
}

// removeCgroups removes /<node> and everything under it from every cgroup
// hierarchy (v1 and the unified one runc may also use), deepest first. A
// cgroup can only be removed once its tasks are gone, so it retries briefly.
func removeCgroups(node string) error {
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", node))
	var dirs []string
	for _, r := range roots {
		_ = filepath.Walk(r, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	// Longer paths are deeper: remove children before parents.
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var last error
	for _, d := range dirs {
		for try := 0; try < 50; try++ {
			last = syscall.Rmdir(d)
			if last == nil || os.IsNotExist(last) {
				last = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if last != nil {
			return fmt.Errorf("remove cgroup %s: %w", d, last)
		}
	}
	return nil
}

// cgroupPIDs lists the processes in node's cgroup subtree: the pods'
// containers, which live in their own network namespaces.
func cgroupPIDs(node string) []int {
	var pids []int
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", node))
	for _, r := range roots {
		_ = filepath.Walk(r, func(p string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() || info.Name() != "cgroup.procs" {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(b)) {
				var pid int
				if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// createDisk makes node n's sparse data disk, formats it and attaches it to
// a loop device. mkfs runs on the image file, before the loop exists.
func createDisk(ctx context.Context, cfg Config, ns *NodeState) error {
	n := ns.Spec
	img := filepath.Join(cfg.nodeDir(n.Name), "disk.img")
	_ = os.Remove(img)
	f, err := os.Create(img)
	if err != nil {
		return fmt.Errorf("create disk image: %w", err)
	}
	err = f.Truncate(DiskSize)
	f.Close()
	if err != nil {
		return fmt.Errorf("size disk image: %w", err)
	}
	ns.DiskImage = img
	var mkfs []string
	switch n.FS {
	case "btrfs":
		mkfs = []string{"mkfs.btrfs", "-q", "-f", "-L", n.Name, img}
	case "ext4":
		mkfs = []string{"mkfs.ext4", "-q", "-F", "-L", n.Name, img}
	case "xfs":
		mkfs = []string{"mkfs.xfs", "-q", "-f", "-L", n.Name, img}
	default:
		return fmt.Errorf("node %s: unsupported filesystem %q", n.Name, n.FS)
	}
	if _, err := run(ctx, mkfs[0], mkfs[1:]...); err != nil {
		return fmt.Errorf("format disk of %s: %w", n.Name, err)
	}
	loop, err := run(ctx, "losetup", "--find", "--show", img)
	if err != nil {
		return fmt.Errorf("attach disk of %s: %w", n.Name, err)
	}
	ns.Loop = loop
	return nil
}

// holderScript sets up node n's mount namespace and then sleeps forever,
// keeping the namespace alive; the node's daemons nsenter into it.
func holderScript(cfg Config, ns *NodeState, ready string) string {
	d := cfg.nodeDir(ns.Spec.Name)
	var b strings.Builder
	b.WriteString("set -e\n")
	// Shared inside the node so that kubelet's and the driver's mounts
	// propagate between the node and its pods; private to the host.
	b.WriteString("mount --make-rshared /\n")
	for _, m := range [][2]string{
		{filepath.Join(d, "kubelet"), "/var/lib/kubelet"},
		{filepath.Join(d, "log", "pods"), "/var/log/pods"},
		{filepath.Join(d, "log", "containers"), "/var/log/containers"},
		{filepath.Join(d, "cni", "lib"), "/var/lib/cni"},
	} {
		fmt.Fprintf(&b, "mount --bind %q %q\n", m[0], m[1])
	}
	fmt.Fprintf(&b, "mount %q %q\n", ns.Loop, DataMount)
	// The driver pod mounts the data disk with Bidirectional propagation,
	// which needs the mount to be shared here.
	fmt.Fprintf(&b, "mount --make-shared %q\n", DataMount)
	fmt.Fprintf(&b, "mkdir -p %q\n", PoolDir)
	if ns.Spec.FS == "btrfs" {
		// qgroups are what the btrfs backend enforces volume sizes with.
		fmt.Fprintf(&b, "btrfs quota enable %q\n", DataMount)
	}
	fmt.Fprintf(&b, "touch %q\nexec sleep infinity\n", ready)
	return b.String()
}

// nsenter returns argv run inside node's network and mount namespaces.
func (ns *NodeState) nsenter(argv ...string) []string {
	return append([]string{"nsenter", fmt.Sprintf("--target=%d", ns.Holder.PID), "--mount", "--net", "--"}, argv...)
}

// startNodeBase creates node st.Nodes[i] up to a running containerd with the
// images imported; the kubelet comes later, once the control plane is up.
// Nodes are started concurrently: each works on its own copy of its record
// and publishes it to the shared state under the state's lock.
func startNodeBase(ctx context.Context, cfg Config, st *State, i int, images []string) error {
	st.mu.Lock()
	local := st.Nodes[i]
	st.mu.Unlock()
	ns := &local
	n := ns.Spec
	commit := func() error {
		st.mu.Lock()
		defer st.mu.Unlock()
		st.Nodes[i] = local
		return st.save()
	}
	d := cfg.nodeDir(n.Name)
	for _, sub := range []string{"kubelet", "log/pods", "log/containers", "cni/lib", "cni/net.d", "containerd"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return fmt.Errorf("node dir: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.nodeRun(n.Name), 0o755); err != nil {
		return fmt.Errorf("node run dir: %w", err)
	}
	if err := setupNodeNetwork(ctx, n); err != nil {
		return err
	}
	if err := createDisk(ctx, cfg, ns); err != nil {
		return err
	}
	if err := commit(); err != nil {
		return err
	}
	if err := createCgroupRoot(n.Name); err != nil {
		return err
	}

	ready := filepath.Join(d, "ns-ready")
	_ = os.Remove(ready)
	holder, err := startDaemon(n.Name+"-holder", filepath.Join(cfg.logDir(), n.Name+"-holder.log"),
		[]string{"nsenter", "--net=/run/netns/" + n.Name, "--",
			"unshare", "--mount", "--propagation", "private", "--",
			"/bin/sh", "-c", holderScript(cfg, ns, ready)})
	if err != nil {
		return err
	}
	ns.Holder = holder
	if err := commit(); err != nil {
		return err
	}
	if err := poll(ctx, 30*time.Second, 100*time.Millisecond, n.Name+" mount namespace", func() (bool, error) {
		if !holder.Alive() {
			return false, fmt.Errorf("holder exited")
		}
		_, err := os.Stat(ready)
		return err == nil, nil
	}); err != nil {
		return withLog(err, holder)
	}

	conf := filepath.Join(d, "containerd.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig(cfg, n.Name)), 0o644); err != nil {
		return fmt.Errorf("containerd config: %w", err)
	}
	if err := launchContainerd(ctx, cfg, ns, commit); err != nil {
		return err
	}
	sock := cfg.criSocket(n.Name)
	for _, img := range images {
		if _, err := run(ctx, "ctr", "--address", sock, "-n", "k8s.io", "images", "import", img); err != nil {
			return fmt.Errorf("import %s on %s: %w", filepath.Base(img), n.Name, err)
		}
	}
	return nil
}

// launchContainerd starts node n's containerd from the config
// startNodeBase wrote, records it (commit) and waits for its socket.
func launchContainerd(ctx context.Context, cfg Config, ns *NodeState, commit func() error) error {
	n := ns.Spec
	cd, err := startDaemon(n.Name+"-containerd", filepath.Join(cfg.logDir(), n.Name+"-containerd.log"),
		ns.nsenter("containerd", "--config", filepath.Join(cfg.nodeDir(n.Name), "containerd.toml")))
	if err != nil {
		return err
	}
	ns.Containerd = cd
	if err := commit(); err != nil {
		return err
	}
	sock := cfg.criSocket(n.Name)
	if err := poll(ctx, 30*time.Second, 200*time.Millisecond, n.Name+" containerd", func() (bool, error) {
		if !cd.Alive() {
			return false, fmt.Errorf("containerd exited")
		}
		_, err := run(ctx, "ctr", "--address", sock, "version")
		return err == nil, nil
	}); err != nil {
		return withLog(err, cd)
	}
	return nil
}

// containerdConfig is one node's containerd: its own root, state, socket and
// runc root so that three of them coexist on one host.
func containerdConfig(cfg Config, node string) string {
	d := cfg.nodeDir(node)
	r := cfg.nodeRun(node)
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  # Equal to the locally built pause image's tag: never pulled.
  sandbox_image = "registry.k8s.io/pause:3.10"
  # This VM lacks CAP_SYS_RESOURCE; without this every sandbox fails with
  # runc "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, filepath.Join(d, "containerd", "root"), filepath.Join(r, "state"), cfg.criSocket(node),
		filepath.Join(d, "containerd", "opt"), filepath.Join(r, "runc"), filepath.Join(d, "cni", "net.d"))
}

// startKubelet writes node n's kubelet config and starts it.
func startKubelet(ctx context.Context, cfg Config, pki *PKI, st *State, ns *NodeState) error {
	n := ns.Spec
	d := cfg.nodeDir(n.Name)
	kc := filepath.Join(d, "kubelet.kubeconfig")
	if err := pki.WriteKubeconfig(kc, "kubelet-"+n.Name); err != nil {
		return err
	}
	conf := filepath.Join(d, "kubelet.yaml")
	if err := os.WriteFile(conf, []byte(kubeletConfig(cfg, pki, n.Name)), 0o644); err != nil {
		return fmt.Errorf("kubelet config: %w", err)
	}
	return launchKubelet(cfg, st, ns)
}

// launchKubelet starts node n's kubelet from the files startKubelet wrote.
func launchKubelet(cfg Config, st *State, ns *NodeState) error {
	n := ns.Spec
	d := cfg.nodeDir(n.Name)
	p, err := startDaemon(n.Name+"-kubelet", filepath.Join(cfg.logDir(), n.Name+"-kubelet.log"),
		ns.nsenter(cfg.KubeBin("kubelet"), "--config="+filepath.Join(d, "kubelet.yaml"), "--kubeconfig="+filepath.Join(d, "kubelet.kubeconfig"),
			"--hostname-override="+n.Name, "--node-ip="+n.IP, "--v=2"))
	if err != nil {
		return err
	}
	ns.Kubelet = p
	return st.save()
}

// kubeletConfig follows the measured settings: cgroupfs driver with a per-node
// cgroupRoot, no swap check, webhook authn/authz against the cluster CA, no
// read-only port, image GC off (images cannot be pulled back), and no DNS
// (resolvConf "" gives pods no nameserver that could route out).
func kubeletConfig(cfg Config, pki *PKI, node string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupRoot: /%s
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
failSwapOn: false
failCgroupV1: false
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: ""
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
`, cfg.criSocket(node), node, pki.CA())
}

// waitPodCIDR waits for the controller-manager to assign node n a pod CIDR,
// then writes the node's CNI config from it and routes it via the node.
func waitPodCIDR(ctx context.Context, cfg Config, st *State, ns *NodeState) error {
	n := ns.Spec
	var cidr string
	if err := poll(ctx, 90*time.Second, 500*time.Millisecond, n.Name+" registration and pod CIDR", func() (bool, error) {
		if !ns.Kubelet.Alive() {
			return false, fmt.Errorf("kubelet exited")
		}
		c, err := nodePodCIDR(ctx, cfg, n.Name)
		cidr = c
		return err == nil && c != "", nil
	}); err != nil {
		return withLog(err, ns.Kubelet)
	}
	ns.PodCIDR = cidr
	conf := filepath.Join(cfg.nodeDir(n.Name), "cni", "net.d", "10-dhpp-e2e.conflist")
	if err := os.WriteFile(conf, []byte(cniConfig(cfg, n.Name, cidr)), 0o644); err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	if err := addPodRoute(ctx, n, cidr); err != nil {
		return err
	}
	return st.save()
}

// cniConfig: a bridge per node with the node as the pods' gateway, no
// masquerading (pod addresses are routed by the host), host-local IPAM with
// a per-node data dir, and portmap for hostPort.
func cniConfig(cfg Config, node, cidr string) string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "dhpp-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, cidr, filepath.Join(cfg.nodeDir(node), "cni", "ipam"))
}

// startKubeProxy runs kube-proxy (iptables mode) inside node n. Conntrack
// sysctls are left alone (0 = do not touch): they are host-wide settings.
func startKubeProxy(cfg Config, pki *PKI, st *State, ns *NodeState) error {
	n := ns.Spec
	d := cfg.nodeDir(n.Name)
	// Each node its own copy: nodes start in parallel, and a kube-proxy
	// that read a shared file while another node rewrote it found it
	// empty ("no configuration has been provided") and exited, leaving its
	// node's pods without Service routing (seen in CI on 2026-11-29).
	kc := filepath.Join(d, "kube-proxy.kubeconfig")
	if err := pki.WriteKubeconfig(kc, "kube-proxy"); err != nil {
		return err
	}
	conf := filepath.Join(d, "kube-proxy.yaml")
	text := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, kc, PodRange, n.Name)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return fmt.Errorf("kube-proxy config: %w", err)
	}
	return launchKubeProxy(cfg, st, ns)
}

// launchKubeProxy starts node n's kube-proxy from the config
// startKubeProxy wrote.
func launchKubeProxy(cfg Config, st *State, ns *NodeState) error {
	n := ns.Spec
	conf := filepath.Join(cfg.nodeDir(n.Name), "kube-proxy.yaml")
	p, err := startDaemon(n.Name+"-kube-proxy", filepath.Join(cfg.logDir(), n.Name+"-kube-proxy.log"),
		ns.nsenter(cfg.KubeBin("kube-proxy"), "--config="+conf, "--v=1"))
	if err != nil {
		return err
	}
	ns.KubeProxy = p
	return st.save()
}

// stopNode stops node's daemons and everything still running in its
// namespaces, in the order that lets each step succeed: kubelet first (or it
// recreates pods), then every pod sandbox through CRI (containers stop, CNI
// releases addresses), then containerd, then any leftover process (shims,
// the holder). The mount namespace, and with it every mount of the node,
// disappears with its last process.
func stopNode(ctx context.Context, cfg Config, ns *NodeState) []error {
	var errs []error
	name := ns.Spec.Name
	for _, p := range []Proc{ns.KubeProxy, ns.Kubelet} {
		if err := p.Stop(15 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	sock := cfg.criSocket(name)
	if ns.Containerd.Alive() {
		if _, err := os.Stat(cfg.criBin()); err == nil {
			if out, err := run(ctx, cfg.criBin(), "-endpoint", "unix://"+sock, "stop-all"); err != nil {
				errs = append(errs, fmt.Errorf("stop pod sandboxes on %s: %w", name, err))
			} else {
				klog.V(1).InfoS("pod sandboxes stopped", "node", name, "result", out)
			}
		}
	}
	if err := ns.Containerd.Stop(20 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if ns.Holder.Alive() {
		errs = append(errs, detachNodeLoops(ctx, ns)...)
	}
	// Whatever is left in the node's network namespace was started by this
	// node (shims, container processes, the holder): end each by PID.
	for try := 0; try < 3; try++ {
		pids := append(netnsPIDs(ctx, name), cgroupPIDs(name)...)
		if ns.Holder.Alive() {
			pids = append(pids, ns.Holder.PID)
		}
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			st, start, err := procStat(pid)
			if err != nil || st == 'Z' {
				continue
			}
			p := Proc{Name: fmt.Sprintf("%s process", name), PID: pid, StartTime: start}
			if err := p.Stop(5 * time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// detachNodeLoops detaches the loop devices whose backing files are on the
// node's data disk (the driver's loop-backed volumes). It must run inside
// the node's mount namespace while it exists: only there does the kernel
// name those files by a path under DataMount (btrfs files carry anonymous
// device numbers, so the backing device cannot identify them from outside).
// Devices still mounted are detached lazily, when the namespace goes.
func detachNodeLoops(ctx context.Context, ns *NodeState) []error {
	out, err := run(ctx, "nsenter", fmt.Sprintf("--target=%d", ns.Holder.PID), "--mount", "--",
		"losetup", "--list", "--json", "-O", "NAME,MAJ:MIN,BACK-MAJ:MIN,BACK-FILE")
	if err != nil {
		return []error{fmt.Errorf("list loop devices of %s: %w", ns.Spec.Name, err)}
	}
	loops, err := parseLoops(out)
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, l := range loops {
		if strings.HasPrefix(l.backFile, DataMount+"/") {
			klog.V(1).InfoS("detaching volume loop device", "node", ns.Spec.Name, "dev", l.name, "file", l.backFile)
			if err := detachLoop(ctx, l.name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}
