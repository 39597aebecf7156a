package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// PrebuildTools lists the tool builds the storage suite (make conformance)
// needs on versions that the scenario e2e on e2eVersion does not build
// itself: every version's E2ETool, and Tools(v) of the other versions. A
// cache directory shared by several versions (the sidecars, dhpp-cri) is
// left out when e2eVersion's Tools has it, and listed once otherwise. The
// order is the order conformance runs the versions in, so what it needs
// first is built first.
func PrebuildTools(e2eVersion string, versions []string) []Tool {
	seen := map[string]bool{}
	for _, t := range Tools(e2eVersion) {
		seen[t.dirName()] = true
	}
	var out []Tool
	add := func(t Tool) {
		if !seen[t.dirName()] {
			seen[t.dirName()] = true
			out = append(out, t)
		}
	}
	for _, v := range versions {
		for _, t := range Tools(v) {
			add(t)
		}
		add(E2ETool(v))
	}
	return out
}

// Prebuild builds PrebuildTools for cfg's Kubernetes version (the one the
// scenario e2e runs) and versions, one after the other, and says on out
// what each took. make test runs it in the background, at nice 19, while
// the scenario e2e mostly waits on the cluster.
func Prebuild(ctx context.Context, cfg Config, versions []string, out io.Writer) error {
	for _, v := range versions {
		if !slices.Contains(KubernetesVersions, v) {
			return fmt.Errorf("Kubernetes %q: supported versions are %v", v, KubernetesVersions)
		}
	}
	for _, t := range PrebuildTools(cfg.KubernetesVersion, versions) {
		start := time.Now()
		cached, err := t.Build(ctx, cfg.RepoRoot, cfg.binDir())
		if err != nil {
			return err
		}
		how := "built"
		if cached {
			how = "cached"
		}
		fmt.Fprintf(out, "%s %s-%s (%s)\n", how, t.Name, t.Version, time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

// dirName is the tool's cache directory under the bin directory.
func (t Tool) dirName() string { return t.Name + "-" + t.Version }

// lockTool takes the build lock of the tool cache directory dest (a file
// dest.lock beside it), waiting while another process builds the same tool:
// make test's background prebuild and a foreground build must never write
// the same temporary directory. The caller then checks the stamp again.
func lockTool(ctx context.Context, dest string) (unlock func(), err error) {
	f, err := os.OpenFile(dest+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock: %w", err)
	}
	for said := false; ; said = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s.lock: %w", dest, err)
		}
		if !said {
			klog.InfoS("waiting for another process's build of the tool", "dir", dest)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
