package deploy

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/dhpp-io/dhpp/test/e2e/cluster"
)

// TestChartKubeVersion checks that the chart's kubeVersion admits exactly
// the supported Kubernetes minors, the ones CI runs (KubernetesVersions,
// oldest to newest): helm renders the chart for each of them and for the
// minors in between, and refuses the minor below the oldest and the one
// above the newest.
func TestChartKubeVersion(t *testing.T) {
	oldest := minor(t, cluster.KubernetesVersions[0])
	newest := minor(t, cluster.KubernetesVersions[len(cluster.KubernetesVersions)-1])
	helm := tool(t, "helm")
	for m := oldest - 1; m <= newest+1; m++ {
		kube := fmt.Sprintf("1.%d.0", m)
		t.Run(kube, func(t *testing.T) {
			out, err := exec.Command(helm, "template", "dhpp", "helm/dhpp", "--namespace", namespace, "--kube-version", kube).CombinedOutput()
			supported := m >= oldest && m <= newest
			switch {
			case supported && err != nil:
				t.Errorf("Kubernetes %s is supported, but helm refuses the chart: %v\n%s", kube, err, out)
			case !supported && err == nil:
				t.Errorf("Kubernetes %s is not supported (v1.%d to v1.%d), but helm renders the chart", kube, oldest, newest)
			case !supported && !strings.Contains(string(out), "kubeVersion"):
				t.Errorf("Kubernetes %s: helm fails for another reason than kubeVersion: %s", kube, out)
			}
		})
	}
}

// minor is 33 for "v1.33.13".
func minor(t *testing.T, version string) int {
	t.Helper()
	parts := strings.Split(strings.TrimPrefix(version, "v"), ".")
	if len(parts) < 2 || parts[0] != "1" {
		t.Fatalf("Kubernetes version %q is not v1.X.Y", version)
	}
	m, err := strconv.Atoi(parts[1])
	if err != nil {
		t.Fatalf("Kubernetes version %q: %v", version, err)
	}
	return m
}
