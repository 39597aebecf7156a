package scale

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/dhpp-io/dhpp/test/e2e/cluster"
)

// render runs `kustomize build dir` with the project's cached kustomize
// (hack/deploytools installs it) and returns the objects by
// kind/namespace/name.
func render(t *testing.T, cfg cluster.Config, dir string) map[string]map[string]any {
	t.Helper()
	bin := filepath.Join(cfg.CacheDir, "bin", "kustomize")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("kustomize: %v (install the deploy tools first)", err)
		}
		t.Skipf("kustomize: %v", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "build", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kustomize build %s: %v\n%s", dir, err, stderr.String())
	}
	out := map[string]map[string]any{}
	for _, doc := range strings.Split(stdout.String(), "\n---\n") {
		var o map[string]any
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatal(err)
		}
		meta, _ := o["metadata"].(map[string]any)
		out[o["kind"].(string)+"/"+str(meta["namespace"])+"/"+str(meta["name"])] = o
	}
	return out
}

func str(v any) string { s, _ := v.(string); return s }

// podContainers are the containers of a workload object (nil for others).
func podContainers(o map[string]any) []any {
	spec, _ := o["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	pod, _ := tmpl["spec"].(map[string]any)
	cs, _ := pod["containers"].([]any)
	return cs
}

// TestShippedOverlay: the overlay the benchmark installs renders the same
// objects as the production base, differing only in the images (the local
// ones) and their pull policy (Never) — in particular with the base's
// arguments, not the e2e overlay's short periods.
func TestShippedOverlay(t *testing.T) {
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := writeShippedOverlay(cfg.RepoRoot, dir); err != nil {
		t.Fatal(err)
	}
	base := render(t, cfg, filepath.Join(cfg.RepoRoot, BaseDir))
	shipped := render(t, cfg, dir)
	local := render(t, cfg, filepath.Join(cfg.RepoRoot, cluster.LocalOverlay))
	if len(base) != len(shipped) {
		t.Fatalf("base has %d objects, the shipped overlay %d", len(base), len(shipped))
	}
	workloads := 0
	for key, b := range base {
		s, ok := shipped[key]
		if !ok {
			t.Errorf("%s: missing from the shipped overlay", key)
			continue
		}
		cs := podContainers(s)
		for i, c := range cs {
			c := c.(map[string]any)
			img := str(c["image"])
			if !strings.HasPrefix(img, "dhpp.local/") || c["imagePullPolicy"] != "Never" {
				t.Errorf("%s container %s: image %q pull policy %v, want a local image, never pulled", key, c["name"], img, c["imagePullPolicy"])
			}
			// The image and pull policy are the one difference allowed.
			bc := podContainers(b)[i].(map[string]any)
			for _, f := range []string{"image", "imagePullPolicy"} {
				if v, ok := bc[f]; ok {
					c[f] = v
				} else {
					delete(c, f)
				}
			}
		}
		if len(cs) > 0 {
			workloads++
		}
		if !reflect.DeepEqual(b, s) {
			t.Errorf("%s differs from the base beyond images and pull policy", key)
		}
	}
	if workloads == 0 {
		t.Fatal("no workloads in the base")
	}
	// The point of it: the local overlay's e2e periods are not installed.
	if reflect.DeepEqual(local["DaemonSet/dhpp-system/dhpp-node"], base["DaemonSet/dhpp-system/dhpp-node"]) {
		t.Error("the local overlay's DaemonSet equals the base's: the test proves nothing")
	}
}
