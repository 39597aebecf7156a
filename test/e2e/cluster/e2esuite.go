package cluster

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildE2ETool builds (or finds cached) the upstream e2e suite of the
// cluster's Kubernetes version: e2e.test, ginkgo and agnhost (E2EBin).
func BuildE2ETool(ctx context.Context, cfg Config) error {
	_, err := E2ETool(cfg.KubernetesVersion).Build(ctx, cfg.RepoRoot, cfg.binDir())
	return err
}

// E2EImageRefs are the image references the suite's e2e.test runs
// (--list-images).
func E2EImageRefs(ctx context.Context, cfg Config) ([]string, error) {
	out, err := exec.CommandContext(ctx, cfg.E2EBin("e2e.test"), "--list-images").Output()
	if err != nil {
		return nil, fmt.Errorf("e2e.test --list-images: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// BuildE2EImages runs hack/images for the stand-ins of refs (those it has a
// recipe for) and returns the tarballs.
func BuildE2EImages(ctx context.Context, cfg Config, refs []string) ([]string, error) {
	dir := filepath.Join(cfg.imagesDir(), "e2e-"+cfg.KubernetesVersion)
	cmd := exec.CommandContext(ctx, "go", "run", "./hack/images", "-out", dir,
		"-agnhost", cfg.E2EBin("agnhost"), "-e2e-images", strings.Join(refs, ","))
	cmd.Dir = cfg.RepoRoot
	cmd.Env = append(hostEnv(), "GOTOOLCHAIN=local")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("hack/images -e2e-images: %w\n%s", err, stderr.String())
	}
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Split(line, "\t"); len(f) == 3 {
			files = append(files, f[2])
		}
	}
	return files, nil
}

// ImportImages imports image tarballs into the containerd of every node of
// the running cluster.
func ImportImages(ctx context.Context, cfg Config, files []string) error {
	st, err := loadState(cfg.statePath())
	if err != nil {
		return err
	}
	if st == nil || !st.Ready {
		return fmt.Errorf("no running cluster (state %s)", cfg.statePath())
	}
	for _, n := range st.Nodes {
		for _, f := range files {
			if _, err := run(ctx, "ctr", "--address", cfg.criSocket(n.Spec.Name), "-n", "k8s.io", "images", "import", f); err != nil {
				return fmt.Errorf("import %s on %s: %w", filepath.Base(f), n.Spec.Name, err)
			}
		}
	}
	return nil
}
