package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
)

// readmeOverlay is the kustomization the README's "Install on your
// cluster" writes with a heredoc.
var readmeOverlay = regexp.MustCompile(`(?s)cat > my-dhpp/kustomization.yaml <<'YAML'\n(.*?)\nYAML\n`)

// TestReadmeInstall follows the README's "Install on your cluster" step 3:
// its kustomize overlay, written beside this repository's deploy/, and its
// Helm flags both run the driver and the controller from the user's image,
// and the overlay's commented-out monitoring Component works when enabled.
func TestReadmeInstall(t *testing.T) {
	const image = "registry.example.com/dhpp/dhpp-driver:v0.1.0"
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := readmeOverlay.FindSubmatch(readme)
	if m == nil {
		t.Fatal("README lacks the my-dhpp/kustomization.yaml heredoc of \"Install on your cluster\"")
	}
	here, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(here, filepath.Join(dir, "deploy")); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "my-dhpp")
	if err := os.Mkdir(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(text string) {
		if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	checkImages := func(t *testing.T, objs map[string]object) {
		t.Helper()
		ds := get[*appsv1.DaemonSet](t, objs, "apps/DaemonSet/"+namespace+"/dhpp-node")
		if c := container(t, ds, "dhpp-driver"); c.Image != image {
			t.Errorf("dhpp-driver image = %q, want %q", c.Image, image)
		}
		dep := get[*appsv1.Deployment](t, objs, "apps/Deployment/"+namespace+"/dhpp-controller")
		if c := dep.Spec.Template.Spec.Containers[0]; c.Image != image {
			t.Errorf("dhpp-controller image = %q, want %q", c.Image, image)
		}
	}

	t.Run("kustomize", func(t *testing.T) {
		write(string(m[1]))
		checkImages(t, parse(t, kustomizeBuild(t, overlay)))
	})
	t.Run("kustomize with monitoring", func(t *testing.T) {
		enabled := strings.NewReplacer("# components:", "components:", "#   - ../deploy/monitoring", "  - ../deploy/monitoring").Replace(string(m[1]))
		if enabled == string(m[1]) {
			t.Fatal("README overlay lacks the commented-out monitoring component")
		}
		write(enabled)
		rest, mon := splitMonitoring(t, kustomizeBuild(t, overlay))
		checkImages(t, parse(t, rest))
		if len(mon) != 4 {
			t.Errorf("%d monitoring objects, want 2 PodMonitors and 2 PrometheusRules", len(mon))
		}
	})
	t.Run("helm", func(t *testing.T) {
		flags := []string{"images.driver.repository=registry.example.com/dhpp/dhpp-driver", "images.driver.tag=v0.1.0"}
		for _, f := range flags {
			if !strings.Contains(string(readme), "--set "+f) {
				t.Errorf("README's helm install lacks --set %s", f)
			}
		}
		checkImages(t, parse(t, helmTemplate(t, "--set", flags[0], "--set", flags[1])))
	})
}
