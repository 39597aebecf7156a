package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// Tool is one build of a tool module under hack/tools into the cache.
type Tool struct {
	// Name and Version name the cache directory bin/<Name>-<Version>.
	Name, Version string
	// Module is the module directory, relative to the repository.
	Module string
	// Packages are built into the cache directory, one binary each.
	Packages []string
	Ldflags  string
	// Binaries the build must produce (checked before stamping).
	Binaries []string
	// TestPackage, if set, is also built as a test binary (go test -c)
	// named TestBinary.
	TestPackage, TestBinary string
}

// kubernetesModule is the build module of a Kubernetes release.
func kubernetesModule(version string) string { return "hack/tools/kubernetes-" + minorOf(version) }

// versionLdflags stamps a Kubernetes build with its version: without it the
// binaries report v0.0.0 and kubelet/apiserver version-skew checks misbehave.
func versionLdflags(version string) string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(minorOf(version), "v"), ".")
	return "-s -w -X k8s.io/component-base/version.gitVersion=" + version +
		" -X k8s.io/component-base/version.gitMajor=" + major + " -X k8s.io/component-base/version.gitMinor=" + minor
}

// sidecarsModule builds csi-resizer, csi-snapshotter and snapshot-controller,
// each from upstream's tagged source, against the root module's dependency
// versions: one compile of client-go, gRPC and the rest for the three
// binaries, mostly shared with the driver's tests (its go.mod says why and
// what that changes; csi-provisioner does not compile against client-go
// v0.37 and keeps a module of its own). The sidecars stay separate Tools so
// that each keeps its cache directory and its -X main.version stamp; the
// second build finds every package it shares with the first in the Go
// build cache.
const sidecarsModule = "hack/tools/sidecars"

// Tools lists everything the cluster runs that is built from the module
// proxy, for Kubernetes release k8sVersion.
func Tools(k8sVersion string) []Tool {
	k := "k8s.io/kubernetes/cmd/"
	return []Tool{
		{
			Name: "kubernetes", Version: k8sVersion, Module: kubernetesModule(k8sVersion),
			Packages: []string{k + "kube-apiserver", k + "kube-controller-manager", k + "kube-scheduler", k + "kubelet", k + "kube-proxy", k + "kubectl"},
			Ldflags:  versionLdflags(k8sVersion),
			Binaries: []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"},
		},
		{
			Name: "csi-provisioner", Version: ProvisionerVersion, Module: "hack/tools/csi-provisioner",
			Packages: []string{"github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"},
			Ldflags:  "-s -w -X main.version=" + ProvisionerVersion,
			Binaries: []string{"csi-provisioner"},
		},
		{
			Name: "csi-resizer", Version: ResizerVersion, Module: sidecarsModule,
			Packages: []string{"github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer"},
			Ldflags:  "-s -w -X main.version=" + ResizerVersion,
			Binaries: []string{"csi-resizer"},
		},
		{
			// One upstream module, two commands: the node sidecar and the
			// cluster's common controller.
			Name: "external-snapshotter", Version: SnapshotterVersion, Module: sidecarsModule,
			Packages: []string{
				"github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter",
				"github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller",
			},
			Ldflags:  "-s -w -X main.version=" + SnapshotterVersion,
			Binaries: []string{"csi-snapshotter", "snapshot-controller"},
		},
		{
			Name: "dhpp-cri", Version: CRIToolVersion, Module: "hack/tools/cri",
			Packages: []string{"./dhpp-cri"}, Ldflags: "-s -w", Binaries: []string{"dhpp-cri"},
		},
	}
}

// E2ETool is the upstream Kubernetes e2e suite of release k8sVersion:
// e2e.test, the ginkgo CLI of the version the suite links (parallel runs
// need it) and agnhost (the test image's one binary). Only
// test/e2e/conformance needs it, so `up` does not build it.
func E2ETool(k8sVersion string) Tool {
	return Tool{
		Name: "kubernetes-e2e", Version: k8sVersion, Module: kubernetesModule(k8sVersion),
		Packages:    []string{"github.com/onsi/ginkgo/v2/ginkgo", "k8s.io/kubernetes/test/images/agnhost"},
		Ldflags:     versionLdflags(k8sVersion),
		Binaries:    []string{"ginkgo", "agnhost", "e2e.test"},
		TestPackage: "k8s.io/kubernetes/test/e2e", TestBinary: "e2e.test",
	}
}

