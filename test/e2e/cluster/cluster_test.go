package cluster

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	utilversion "k8s.io/apimachinery/pkg/util/version"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name      string
		stat      string
		wantState byte
		wantStart uint64
		wantErr   bool
	}{
		{
			name:      "plain",
			stat:      "123 (sleep) S 1 123 123 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 5000 100",
			wantState: 'S', wantStart: 98765,
		},
		{
			name:      "command with spaces and parentheses",
			stat:      "9 (a (b) c) Z 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0",
			wantState: 'Z', wantStart: 42,
		},
		{name: "truncated", stat: "1 (x) S 1 2", wantErr: true},
		{name: "garbage", stat: "nothing here", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, start, err := parseStat(tt.stat)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && (st != tt.wantState || start != tt.wantStart) {
				t.Errorf("got %c %d, want %c %d", st, start, tt.wantState, tt.wantStart)
			}
		})
	}
}

func TestProcAliveAndStop(t *testing.T) {
	log := filepath.Join(t.TempDir(), "sleep.log")
	p, err := startDaemon("sleep", log, []string{"sleep", "300"})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Alive() || p.StartTime == 0 {
		t.Fatalf("started process not alive: %+v", p)
	}
	// A record with the same PID but another start time is someone else's.
	other := p
	other.StartTime++
	if other.Alive() {
		t.Error("process with a different start time counted as ours")
	}
	if err := other.Stop(time.Second); err != nil || !p.Alive() {
		t.Fatalf("Stop of a foreign PID touched our process: %v", err)
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Alive() {
		t.Error("process alive after Stop")
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "sleep 300") {
		t.Errorf("log lacks the command line: %q", b)
	}
}

// The control plane's session gets a lower autogroup nice than the pods'
// shims, or 100 starting pods starve the API (see ControlPlaneNice).
func TestSetAutogroupNice(t *testing.T) {
	p, err := startDaemon("sleep", filepath.Join(t.TempDir(), "sleep.log"), []string{"sleep", "300"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Stop(5 * time.Second) }()
	// A positive nice needs no privilege, so this runs as any user.
	if err := setAutogroupNice(p.PID, 7); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/autogroup", p.PID))
	if errors.Is(err, fs.ErrNotExist) {
		// Kernel without autogroup: a no-op, the thread nice applies.
		t.Skip("this kernel has no autogroup scheduling (/proc/PID/autogroup)")
	}
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(strings.TrimSpace(string(b)), "nice 7") {
		t.Errorf("autogroup of the daemon = %q, want nice 7", b)
	}
	if err := setAutogroupNice(1<<22+1, 7); err == nil {
		t.Error("setAutogroupNice of a PID that does not exist: no error")
	}
}

func TestToolStampKey(t *testing.T) {
	repo := t.TempDir()
	mod := filepath.Join(repo, "hack/tools/x")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(mod, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module x\n")
	write("main.go", "package main\nfunc main(){}\n")
	base := Tool{Name: "x", Version: "v1", Module: "hack/tools/x", Packages: []string{"."}, Ldflags: "-s"}
	key := func(tl Tool) string {
		t.Helper()
		k, err := tl.stampKey(repo)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	if key(base) != k0 {
		t.Fatal("stamp key not stable")
	}
	changed := []struct {
		name   string
		mutate func() Tool
	}{
		{"version", func() Tool { c := base; c.Version = "v2"; return c }},
		{"ldflags", func() Tool { c := base; c.Ldflags = "-s -w"; return c }},
		{"packages", func() Tool { c := base; c.Packages = []string{"./cmd"}; return c }},
		{"go.sum added", func() Tool { write("go.sum", "x v1 h1:abc\n"); return base }},
		{"source edited", func() Tool { write("main.go", "package main\nfunc main(){println()}\n"); return base }},
	}
	prev := k0
	for _, c := range changed {
		k := key(c.mutate())
		if k == prev || k == k0 {
			t.Errorf("%s: stamp key did not change", c.name)
		}
		prev = k
	}
}

func TestToolBuildIsCachedByStamp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program")
	}
	repo, tl := helloTool(t)
	bin := filepath.Join(t.TempDir(), "bin")
	ctx := context.Background()
	cached, err := tl.Build(ctx, repo, bin)
	if err != nil || cached {
		t.Fatalf("first build: cached=%v err=%v", cached, err)
	}
	out, err := exec.Command("file", filepath.Join(bin, "hello-v1", "hello")).Output()
	if err == nil && !strings.Contains(string(out), "statically linked") {
		t.Errorf("binary is not static (CGO_ENABLED=0): %s", out)
	}
	if cached, err = tl.Build(ctx, repo, bin); err != nil || !cached {
		t.Fatalf("second build: cached=%v err=%v, want a no-op", cached, err)
	}
	tl.Binaries = []string{"missing"}
	tl.Version = "v2"
	if _, err := tl.Build(ctx, repo, bin); err == nil {
		t.Error("build that lacks an expected binary succeeded")
	}
	if _, err := os.Stat(filepath.Join(bin, "hello-v2")); !os.IsNotExist(err) {
		t.Errorf("failed build left its cache directory: %v", err)
	}
}

// helloTool makes a repository with a one-file tool module, hack/tools/hello,
// and returns it with the Tool that builds it (the tool build tests' fixture).
func helloTool(t *testing.T) (repo string, tl Tool) {
	t.Helper()
	repo = t.TempDir()
	mod := filepath.Join(repo, "hack/tools/hello")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"go.mod":  "module hello\n\ngo 1.24\n",
		"main.go": "package main\nfunc main(){}\n",
	} {
		if err := os.WriteFile(filepath.Join(mod, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return repo, Tool{Name: "hello", Version: "v1", Module: "hack/tools/hello", Packages: []string{"."}, Binaries: []string{"hello"}}
}

func TestPKI(t *testing.T) {
	dir := t.TempDir()
	p, err := NewPKI(dir, DefaultNodes())
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(p.CA())
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA not parseable")
	}
	load := func(name string) *x509.Certificate {
		t.Helper()
		b, err := os.ReadFile(p.Cert(name))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		file  string
		cn    string
		org   string
		usage x509.ExtKeyUsage
		host  string
	}{
		{file: "apiserver", cn: "kube-apiserver", usage: x509.ExtKeyUsageServerAuth, host: BridgeIP},
		{file: "apiserver", cn: "kube-apiserver", usage: x509.ExtKeyUsageServerAuth, host: KubernetesServiceIP},
		{file: "apiserver", cn: "kube-apiserver", usage: x509.ExtKeyUsageServerAuth, host: "kubernetes.default.svc"},
		{file: "admin", cn: "kubernetes-admin", org: "system:masters", usage: x509.ExtKeyUsageClientAuth},
		{file: "kubelet-dhpp-node-2", cn: "system:node:dhpp-node-2", org: "system:nodes", usage: x509.ExtKeyUsageClientAuth},
		{file: "kube-proxy", cn: "system:kube-proxy", usage: x509.ExtKeyUsageClientAuth},
		{file: "controller-manager", cn: "system:kube-controller-manager", usage: x509.ExtKeyUsageClientAuth},
		{file: "scheduler", cn: "system:kube-scheduler", usage: x509.ExtKeyUsageClientAuth},
	}
	for _, tt := range tests {
		t.Run(tt.file+" "+tt.host, func(t *testing.T) {
			c := load(tt.file)
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: tt.host, KeyUsages: []x509.ExtKeyUsage{tt.usage}}); err != nil {
				t.Errorf("verify: %v", err)
			}
			if c.Subject.CommonName != tt.cn {
				t.Errorf("CN = %q, want %q", c.Subject.CommonName, tt.cn)
			}
			if tt.org != "" && (len(c.Subject.Organization) != 1 || c.Subject.Organization[0] != tt.org) {
				t.Errorf("O = %v, want %s", c.Subject.Organization, tt.org)
			}
		})
	}
	for _, k := range []string{"ca.key", "admin.key", "sa.key"} {
		if st, err := os.Stat(filepath.Join(dir, k)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v err %v, want 0600", k, st.Mode().Perm(), err)
		}
	}
	kc := filepath.Join(dir, "kubeconfig")
	if err := p.WriteKubeconfig(kc, "admin"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(kc)
	for _, want := range []string{"server: https://10.200.0.1:6443", "client-certificate: " + p.Cert("admin"), "current-context: dhpp-e2e"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("kubeconfig lacks %q:\n%s", want, b)
		}
	}
}

func TestGeneratedConfigs(t *testing.T) {
	cfg := Config{RepoRoot: "/r", OutputDir: "/r/_output/cluster", CacheDir: "/c", Nodes: DefaultNodes()}
	var cni struct {
		Plugins []struct {
			Type   string `json:"type"`
			IPMasq bool   `json:"ipMasq"`
			IPAM   struct {
				Ranges  [][]struct{ Subnet string } `json:"ranges"`
				DataDir string                      `json:"dataDir"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(cniConfig(cfg, "dhpp-node-1", "10.244.1.0/24")), &cni); err != nil {
		t.Fatalf("CNI config is not JSON: %v", err)
	}
	if len(cni.Plugins) != 2 || cni.Plugins[0].Type != "bridge" || cni.Plugins[0].IPMasq ||
		cni.Plugins[0].IPAM.Ranges[0][0].Subnet != "10.244.1.0/24" ||
		!strings.HasPrefix(cni.Plugins[0].IPAM.DataDir, cfg.nodeDir("dhpp-node-1")) {
		t.Errorf("CNI config = %+v", cni)
	}

	p := &PKI{Dir: "/pki"}
	tests := []struct {
		name string
		text string
		want []string
	}{
		{name: "containerd", text: containerdConfig(cfg, "dhpp-node-2"), want: []string{
			`sandbox_image = "registry.k8s.io/pause:3.10"`, "restrict_oom_score_adj = true",
			"netns_mounts_under_state_dir = true", "SystemdCgroup = false", `snapshotter = "overlayfs"`,
			`address = "/run/dhpp-e2e/dhpp-node-2/containerd.sock"`, `bin_dir = "/usr/lib/cni"`,
			`conf_dir = "/r/_output/cluster/nodes/dhpp-node-2/cni/net.d"`,
		}},
		{name: "kubelet", text: kubeletConfig(cfg, p, "dhpp-node-3"), want: []string{
			"cgroupDriver: cgroupfs", "cgroupRoot: /dhpp-node-3", "failSwapOn: false", "readOnlyPort: 0",
			"clientCAFile: /pki/ca.crt", `resolvConf: ""`, "imageGCHighThresholdPercent: 100",
			"containerRuntimeEndpoint: unix:///run/dhpp-e2e/dhpp-node-3/containerd.sock", `nodefs.available: "1%"`,
		}},
		{name: "holder btrfs", text: holderScript(cfg, &NodeState{Spec: DefaultNodes()[0], Loop: "/dev/loop7"}, "/ready"), want: []string{
			"mount --make-rshared /", `mount "/dev/loop7" "/mnt/dhpp-data"`, `mount --make-shared "/mnt/dhpp-data"`,
			`mkdir -p "/mnt/dhpp-data/dhpp"`, "btrfs quota enable", `mount --bind "/r/_output/cluster/nodes/dhpp-node-1/kubelet" "/var/lib/kubelet"`,
			"exec sleep infinity",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, w := range tt.want {
				if !strings.Contains(tt.text, w) {
					t.Errorf("lacks %q:\n%s", w, tt.text)
				}
			}
		})
	}
	if s := holderScript(cfg, &NodeState{Spec: DefaultNodes()[2], Loop: "/dev/loop8"}, "/ready"); strings.Contains(s, "btrfs") {
		t.Errorf("ext4 node's holder enables btrfs quota:\n%s", s)
	}
	if len(cfg.criSocket("dhpp-node-1")) >= 108 {
		t.Errorf("CRI socket path too long for a unix socket: %s", cfg.criSocket("dhpp-node-1"))
	}
}

func TestDefaultNodesAreDistinct(t *testing.T) {
	t.Setenv("DHPP_E2E_NODES", "")
	names, ips, fs := map[string]bool{}, map[string]bool{}, map[string]int{}
	for _, n := range NodeSpecs(MaxNodes) {
		if names[n.Name] || ips[n.IP] {
			t.Errorf("duplicate node %+v", n)
		}
		names[n.Name], ips[n.IP] = true, true
		if len(vethName(n.Index)) > 15 {
			t.Errorf("veth name %s exceeds IFNAMSIZ", vethName(n.Index))
		}
	}
	for _, n := range DefaultNodes() {
		fs[n.FS]++
	}
	if len(DefaultNodes()) != 4 || fs["btrfs"] != 3 || fs["ext4"] != 1 || DefaultNodes()[2].FS != "ext4" {
		t.Errorf("want 4 nodes, 3 btrfs + dhpp-node-3 ext4; got %v", DefaultNodes())
	}
}

func TestNodeCount(t *testing.T) {
	tests := []struct {
		env     string
		want    int
		wantErr bool
	}{
		{"", DefaultNodeCount, false},
		{"3", 3, false},
		{"1", 1, false},
		{"0", 0, true},
		{"10", 0, true},
		{"four", 0, true},
	}
	for _, tc := range tests {
		t.Setenv("DHPP_E2E_NODES", tc.env)
		n, err := NodeCount()
		if n != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("DHPP_E2E_NODES=%q: NodeCount() = %d, %v; want %d (error %v)", tc.env, n, err, tc.want, tc.wantErr)
		}
		if !tc.wantErr && len(DefaultNodes()) != tc.want {
			t.Errorf("DHPP_E2E_NODES=%q: %d default nodes", tc.env, len(DefaultNodes()))
		}
	}
}

func TestFindRepoRoot(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "go.mod"), []byte("module github.com/dhpp-io/dhpp\n\ngo 1.26.0\n"), 0o644)
	tool := filepath.Join(root, "hack", "tools", "k")
	os.MkdirAll(tool, 0o755)
	os.WriteFile(filepath.Join(tool, "go.mod"), []byte("module github.com/dhpp-io/dhpp/hack/tools/k\n"), 0o644)
	for _, start := range []string{root, tool} {
		if got, err := FindRepoRoot(start); err != nil || got != root {
			t.Errorf("FindRepoRoot(%s) = %s, %v; want %s", start, got, err, root)
		}
	}
	if _, err := FindRepoRoot(t.TempDir()); err == nil {
		t.Error("FindRepoRoot outside a repo succeeded")
	}
}

func TestRemoveEmptyTree(t *testing.T) {
	base := t.TempDir()
	empty := filepath.Join(base, "empty", "a", "b")
	full := filepath.Join(base, "full", "a")
	os.MkdirAll(empty, 0o755)
	os.MkdirAll(full, 0o755)
	os.WriteFile(filepath.Join(full, "f"), nil, 0o644)
	for _, d := range []string{filepath.Join(base, "empty"), filepath.Join(base, "full"), filepath.Join(base, "absent")} {
		if err := removeEmptyTree(d); err != nil {
			t.Errorf("removeEmptyTree(%s): %v", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(base, "empty")); !os.IsNotExist(err) {
		t.Error("empty tree not removed")
	}
	if _, err := os.Stat(filepath.Join(full, "f")); err != nil {
		t.Error("tree with a file was removed")
	}
}

func TestParseLoops(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    []loopDev
		wantErr bool
	}{
		{
			name: "data disk and a volume on it",
			out: `{"loopdevices": [
  {"name": "/dev/loop0", "maj:min": "  7:0  ", "back-maj:min": "     254:0  ", "back-file": "/work/main/_output/cluster/nodes/dhpp-node-1/disk.img"},
  {"name": "/dev/loop4", "maj:min": "  7:4  ", "back-maj:min": "  7:0  ", "back-file": "/mnt/dhpp-data/dhpp/volumes/pvc 1/disk.img (deleted)"}
]}`,
			want: []loopDev{
				{name: "/dev/loop0", majMin: "7:0", backMajMin: "254:0", backFile: "/work/main/_output/cluster/nodes/dhpp-node-1/disk.img"},
				{name: "/dev/loop4", majMin: "7:4", backMajMin: "7:0", backFile: "/mnt/dhpp-data/dhpp/volumes/pvc 1/disk.img"},
			},
		},
		{name: "no loop devices", out: "", want: nil},
		{name: "not JSON", out: "/dev/loop0 7:0", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLoops(tt.out)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("parseLoops = %+v, want %+v", got, tt.want)
			}
			for i := range tt.want {
				if got[i] != tt.want[i] {
					t.Errorf("loop %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestStraysOf(t *testing.T) {
	dir := t.TempDir()
	p, err := startDaemon("sleep", filepath.Join(dir, "log"), []string{"sh", "-c", "sleep 300", dir + "/marker"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	other := t.TempDir()
	sh := map[string]bool{"sh": true}
	tests := []struct {
		dir   string
		names map[string]bool
		want  bool
	}{
		{dir, sh, true},
		{other, sh, false},
		// a process of another name (say, `tail -f` of a log) is never a stray
		{dir, daemonNames, false},
	}
	for _, tt := range tests {
		found := false
		for _, s := range straysOf(tt.dir, tt.names) {
			found = found || s.PID == p.PID
		}
		if found != tt.want {
			t.Errorf("straysOf(%s) found our process = %v, want %v", tt.dir, found, tt.want)
		}
	}
}

func TestLockExcludesASecondCommand(t *testing.T) {
	t.Setenv("DHPP_CACHE", t.TempDir())
	ctx := context.Background()
	unlock, err := lock(ctx, io.Discard, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to the open file description: a second open in
	// this process conflicts just as another process would.
	start := time.Now()
	if _, err := lock(ctx, io.Discard, time.Second); err == nil || !strings.Contains(err.Error(), "another dhpp-cluster") {
		t.Errorf("second lock: %v, want refused", err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("second lock gave up after %s, want it to wait 1s", waited)
	}
	// A waiter gets the lock as soon as the holder lets go.
	go func() {
		time.Sleep(300 * time.Millisecond)
		unlock()
	}()
	unlock2, err := lock(ctx, io.Discard, 5*time.Second)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

func TestKubernetesVersionFromEnv(t *testing.T) {
	if !slices.Contains(KubernetesVersions, DefaultKubernetesVersion) {
		t.Fatalf("default %s is not in KubernetesVersions %v", DefaultKubernetesVersion, KubernetesVersions)
	}
	// Oldest first, so that the default (the last) is the newest: the one
	// the scenario e2e runs on.
	for i := 1; i < len(KubernetesVersions); i++ {
		if !utilversion.MustParseSemantic(KubernetesVersions[i-1]).LessThan(utilversion.MustParseSemantic(KubernetesVersions[i])) {
			t.Errorf("KubernetesVersions %v: not oldest first", KubernetesVersions)
		}
	}
	tests := []struct {
		env     string
		want    string
		wantErr bool
	}{
		{"", DefaultKubernetesVersion, false},
		{KubernetesVersions[0], KubernetesVersions[0], false},
		{"v1.30.0", "", true},
		{"1.33.13", "", true},
	}
	for _, tc := range tests {
		t.Setenv("DHPP_K8S_VERSION", tc.env)
		v, err := KubernetesVersionFromEnv()
		if v != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("DHPP_K8S_VERSION=%q: %q, %v; want %q (error %v)", tc.env, v, err, tc.want, tc.wantErr)
		}
	}
}

// Every supported version has its build module, which builds exactly that
// release, and its binaries are stamped with it.
func TestEverySupportedVersionHasItsBuildModule(t *testing.T) {
	root, err := FindRepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range KubernetesVersions {
		for _, tl := range []Tool{Tools(v)[0], E2ETool(v)} {
			mod, err := os.ReadFile(filepath.Join(root, tl.Module, "go.mod"))
			if err != nil {
				t.Fatalf("%s: %v", v, err)
			}
			if !regexp.MustCompile(`(?m)^\s*k8s\.io/kubernetes ` + regexp.QuoteMeta(v) + `\b`).Match(mod) {
				t.Errorf("%s/go.mod does not require k8s.io/kubernetes %s", tl.Module, v)
			}
			minor := strings.TrimPrefix(minorOf(v), "v1.")
			if !strings.Contains(tl.Ldflags, "gitVersion="+v+" ") || !strings.HasSuffix(tl.Ldflags, "gitMinor="+minor) {
				t.Errorf("%s %s: ldflags %q do not stamp the version", tl.Name, v, tl.Ldflags)
			}
		}
	}
}

func TestAuditFlags(t *testing.T) {
	cfg := Config{OutputDir: t.TempDir()}
	if f, err := auditFlags(cfg); err != nil || f != nil {
		t.Fatalf("audit off: flags %v, err %v; want none", f, err)
	}
	cfg.Audit = true
	f, err := auditFlags(cfg)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(f, " ")
	policy := filepath.Join(cfg.OutputDir, "audit-policy.yaml")
	for _, want := range []string{"--audit-policy-file=" + policy, "--audit-log-path=" + cfg.AuditLogPath()} {
		if !strings.Contains(joined, want) {
			t.Errorf("flags %q lack %q", joined, want)
		}
	}
	b, err := os.ReadFile(policy)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "level: Metadata") || !strings.Contains(string(b), "RequestReceived") {
		t.Errorf("policy:\n%s", b)
	}
}

// `up` builds only what the cluster runs: local-path-provisioner (its own
// module and client-go, minutes of cold compile) is the cluster benchmark's
// alone, built by LocalPathTool.
func TestUpDoesNotBuildLocalPath(t *testing.T) {
	for _, v := range KubernetesVersions {
		for _, tl := range Tools(v) {
			if tl.Module == LocalPathTool().Module {
				t.Errorf("Tools(%s) builds %s, which only the cluster benchmark runs", v, tl.Name)
			}
		}
	}
	// The benchmark's image recipe finds the binary where the tool lands.
	cfg := Config{CacheDir: t.TempDir()}
	lp := LocalPathTool()
	if want := filepath.Join(cfg.binDir(), lp.Name+"-"+lp.Version, lp.Binaries[0]); cfg.LocalPathBin() != want {
		t.Errorf("LocalPathBin %s, want %s", cfg.LocalPathBin(), want)
	}
}
