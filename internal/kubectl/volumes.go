package kubectl

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/poolstatus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Volume is one row of `kubectl dhpp volumes` (and its -o json item).
type Volume struct {
	Namespace string `json:"namespace,omitempty"`
	Claim     string `json:"claim,omitempty"`
	PV        string `json:"pv"`
	Phase     string `json:"phase"`
	Node      string `json:"node"`
	Pool      string `json:"pool"`
	Backend   string `json:"backend,omitempty"`
	SizeBytes int64  `json:"sizeBytes"`
	// UsedBytes is what the kubelet last measured; nil when the volume is
	// not mounted on a running pod (or its node did not answer).
	UsedBytes *int64 `json:"usedBytes,omitempty"`
	// Health is the pool's health state (Healthy, Failing, Fenced), or
	// Unknown when the pool publishes no status.
	Health string `json:"health"`
}

func volumes(ctx context.Context, env Env, o Options) error {
	pvs, err := env.Kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list PersistentVolumes: %w", err)
	}
	ps, err := listPools(ctx, env, "")
	if err != nil {
		return err
	}
	health := map[string]string{}
	for _, p := range ps {
		health[p.Spec.Node+"/"+p.Spec.Pool] = p.Status.Health.State
	}
	var vols []Volume
	for _, pv := range pvs.Items {
		v, ok := volumeOf(&pv)
		if !ok || (o.Node != "" && v.Node != o.Node) || (!env.AllNamespaces && v.Namespace != env.Namespace) {
			continue
		}
		v.Health = health[v.Node+"/"+v.Pool]
		if v.Health == "" {
			v.Health = "Unknown"
		}
		vols = append(vols, v)
	}
	usage := nodeUsage(ctx, env, vols)
	for i := range vols {
		if u, ok := usage[vols[i].Namespace+"/"+vols[i].Claim]; ok && vols[i].Claim != "" {
			vols[i].UsedBytes = &u
		}
	}
	if err := sortVolumes(vols, o.SortBy); err != nil {
		return err
	}
	if o.Output == "json" || o.Output == "yaml" {
		return structured(env.Out, o.Output, map[string]any{"items": vols})
	}
	if len(vols) == 0 {
		where := "in namespace " + env.Namespace
		if env.AllNamespaces {
			where = "in any namespace"
		}
		fmt.Fprintf(env.Out, "No dhpp volumes found %s.\n", where)
		return nil
	}
	headers := []string{"NAMESPACE", "CLAIM", "NODE", "POOL", "BACKEND", "SIZE", "USED", "HEALTH"}
	if o.Output == "wide" {
		headers = append(headers, "PV", "PHASE")
	}
	rows := make([][]string, 0, len(vols))
	for _, v := range vols {
		used := ""
		if v.UsedBytes != nil {
			used = poolstatus.Bytes(*v.UsedBytes)
		}
		r := []string{v.Namespace, v.Claim, v.Node, v.Pool, v.Backend, poolstatus.Bytes(v.SizeBytes), used, v.Health}
		if o.Output == "wide" {
			r = append(r, v.PV, v.Phase)
		}
		rows = append(rows, r)
	}
	return table(env.Out, headers, rows)
}

// volumeOf reads a dhpp PV: its volume handle is <node>/<pool>/<name>.
func volumeOf(pv *corev1.PersistentVolume) (Volume, bool) {
	csi := pv.Spec.CSI
	if csi == nil || csi.Driver != dhpp.DriverName {
		return Volume{}, false
	}
	parts := strings.SplitN(csi.VolumeHandle, "/", 3)
	if len(parts) != 3 {
		return Volume{}, false
	}
	v := Volume{PV: pv.Name, Phase: string(pv.Status.Phase), Node: parts[0], Pool: parts[1],
		Backend: csi.VolumeAttributes[dhpp.ContextBackend]}
	if q, ok := pv.Spec.Capacity[corev1.ResourceStorage]; ok {
		v.SizeBytes = q.Value()
	}
	if c := pv.Spec.ClaimRef; c != nil {
		v.Namespace, v.Claim = c.Namespace, c.Name
	}
	return v, true
}

// nodeUsage asks each node that holds a listed volume for its claims'
// usage; a node that does not answer leaves its volumes' usage empty.
func nodeUsage(ctx context.Context, env Env, vols []Volume) map[string]int64 {
	out := map[string]int64{}
	if env.Usage == nil {
		return out
	}
	seen := map[string]bool{}
	for _, v := range vols {
		if seen[v.Node] {
			continue
		}
		seen[v.Node] = true
		u, err := env.Usage(ctx, v.Node)
		if err != nil {
			continue
		}
		for k, b := range u {
			out[k] = b
		}
	}
	return out
}

func sortVolumes(vols []Volume, by string) error {
	key := func(v Volume) string { return v.Namespace + "/" + v.Claim + "/" + v.PV }
	var less func(a, b Volume) bool
	switch by {
	case "", "namespace", "claim":
		less = func(a, b Volume) bool { return key(a) < key(b) }
	case "node":
		less = func(a, b Volume) bool {
			if a.Node != b.Node {
				return a.Node < b.Node
			}
			return key(a) < key(b)
		}
	case "size":
		less = func(a, b Volume) bool {
			if a.SizeBytes != b.SizeBytes {
				return a.SizeBytes > b.SizeBytes
			}
			return key(a) < key(b)
		}
	case "used":
		used := func(v Volume) int64 {
			if v.UsedBytes == nil {
				return -1
			}
			return *v.UsedBytes
		}
		less = func(a, b Volume) bool {
			if used(a) != used(b) {
				return used(a) > used(b)
			}
			return key(a) < key(b)
		}
	default:
		return fmt.Errorf("unknown --sort-by %q: use namespace, node, size or used", by)
	}
	sort.SliceStable(vols, func(i, j int) bool { return less(vols[i], vols[j]) })
	return nil
}

// kubeletUsage reads the kubelet's stats summary through the API server's
// node proxy: the used bytes of every claim mounted by a running pod.
func kubeletUsage(k kubernetes.Interface) func(ctx context.Context, node string) (map[string]int64, error) {
	return func(ctx context.Context, node string) (map[string]int64, error) {
		raw, err := k.CoreV1().RESTClient().Get().Resource("nodes").Name(node).SubResource("proxy").Suffix("stats/summary").DoRaw(ctx)
		if err != nil {
			return nil, err
		}
		return parseSummary(raw)
	}
}

// parseSummary reads the claims' usedBytes from a kubelet stats summary.
func parseSummary(raw []byte) (map[string]int64, error) {
	var s struct {
		Pods []struct {
			Volume []struct {
				UsedBytes *int64 `json:"usedBytes"`
				PVCRef    *struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace"`
				} `json:"pvcRef"`
			} `json:"volume"`
		} `json:"pods"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("kubelet stats summary: %w", err)
	}
	out := map[string]int64{}
	for _, p := range s.Pods {
		for _, v := range p.Volume {
			if v.PVCRef != nil && v.UsedBytes != nil {
				out[v.PVCRef.Namespace+"/"+v.PVCRef.Name] = *v.UsedBytes
			}
		}
	}
	return out, nil
}