// stampKey hashes everything that decides the build's output: the module's
// files (go.mod, go.sum, sources), the package list, ldflags and the Go
// version. A matching stamp makes the build a no-op.
func (t Tool) stampKey(repo string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", runtime.Version(), t.Version, strings.Join(t.Packages, " "), t.Ldflags)
	if t.TestPackage != "" {
		fmt.Fprintf(h, "test %s %s\n", t.TestPackage, t.TestBinary)
	}
	dir := filepath.Join(repo, t.Module)
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".go") || d.Name() == "go.mod" || d.Name() == "go.sum") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", dir, err)
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", f, err)
		}
		rel, _ := filepath.Rel(dir, f)
		fmt.Fprintf(h, "%s %d\n", rel, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Build builds the tool into binDir/<Name>-<Version> unless a stamp with the
// same key is there. It builds into a temporary directory and renames it, so
// an interrupted build never looks complete, and under a lock per tool
// (lockTool), so two processes never build the same tool at once: the second
// waits and finds the first one's stamp.
func (t Tool) Build(ctx context.Context, repo, binDir string) (cached bool, err error) {
	key, err := t.stampKey(repo)
	if err != nil {
		return false, err
	}
	dest := filepath.Join(binDir, t.Name+"-"+t.Version)
	stamp := filepath.Join(dest, ".stamp")
	stamped := func() bool {
		b, err := os.ReadFile(stamp)
		return err == nil && strings.TrimSpace(string(b)) == key
	}
	if stamped() {
		return true, nil
	}
	// Another process may be building it (make test's prebuild): wait for
	// it, then look again.
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", binDir, err)
	}
	unlock, err := lockTool(ctx, dest)
	if err != nil {
		return false, err
	}
	defer unlock()
	if stamped() {
		return true, nil
	}
	tmp := dest + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return false, fmt.Errorf("clean %s: %w", tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", tmp, err)
	}
	start := time.Now()
	klog.InfoS("building tool (cold: minutes; cached afterwards)", "tool", t.Name, "version", t.Version)
	builds := [][]string{append([]string{"build", "-trimpath", "-ldflags", t.Ldflags, "-o", tmp + "/"}, t.Packages...)}
	if t.TestPackage != "" {
		builds = append(builds, []string{"test", "-c", "-vet=off", "-trimpath", "-ldflags", t.Ldflags, "-o", filepath.Join(tmp, t.TestBinary), t.TestPackage})
	}
	for _, args := range builds {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = filepath.Join(repo, t.Module)
		// GOWORK=off: a go.work elsewhere must not merge this module's
		// replace lines with another's. GOTOOLCHAIN=local: never download a
		// toolchain.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOTOOLCHAIN=local", "GOFLAGS=-mod=readonly")
		if out, err := cmd.CombinedOutput(); err != nil {
			return false, fmt.Errorf("go %s %s in %s: %w\n%s", args[0], t.Name, t.Module, err, out)
		}
	}
	for _, b := range t.Binaries {
		if _, err := os.Stat(filepath.Join(tmp, b)); err != nil {
			return false, fmt.Errorf("build of %s produced no %s: %w", t.Name, b, err)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, ".stamp"), []byte(key+"\n"), 0o644); err != nil {
		return false, fmt.Errorf("write stamp: %w", err)
	}
	if err := os.RemoveAll(dest); err != nil {
		return false, fmt.Errorf("replace %s: %w", dest, err)
	}
	if err := os.Rename(tmp, dest); err != nil {
		return false, fmt.Errorf("install %s: %w", dest, err)
	}
	klog.InfoS("built tool", "tool", t.Name, "dir", dest, "took", time.Since(start).Round(time.Second))
	return false, nil
}

// LocalPathVersion is the rancher/local-path-provisioner release the cluster
// benchmark compares dhpp against (hack/tools/local-path-provisioner pins it).
const LocalPathVersion = "v0.0.30"

// LocalPathTool is the helper-pod provisioner the cluster benchmark
// (test/e2e/bench) compares dhpp against. It is not in Tools: nothing else
// runs it, and its module (its own client-go) is minutes of cold compile.
func LocalPathTool() Tool {
	return Tool{
		Name: "local-path-provisioner", Version: LocalPathVersion, Module: "hack/tools/local-path-provisioner",
		Packages: []string{"github.com/rancher/local-path-provisioner"},
		Ldflags:  "-s -w", Binaries: []string{"local-path-provisioner"},
	}
}

// LocalPathBin is the cached local-path-provisioner binary.
func (c Config) LocalPathBin() string {
	return filepath.Join(c.binDir(), "local-path-provisioner-"+LocalPathVersion, "local-path-provisioner")
}

// BuildTools builds every tool (sequentially: the machine has two cores and
// one Go build already uses both).
func BuildTools(ctx context.Context, cfg Config) error {
	for _, t := range Tools(cfg.KubernetesVersion) {
		if _, err := t.Build(ctx, cfg.RepoRoot, cfg.binDir()); err != nil {
			return err
		}
	}
	return nil
}
