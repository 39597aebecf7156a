package scale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"

	"github.com/dhpp-io/dhpp/test/e2e/bench"
	"github.com/dhpp-io/dhpp/test/e2e/cluster"
)

// BaseDir is the kustomization whose DaemonSet arguments are what dhpp
// ships. The local overlay the cluster installs shortens the orphan check
// to 5 s (and more) for the e2e scenarios; a cost measurement needs the
// shipped values.
const BaseDir = "deploy/kustomize/base"

// baseArgs returns the arguments of each container of the node DaemonSet in
// the kustomize output read from r.
func baseArgs(r io.Reader) (map[string][]string, error) {
	d := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	for {
		var ds appsv1.DaemonSet
		err := d.Decode(&ds)
		if errors.Is(err, io.EOF) {
			return nil, errors.New("no DaemonSet dhpp-node in the base")
		}
		if err != nil {
			return nil, fmt.Errorf("decode the base: %w", err)
		}
		if ds.Kind != "DaemonSet" || ds.Name != "dhpp-node" {
			continue
		}
		out := map[string][]string{}
		for _, c := range ds.Spec.Template.Spec.Containers {
			out[c.Name] = c.Args
		}
		return out, nil
	}
}

// useShippedArgs sets the running node DaemonSet's container arguments to
// the base's, keeping the local overlay's images, and waits for the rollout.
func useShippedArgs(ctx context.Context, cfg cluster.Config, c kubernetes.Interface, out io.Writer) error {
	y, err := cfg.Kubectl(ctx, "kustomize", filepath.Join(cfg.RepoRoot, BaseDir))
	if err != nil {
		return fmt.Errorf("kustomize the base: %w", err)
	}
	args, err := baseArgs(strings.NewReader(y))
	if err != nil {
		return err
	}
	ds, err := c.AppsV1().DaemonSets(bench.DHPPNamespace).Get(ctx, "dhpp-node", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("dhpp-node DaemonSet: %w", err)
	}
	changed := false
	for i, ct := range ds.Spec.Template.Spec.Containers {
		if a, ok := args[ct.Name]; ok && strings.Join(a, "\x00") != strings.Join(ct.Args, "\x00") {
			ds.Spec.Template.Spec.Containers[i].Args = a
			changed = true
		}
	}
	if !changed {
		return nil
	}
	fmt.Fprintln(out, "setting the node DaemonSet's arguments to the shipped ones ("+BaseDir+")")
	if _, err := c.AppsV1().DaemonSets(bench.DHPPNamespace).Update(ctx, ds, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update dhpp-node: %w", err)
	}
	if _, err := cfg.Kubectl(ctx, "-n", bench.DHPPNamespace, "rollout", "status", "daemonset/dhpp-node", "--timeout=5m"); err != nil {
		return fmt.Errorf("rollout of the shipped arguments: %w", err)
	}
	return nil
}
