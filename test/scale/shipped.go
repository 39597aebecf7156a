package scale

import (
	"fmt"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"github.com/dhpp-io/dhpp/test/e2e/cluster"
)

// BaseDir is dhpp's production install: what users apply, and so what the
// benchmark measures.
const BaseDir = "deploy/kustomize/base"

// ShippedDir is where Run writes the overlay it installs, under the
// repository: the base with only the local cluster's necessities changed.
const ShippedDir = "_output/scale/shipped"

// pullNever is the local overlay's patch that keeps the kubelets from
// pulling the images: they exist only in the nodes' image stores.
const pullNever = "pull-never.yaml"

// localImages is the part of the local overlay's kustomization the shipped
// install keeps: its image renames (to the images built on this machine).
type localImages struct {
	Images []map[string]any `json:"images"`
}

// writeShippedOverlay writes into dir a kustomization of BaseDir that
// differs from it in the two things this cluster cannot do without: the
// images are the locally built ones, renamed exactly as the local overlay
// renames them, and never pulled (no registry), with the local overlay's
// own patch. Every argument stays the base's: the 10 min orphan check, the
// trash retention and orphan grace, the csi-resizer's leader election, the
// controller's grace periods. (The local overlay shortens these for the e2e
// scenarios; a cost measured with them is not what users pay.)
func writeShippedOverlay(repoRoot, dir string) error {
	local := filepath.Join(repoRoot, cluster.LocalOverlay)
	raw, err := os.ReadFile(filepath.Join(local, "kustomization.yaml"))
	if err != nil {
		return err
	}
	var li localImages
	if err := yaml.Unmarshal(raw, &li); err != nil {
		return fmt.Errorf("%s: %w", cluster.LocalOverlay, err)
	}
	if len(li.Images) == 0 {
		return fmt.Errorf("%s renames no images: nothing says which local images to run", cluster.LocalOverlay)
	}
	patch, err := os.ReadFile(filepath.Join(local, pullNever))
	if err != nil {
		return err
	}
	base, err := filepath.Rel(dir, filepath.Join(repoRoot, BaseDir))
	if err != nil {
		return err
	}
	k := map[string]any{
		"apiVersion": "kustomize.config.k8s.io/v1beta1",
		"kind":       "Kustomization",
		"resources":  []string{base},
		"images":     li.Images,
		"patches":    []map[string]string{{"path": pullNever}},
	}
	out, err := yaml.Marshal(k)
	if err != nil {
		return err
	}
	head := "# Written by test/scale (make bench-scale): " + BaseDir + " with the local\n" +
		"# overlay's images and " + pullNever + ", nothing else.\n"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, pullNever), patch, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "kustomization.yaml"), append([]byte(head), out...), 0o644)
}
