// Package deploy holds no Go code: this test keeps deploy/'s two renderings
// (kustomize base and Helm chart) in step and checks the facts the driver
// depends on, so a drift or a typo fails `go test` instead of a cluster.
package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
)

const (
	namespace      = "dhpp-system"
	serviceAccount = "dhpp-node"
	controllerSA   = "dhpp-controller"
	installScript  = "hack/deploytools/install.sh"
)

// helmOnlyLabels are Helm's bookkeeping labels; the kustomize base has none
// of them, and they say nothing about what the objects do.
var helmOnlyLabels = []string{
	"helm.sh/chart",
	"app.kubernetes.io/managed-by",
	"app.kubernetes.io/instance",
	"app.kubernetes.io/version",
}

// tool finds a rendering tool built by install.sh. A missing tool fails the
// test under CI=true (CI must really check the manifests) and skips it
// locally with the command that fixes it.
func tool(t *testing.T, name string) string {
	t.Helper()
	cache := os.Getenv("DHPP_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatalf("locate home directory for the tool cache: %v", err)
		}
		cache = filepath.Join(home, ".cache", "dhpp")
	}
	p := filepath.Join(cache, "bin", name)
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p
	}
	msg := fmt.Sprintf("%s not found at %s: run %s first", name, p, installScript)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// run executes a rendering command and returns its stdout.
func run(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes()
}

func kustomizeBuild(t *testing.T, dir string) []byte {
	return run(t, tool(t, "kustomize"), "build", dir)
}

// helmTemplate renders the chart as `helm install -n dhpp-system` would,
// with the CRDs of its crds/ directory, which `helm install` creates first
// (unless extra has --skip-crds, as `helm install --skip-crds`).
// --kube-version pins the capabilities so the result does not depend on
// what the helm binary was built against.
func helmTemplate(t *testing.T, extra ...string) []byte {
	args := []string{"template", "dhpp", "helm/dhpp", "--namespace", namespace, "--kube-version", "1.33.0"}
	if !slices.Contains(extra, "--skip-crds") {
		args = append(args, "--include-crds")
	}
	args = append(args, extra...)
	return run(t, tool(t, "helm"), args...)
}

// object is one rendered manifest in both its generic form (for comparing
// renderings) and its typed form (for checking facts).
type object struct {
	key   string         // group/Kind/namespace/name
	raw   map[string]any // as rendered
	typed runtime.Object // strictly decoded with client-go's scheme
}

// strictDecoder rejects unknown and duplicate fields, so a misspelt field
// name fails here instead of being silently dropped by the API server. It
// knows client-go's kinds and the VolumeSnapshot API.
var strictDecoder = func() runtime.Decoder {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := snapshotv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// parse splits a multi-document YAML stream and decodes every object.
func parse(t *testing.T, stream []byte) map[string]object {
	t.Helper()
	objs, err := parseStream(stream)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func parseStream(stream []byte) (map[string]object, error) {
	out := map[string]object{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("split YAML stream: %w", err)
		}
		var raw map[string]any
		if err := yaml.Unmarshal(doc, &raw); err != nil {
			return nil, fmt.Errorf("parse YAML document: %w\n%s", err, doc)
		}
		if len(raw) == 0 {
			continue // empty document, e.g. a template rendered to nothing
		}
		typed, gvk, err := strictDecoder.Decode(doc, nil, nil)
		if runtime.IsNotRegisteredError(err) && raw["kind"] == "CustomResourceDefinition" {
			// client-go has no CRD types; the DhppPool CRD is checked
			// against its Go types in pkg/apis/dhpp/v1alpha1, the
			// VolumeSnapshot CRDs against upstream's (snapshot_test.go).
			u := &unstructured.Unstructured{Object: raw}
			typed, gvk, err = u, ptr.To(u.GroupVersionKind()), nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode with client-go's scheme: %w\n%s", err, doc)
		}
		meta, _ := raw["metadata"].(map[string]any)
		key := fmt.Sprintf("%s/%s/%v/%v", gvk.Group, gvk.Kind, meta["namespace"], meta["name"])
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("object %s rendered twice", key)
		}
		out[key] = object{key: key, raw: raw, typed: typed}
	}
}

// normalize drops what legitimately differs between the renderings.
func normalize(raw map[string]any) map[string]any {
	b, _ := yaml.Marshal(raw) // deep copy through YAML keeps the types yaml.Unmarshal made
	var c map[string]any
	_ = yaml.Unmarshal(b, &c)
	if meta, ok := c["metadata"].(map[string]any); ok {
		if labels, ok := meta["labels"].(map[string]any); ok {
			for _, l := range helmOnlyLabels {
				delete(labels, l)
			}
			// Helm installs files in crds/ verbatim; kustomize's labels
			// transformer labels the same CRDs as part of dhpp.
			if isSnapshotCRD(c) {
				delete(labels, "app.kubernetes.io/name")
				delete(labels, "app.kubernetes.io/part-of")
			}
			if len(labels) == 0 {
				delete(meta, "labels")
			}
		}
	}
	return c
}

func keys(m map[string]object) []string {
	k := make([]string, 0, len(m))
	for key := range m {
		k = append(k, key)
	}
	sort.Strings(k)
	return k
}

// TestHelmMatchesKustomize is the core check: the chart with default values
// and the kustomize base describe the same objects with the same specs.
func TestHelmMatchesKustomize(t *testing.T) {
	kust := parse(t, kustomizeBuild(t, "kustomize/base"))
	helm := parse(t, helmTemplate(t))

	// Helm does not create its release namespace (a chart that does breaks
	// `helm install --create-namespace`); kustomize users get it from base.
	nsKey := "/Namespace/<nil>/" + namespace
	if _, ok := kust[nsKey]; !ok {
		t.Errorf("kustomize base lacks the %s Namespace", namespace)
	}
	delete(kust, nsKey)

	if diff := cmp.Diff(keys(kust), keys(helm)); diff != "" {
		t.Fatalf("the renderings have different objects (-kustomize +helm):\n%s", diff)
	}
	for _, k := range keys(kust) {
		if diff := cmp.Diff(normalize(kust[k].raw), normalize(helm[k].raw)); diff != "" {
			t.Errorf("%s differs (-kustomize +helm):\n%s", k, diff)
		}
	}
}

// get returns the typed object of kind T with the given key, failing if absent.
func get[T runtime.Object](t *testing.T, objs map[string]object, key string) T {
	t.Helper()
	o, ok := objs[key]
	if !ok {
		t.Fatalf("object %s not rendered; have %v", key, keys(objs))
	}
	typed, ok := o.typed.(T)
	if !ok {
		t.Fatalf("object %s decoded as %T", key, o.typed)
	}
	return typed
}

func container(t *testing.T, ds *appsv1.DaemonSet, name string) corev1.Container {
	t.Helper()
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("DaemonSet has no container %q", name)
	return corev1.Container{}
}

func hasEnv(c corev1.Container, name, fieldPath string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == fieldPath {
			return true
		}
	}
	return false
}

// TestKeyFacts checks, on both renderings, what the driver and the e2e rely
// on. Each rendering is checked by the same function, so a fact broken in
// only one of them is caught even if the comparison above were loosened.
func TestKeyFacts(t *testing.T) {
	renderings := []struct {
		name   string
		render func(t *testing.T) []byte
	}{
		{"kustomize base", func(t *testing.T) []byte { return kustomizeBuild(t, "kustomize/base") }},
		{"helm defaults", func(t *testing.T) []byte { return helmTemplate(t) }},
	}
	for _, r := range renderings {
		t.Run(r.name, func(t *testing.T) {
			objs := parse(t, r.render(t))
			checkKeyFacts(t, objs)
		})
	}
}

func checkKeyFacts(t *testing.T, objs map[string]object) {
	t.Helper()
	drv := get[*storagev1.CSIDriver](t, objs, "storage.k8s.io/CSIDriver/<nil>/"+dhpp.DriverName)
	s := drv.Spec
	if s.AttachRequired == nil || *s.AttachRequired ||
		s.PodInfoOnMount == nil || !*s.PodInfoOnMount ||
		s.StorageCapacity == nil || !*s.StorageCapacity ||
		s.FSGroupPolicy == nil || *s.FSGroupPolicy != storagev1.FileFSGroupPolicy ||
		!slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) ||
		s.RequiresRepublish == nil || *s.RequiresRepublish {
		t.Errorf("CSIDriver spec = %+v; want attachRequired=false podInfoOnMount=true storageCapacity=true fsGroupPolicy=File modes=[Persistent] requiresRepublish=false", s)
	}

	sc := get[*storagev1.StorageClass](t, objs, "storage.k8s.io/StorageClass/<nil>/hostpath-dynamic")
	if sc.Provisioner != dhpp.DriverName ||
		sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer ||
		sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion ||
		sc.ReclaimPolicy == nil || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		t.Errorf("StorageClass = provisioner %q binding %v expansion %v reclaim %v; want %s WaitForFirstConsumer true Delete",
			sc.Provisioner, sc.VolumeBindingMode, sc.AllowVolumeExpansion, sc.ReclaimPolicy, dhpp.DriverName)
	}

	ds := get[*appsv1.DaemonSet](t, objs, "apps/DaemonSet/"+namespace+"/dhpp-node")
	pod := ds.Spec.Template.Spec
	if pod.ServiceAccountName != serviceAccount || pod.PriorityClassName != "system-node-critical" {
		t.Errorf("DaemonSet pod: serviceAccount %q priorityClass %q", pod.ServiceAccountName, pod.PriorityClassName)
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	}) {
		t.Errorf("DaemonSet does not tolerate every taint: %+v", pod.Tolerations)
	}
	if ds.Spec.Template.Annotations["prometheus.io/scrape"] != "true" || ds.Spec.Template.Annotations["prometheus.io/port"] != "9808" {
		t.Errorf("pod scrape annotations = %v", ds.Spec.Template.Annotations)
	}

	d := container(t, ds, "dhpp-driver")
	for _, a := range []string{
		"--endpoint=unix:///csi/csi.sock", "--node-id=$(NODE_NAME)", "--pool=default=/mnt/dhpp-data/dhpp",
		"--kubelet-registration-path=/var/lib/kubelet/plugins/" + dhpp.DriverName + "/csi.sock",
		"--plugin-registration-dir=/registration", "--metrics-address=:9808", "--trash-retention=15m",
	} {
		if !slices.Contains(d.Args, a) {
			t.Errorf("dhpp-driver args %q lack %q", d.Args, a)
		}
	}
	if d.SecurityContext == nil || d.SecurityContext.Privileged == nil || !*d.SecurityContext.Privileged {
		t.Errorf("dhpp-driver is not privileged")
	}
	if !hasEnv(d, "NODE_NAME", "spec.nodeName") {
		t.Errorf("dhpp-driver lacks NODE_NAME from spec.nodeName")
	}
	if len(d.Ports) != 1 || d.Ports[0].Name != "http" || d.Ports[0].ContainerPort != 9808 {
		t.Errorf("dhpp-driver ports = %+v, want http:9808", d.Ports)
	}
	if d.LivenessProbe == nil || d.LivenessProbe.HTTPGet == nil || d.LivenessProbe.HTTPGet.Path != "/healthz" || d.LivenessProbe.HTTPGet.Port.String() != "http" {
		t.Errorf("dhpp-driver liveness probe = %+v, want GET /healthz on http", d.LivenessProbe)
	}
	if d.ReadinessProbe == nil || d.ReadinessProbe.HTTPGet == nil || d.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("dhpp-driver readiness probe = %+v, want GET /readyz", d.ReadinessProbe)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range d.VolumeMounts {
		mounts[m.MountPath] = m
	}
	bidi := corev1.MountPropagationBidirectional
	for path, prop := range map[string]*corev1.MountPropagationMode{"/csi": nil, "/registration": nil, "/var/lib/kubelet": &bidi, "/mnt/dhpp-data": &bidi, "/dev": nil} {
		m, ok := mounts[path]
		if !ok {
			t.Errorf("dhpp-driver does not mount %s", path)
			continue
		}
		if prop != nil && (m.MountPropagation == nil || *m.MountPropagation != *prop) {
			t.Errorf("dhpp-driver mount %s propagation = %v, want %s", path, m.MountPropagation, *prop)
		}
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	if hostPaths["socket-dir"] != "/var/lib/kubelet/plugins/"+dhpp.DriverName || hostPaths["registration-dir"] != "/var/lib/kubelet/plugins_registry" {
		t.Errorf("socket/registration hostPaths = %v", hostPaths)
	}

	p := container(t, ds, "csi-provisioner")
	for _, a := range []string{
		"--csi-address=/csi/csi.sock", "--node-deployment", "--enable-capacity", "--capacity-ownerref-level=1",
		"--capacity-poll-interval=10s", "--feature-gates=Topology=true", "--strict-topology", "--immediate-topology=false",
		"--extra-create-metadata",
	} {
		if !slices.Contains(p.Args, a) {
			t.Errorf("csi-provisioner args %q lack %q", p.Args, a)
		}
	}
	for env, path := range map[string]string{"NODE_NAME": "spec.nodeName", "NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"} {
		if !hasEnv(p, env, path) {
			t.Errorf("csi-provisioner lacks %s from %s (needed by --node-deployment / --capacity-ownerref-level)", env, path)
		}
	}
	rz := container(t, ds, "csi-resizer")
	for _, a := range []string{"--csi-address=/csi/csi.sock", "--leader-election", "--leader-election-namespace=$(NAMESPACE)"} {
		if !slices.Contains(rz.Args, a) {
			t.Errorf("csi-resizer args %q lack %q", rz.Args, a)
		}
	}

	get[*corev1.ServiceAccount](t, objs, "/ServiceAccount/"+namespace+"/"+serviceAccount)
	checkRBAC(t, objs, serviceAccount, required, forbidden)
	checkController(t, objs, d.Image)
	checkSnapshots(t, objs, ds)
}

// checkController: dhpp-controller runs from the driver's image, 2 replicas
// with leader election, its own least-privilege ServiceAccount.
func checkController(t *testing.T, objs map[string]object, driverImage string) {
	t.Helper()
	dep := get[*appsv1.Deployment](t, objs, "apps/Deployment/"+namespace+"/dhpp-controller")
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Errorf("dhpp-controller replicas = %v, want 2", dep.Spec.Replicas)
	}
	pod := dep.Spec.Template.Spec
	if pod.ServiceAccountName != controllerSA {
		t.Errorf("dhpp-controller serviceAccount %q, want %q", pod.ServiceAccountName, controllerSA)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("dhpp-controller has %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image != driverImage || !slices.Equal(c.Command, []string{"/dhpp-controller"}) {
		t.Errorf("dhpp-controller image %q command %q; want the driver's image %q and /dhpp-controller", c.Image, c.Command, driverImage)
	}
	for _, a := range []string{"--leader-election", "--leader-election-namespace=$(POD_NAMESPACE)", "--grace-period=2m", "--fenced-pool-limit=10m", "--metrics-address=:9808"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("dhpp-controller args %q lack %q", c.Args, a)
		}
	}
	if slices.Contains(c.Args, "--dry-run") {
		t.Errorf("dhpp-controller runs --dry-run by default")
	}
	if !hasEnv(c, "POD_NAMESPACE", "metadata.namespace") {
		t.Errorf("dhpp-controller lacks POD_NAMESPACE (the Lease's namespace)")
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("dhpp-controller liveness probe = %+v, want GET /healthz", c.LivenessProbe)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged != nil && *sc.Privileged || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("dhpp-controller security context = %+v, want unprivileged, non-root, no escalation", sc)
	}
	get[*corev1.ServiceAccount](t, objs, "/ServiceAccount/"+namespace+"/"+controllerSA)
	checkRBAC(t, objs, controllerSA, controllerRequired, controllerForbidden)
}

// permission is one thing the ServiceAccount must be allowed to do.
type permission struct {
	who       string // which container needs it
	namespace string // "" = cluster-wide
	group     string
	resource  string
	verbs     []string
}

var required = []permission{
	{"csi-provisioner", "", "", "persistentvolumes", []string{"get", "list", "watch", "create", "patch", "delete"}},
	{"csi-provisioner", "", "", "persistentvolumeclaims", []string{"get", "list", "watch", "update"}},
	{"csi-provisioner", "", "storage.k8s.io", "storageclasses", []string{"get", "list", "watch"}},
	{"csi-provisioner", "", "", "events", []string{"create", "patch"}},
	{"csi-provisioner", namespace, "storage.k8s.io", "csistoragecapacities", []string{"get", "list", "watch", "create", "update", "delete"}},
	{"csi-provisioner", namespace, "", "pods", []string{"get"}},
	{"csi-provisioner", namespace, "apps", "daemonsets", []string{"get"}},
	{"csi-resizer", "", "", "persistentvolumes", []string{"get", "list", "watch", "patch"}},
	{"csi-resizer", "", "", "persistentvolumeclaims/status", []string{"patch"}},
	{"csi-resizer", namespace, "coordination.k8s.io", "leases", []string{"get", "list", "watch", "create", "update", "delete"}},
	{"csi-provisioner", "", "snapshot.storage.k8s.io", "volumesnapshots", []string{"get", "list", "watch", "update"}},
	{"csi-provisioner", "", "snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"get"}},
	{"csi-snapshotter", "", "snapshot.storage.k8s.io", "volumesnapshotclasses", []string{"get", "list", "watch"}},
	{"csi-snapshotter", "", "snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"get", "list", "watch", "update", "patch"}},
	{"csi-snapshotter", "", "snapshot.storage.k8s.io", "volumesnapshotcontents/status", []string{"update", "patch"}},
	{"csi-snapshotter", "", "", "events", []string{"create", "patch"}},
	{"dhpp-driver", "", "", "nodes", []string{"get", "list", "watch", "patch"}},
	{"dhpp-driver", "", "", "nodes/status", []string{"patch"}},
	{"dhpp-driver", "", "", "events", []string{"create", "patch"}},
	{"dhpp-driver", "", "", "persistentvolumes", []string{"list"}},
}

// controllerRequired is what dhpp-controller does (pkg/controller).
var controllerRequired = []permission{
	{"dhpp-controller", "", "", "persistentvolumes", []string{"get", "list", "watch", "patch", "delete"}},
	{"dhpp-controller", "", "", "persistentvolumeclaims", []string{"get", "list", "watch", "patch", "delete"}},
	{"dhpp-controller", "", "snapshot.storage.k8s.io", "volumesnapshots", []string{"get", "list", "watch"}},
	{"dhpp-controller", "", "snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"get", "list", "watch", "patch"}},
	{"dhpp-controller", "", "", "nodes", []string{"get", "list", "watch"}},
	{"dhpp-controller", "", "", "pods", []string{"list"}},
	{"dhpp-controller", "", "", "pods/eviction", []string{"create"}},
	{"dhpp-controller", "", "storage.k8s.io", "storageclasses", []string{"get", "list", "watch"}},
	{"dhpp-controller", "", "", "events", []string{"create"}},
	{"dhpp-controller", namespace, "coordination.k8s.io", "leases", []string{"get", "create", "update"}},
}

// controllerForbidden: pods leave only through the Eviction API, Nodes are
// never changed, claims and PVs are never created or rewritten (a claim is
// only patched: the selected-node annotation), snapshots never written,
// contents only labelled.
var controllerForbidden = []permission{
	{"nobody", "", "", "secrets", []string{"get", "list"}},
	{"nobody", "", "", "pods", []string{"delete", "watch"}},
	{"nobody", "", "", "nodes", []string{"patch", "update", "delete"}},
	{"nobody", "", "", "persistentvolumeclaims", []string{"create", "update"}},
	{"nobody", "", "snapshot.storage.k8s.io", "volumesnapshots", []string{"create", "update", "patch", "delete"}},
	{"nobody", "", "snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"create", "update", "delete"}},
	{"nobody", "", "", "persistentvolumes", []string{"create", "update"}},
	{"nobody", "", "coordination.k8s.io", "leases", []string{"get", "update"}},
}

// forbidden are grants this driver must not hold (least privilege).
var forbidden = []permission{
	{"nobody", "", "", "secrets", []string{"get", "list"}},
	{"nobody", namespace, "", "secrets", []string{"get", "list"}},
	{"nobody", "", "", "pods", []string{"list", "watch"}},
	{"nobody", "", "storage.k8s.io", "volumeattachments", []string{"get"}},
	{"nobody", "", "", "nodes", []string{"delete", "update"}},
	// Only the snapshot-controller creates and deletes contents; the
	// node's sidecars never touch VolumeSnapshots or group snapshots.
	{"nobody", "", "snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"create", "delete"}},
	{"nobody", "", "snapshot.storage.k8s.io", "volumesnapshots", []string{"create", "delete", "patch"}},
	{"nobody", "", "snapshot.storage.k8s.io", "volumesnapshots/status", []string{"update", "patch"}},
	{"nobody", "", "groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", []string{"get", "list"}},
}

// checkRBAC evaluates the rules bound to the ServiceAccount sa the way the
// API server would (without aggregation): cluster-wide grants come from
// ClusterRoleBindings, namespaced ones also from RoleBindings there.
func checkRBAC(t *testing.T, objs map[string]object, sa string, required, forbidden []permission) {
	t.Helper()
	var clusterRules, nsRules []rbacv1.PolicyRule
	subjectIsSA := func(subs []rbacv1.Subject) bool {
		return slices.ContainsFunc(subs, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == namespace
		})
	}
	for _, o := range objs {
		switch b := o.typed.(type) {
		case *rbacv1.ClusterRoleBinding:
			if !subjectIsSA(b.Subjects) {
				continue
			}
			cr := get[*rbacv1.ClusterRole](t, objs, "rbac.authorization.k8s.io/ClusterRole/<nil>/"+b.RoleRef.Name)
			clusterRules = append(clusterRules, cr.Rules...)
		case *rbacv1.RoleBinding:
			if !subjectIsSA(b.Subjects) || b.Namespace != namespace {
				continue
			}
			if b.RoleRef.Kind != "Role" {
				t.Errorf("RoleBinding %s refers to a %s; expected only Roles", b.Name, b.RoleRef.Kind)
				continue
			}
			r := get[*rbacv1.Role](t, objs, "rbac.authorization.k8s.io/Role/"+namespace+"/"+b.RoleRef.Name)
			nsRules = append(nsRules, r.Rules...)
		}
	}
	allowed := func(p permission, verb string) bool {
		rules := clusterRules
		if p.namespace != "" {
			rules = append(slices.Clone(clusterRules), nsRules...)
		}
		return allows(rules, p.group, p.resource, verb)
	}
	for _, p := range required {
		for _, v := range p.verbs {
			if !allowed(p, v) {
				t.Errorf("%s (ServiceAccount %s) needs %s %s.%s (namespace %q), not granted", p.who, sa, v, p.resource, p.group, p.namespace)
			}
		}
	}
	for _, p := range forbidden {
		for _, v := range p.verbs {
			if allowed(p, v) {
				t.Errorf("ServiceAccount %s may %s %s.%s (namespace %q): more than it needs", sa, v, p.resource, p.group, p.namespace)
			}
		}
	}
}

// allows reports whether any rule grants verb on group/resource, honouring
// the "*" wildcards an over-broad rule would use.
func allows(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	match := func(list []string, s string) bool { return slices.Contains(list, s) || slices.Contains(list, "*") }
	for _, r := range rules {
		if match(r.APIGroups, group) && match(r.Resources, resource) && match(r.Verbs, verb) {
			return true
		}
	}
	return false
}

func TestAllowsEvaluatesRules(t *testing.T) {
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
		{APIGroups: []string{"*"}, Resources: []string{"leases"}, Verbs: []string{"*"}},
	}
	tests := []struct {
		group, resource, verb string
		want                  bool
	}{
		{"", "nodes", "get", true},
		{"", "nodes", "patch", false},
		{"", "nodes/status", "get", false},
		{"apps", "nodes", "get", false},
		{"coordination.k8s.io", "leases", "delete", true},
	}
	for _, tc := range tests {
		if got := allows(rules, tc.group, tc.resource, tc.verb); got != tc.want {
			t.Errorf("allows(%q, %q, %q) = %v, want %v", tc.group, tc.resource, tc.verb, got, tc.want)
		}
	}
}

// TestLocalOverlay checks that the e2e overlay changes exactly what it says:
// local images that are never pulled, a 30 s trash retention and short
// dhpp-controller limits, nothing else.
func TestLocalOverlay(t *testing.T) {
	base := parse(t, kustomizeBuild(t, "kustomize/base"))
	local := parse(t, kustomizeBuild(t, "kustomize/overlays/local"))
	if diff := cmp.Diff(keys(base), keys(local)); diff != "" {
		t.Fatalf("overlay changes the set of objects (-base +local):\n%s", diff)
	}
	dsKey := "apps/DaemonSet/" + namespace + "/dhpp-node"
	ds := get[*appsv1.DaemonSet](t, local, dsKey)
	wantImages := map[string]string{
		"dhpp-driver":     "dhpp.local/dhpp-driver:dev",
		"csi-provisioner": "dhpp.local/csi-provisioner:v6.3.0",
		"csi-resizer":     "dhpp.local/csi-resizer:v2.3.0",
		"csi-snapshotter": "dhpp.local/csi-snapshotter:v8.7.0",
	}
	for name, img := range wantImages {
		c := container(t, ds, name)
		if c.Image != img || c.ImagePullPolicy != corev1.PullNever {
			t.Errorf("local %s: image %q pull %q, want %q Never", name, c.Image, c.ImagePullPolicy, img)
		}
	}
	d := container(t, ds, "dhpp-driver")
	if !slices.Contains(d.Args, "--trash-retention=30s") || slices.Contains(d.Args, "--trash-retention=15m") {
		t.Errorf("local dhpp-driver args %q: want --trash-retention=30s instead of 15m", d.Args)
	}
	for _, a := range []string{"--orphan-grace=30s", "--orphan-check-period=5s", "--orphan-trash=true"} {
		if !slices.Contains(d.Args, a) {
			t.Errorf("local dhpp-driver args %q lack %q (the node-returns scenario's short grace)", d.Args, a)
		}
	}

	depKey := "apps/Deployment/" + namespace + "/dhpp-controller"
	ctrl := get[*appsv1.Deployment](t, local, depKey).Spec.Template.Spec.Containers[0]
	if ctrl.Image != wantImages["dhpp-driver"] || ctrl.ImagePullPolicy != corev1.PullNever {
		t.Errorf("local dhpp-controller: image %q pull %q, want the driver's %q Never", ctrl.Image, ctrl.ImagePullPolicy, wantImages["dhpp-driver"])
	}
	for _, a := range []string{"--grace-period=20s", "--fenced-pool-limit=30s"} {
		if !slices.Contains(ctrl.Args, a) {
			t.Errorf("local dhpp-controller args %q lack %q (the e2e scenarios' short limits)", ctrl.Args, a)
		}
	}

	snapKey := "apps/Deployment/" + namespace + "/" + snapshotControllerName
	snapCtrl := get[*appsv1.Deployment](t, local, snapKey).Spec.Template.Spec.Containers[0]
	if snapCtrl.Image != "dhpp.local/snapshot-controller:v8.7.0" || snapCtrl.ImagePullPolicy != corev1.PullNever {
		t.Errorf("local snapshot-controller: image %q pull %q, want dhpp.local/snapshot-controller:v8.7.0 Never", snapCtrl.Image, snapCtrl.ImagePullPolicy)
	}

	// Undo the intended changes; what remains must equal the base.
	undo := map[string]string{"--trash-retention=30s": "--trash-retention=15m", "--orphan-grace=30s": "--orphan-grace=1h", "--orphan-check-period=5s": "--orphan-check-period=10m", "--grace-period=20s": "--grace-period=2m", "--fenced-pool-limit=30s": "--fenced-pool-limit=10m"}
	for _, key := range []string{dsKey, depKey, snapKey} {
		raw := normalize(local[key].raw)
		containers := raw["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)
		baseContainers := base[key].raw["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)
		for i, c := range containers {
			cm := c.(map[string]any)
			delete(cm, "imagePullPolicy")
			cm["image"] = baseContainers[i].(map[string]any)["image"]
			if args, ok := cm["args"].([]any); ok {
				for j, a := range args {
					if orig, ok := undo[a.(string)]; ok {
						args[j] = orig
					}
				}
			}
		}
		local[key] = object{key: key, raw: raw}
	}
	for _, k := range keys(base) {
		if diff := cmp.Diff(normalize(base[k].raw), normalize(local[k].raw)); diff != "" {
			t.Errorf("%s: overlay changes more than images, pull policy, retention and controller limits (-base +local):\n%s", k, diff)
		}
	}
}

// TestHelmValues renders the chart with non-default values, so the
// templates' optional branches also produce valid, strictly decodable
// objects with the intended effect.
func TestHelmValues(t *testing.T) {
	tests := []struct {
		name  string
		set   []string
		check func(t *testing.T, objs map[string]object)
	}{
		{
			name: "extra pool with backend, custom retention and kubelet dir",
			set: []string{
				"--set", "pools[0].name=fast", "--set", "pools[0].path=/mnt/dhpp-data/fast", "--set", "pools[0].backend=btrfs",
				"--set", "pools[1].name=bulk", "--set", "pools[1].path=/mnt/dhpp-data/bulk",
				"--set", "trashRetention=1h", "--set", "kubeletDir=/var/lib/k0s/kubelet/",
			},
			check: func(t *testing.T, objs map[string]object) {
				ds := get[*appsv1.DaemonSet](t, objs, "apps/DaemonSet/"+namespace+"/dhpp-node")
				d := container(t, ds, "dhpp-driver")
				for _, a := range []string{
					"--pool=fast=/mnt/dhpp-data/fast,backend=btrfs", "--pool=bulk=/mnt/dhpp-data/bulk", "--trash-retention=1h",
					"--kubelet-registration-path=/var/lib/k0s/kubelet/plugins/" + dhpp.DriverName + "/csi.sock",
				} {
					if !slices.Contains(d.Args, a) {
						t.Errorf("args %q lack %q", d.Args, a)
					}
				}
				found := false
				for _, m := range d.VolumeMounts {
					if m.Name == "kubelet-dir" {
						found = m.MountPath == "/var/lib/k0s/kubelet"
					}
				}
				if !found {
					t.Errorf("kubelet dir not mounted at its host path: %+v", d.VolumeMounts)
				}
			},
		},
		{
			name: "default class with parameters and local images",
			set: []string{
				"--set", "storageClass.isDefault=true", "--set", "storageClass.parameters.pool=fast", "--set-string", "storageClass.parameters.mode=0750",
				"--set", "images.driver.tag=dev", "--set", "images.driver.pullPolicy=Never", "--set", "metrics.port=9900",
			},
			check: func(t *testing.T, objs map[string]object) {
				sc := get[*storagev1.StorageClass](t, objs, "storage.k8s.io/StorageClass/<nil>/hostpath-dynamic")
				if sc.Annotations["storageclass.kubernetes.io/is-default-class"] != "true" {
					t.Errorf("default-class annotation missing: %v", sc.Annotations)
				}
				if sc.Parameters[dhpp.ParamPool] != "fast" || sc.Parameters[dhpp.ParamMode] != "0750" {
					t.Errorf("parameters = %v", sc.Parameters)
				}
				ds := get[*appsv1.DaemonSet](t, objs, "apps/DaemonSet/"+namespace+"/dhpp-node")
				d := container(t, ds, "dhpp-driver")
				if d.Image != "ghcr.io/dhpp-io/dhpp-driver:dev" || d.ImagePullPolicy != corev1.PullNever {
					t.Errorf("driver image %q pull %q", d.Image, d.ImagePullPolicy)
				}
				if d.Ports[0].ContainerPort != 9900 || !slices.Contains(d.Args, "--metrics-address=:9900") || ds.Spec.Template.Annotations["prometheus.io/port"] != "9900" {
					t.Errorf("metrics port not applied everywhere: port %d args %q annotations %v", d.Ports[0].ContainerPort, d.Args, ds.Spec.Template.Annotations)
				}
			},
		},
		{
			name: "controller limits and dry run",
			set:  []string{"--set", "controller.gracePeriod=5m", "--set", "controller.fencedPoolLimit=0", "--set", "controller.dryRun=true", "--set", "controller.replicas=3"},
			check: func(t *testing.T, objs map[string]object) {
				dep := get[*appsv1.Deployment](t, objs, "apps/Deployment/"+namespace+"/dhpp-controller")
				c := dep.Spec.Template.Spec.Containers[0]
				for _, a := range []string{"--grace-period=5m", "--fenced-pool-limit=0", "--dry-run"} {
					if !slices.Contains(c.Args, a) {
						t.Errorf("args %q lack %q", c.Args, a)
					}
				}
				if *dep.Spec.Replicas != 3 {
					t.Errorf("replicas = %d, want 3", *dep.Spec.Replicas)
				}
			},
		},
		{
			name: "controller disabled",
			set:  []string{"--set", "controller.enabled=false"},
			check: func(t *testing.T, objs map[string]object) {
				for k := range objs {
					if strings.Contains(k, "dhpp-controller") {
						t.Errorf("rendered although controller.enabled=false: %s", k)
					}
				}
				if _, ok := objs["apps/DaemonSet/"+namespace+"/dhpp-node"]; !ok {
					t.Error("the node DaemonSet went with the controller")
				}
			},
		},
		{
			name: "no storage class",
			set:  []string{"--set", "storageClass.create=false"},
			check: func(t *testing.T, objs map[string]object) {
				for k := range objs {
					if strings.Contains(k, "/StorageClass/") {
						t.Errorf("StorageClass rendered although storageClass.create=false: %s", k)
					}
				}
			},
		},
		{
			name: "snapshots off",
			set:  []string{"--set", "snapshots.enabled=false"},
			check: func(t *testing.T, objs map[string]object) {
				for k := range objs {
					if strings.Contains(k, "napshot") && !isSnapshotCRDKey(k) {
						t.Errorf("rendered although snapshots.enabled=false: %s", k)
					}
				}
				ds := get[*appsv1.DaemonSet](t, objs, "apps/DaemonSet/"+namespace+"/dhpp-node")
				for _, c := range ds.Spec.Template.Spec.Containers {
					if c.Name == "csi-snapshotter" {
						t.Error("csi-snapshotter sidecar rendered although snapshots.enabled=false")
					}
				}
				checkRBAC(t, objs, serviceAccount, nil, []permission{
					{"nobody", "", "snapshot.storage.k8s.io", "volumesnapshots", []string{"get"}},
					{"nobody", "", "snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"get"}},
				})
				// Restores of clones still land on the source's node.
				get[*storagev1.StorageClass](t, objs, "storage.k8s.io/StorageClass/<nil>/hostpath-dynamic-restore")
			},
		},
		{
			name: "cluster has its own snapshot-controller",
			set:  []string{"--set", "snapshots.controller.enabled=false", "--skip-crds"},
			check: func(t *testing.T, objs map[string]object) {
				for k := range objs {
					if strings.Contains(k, snapshotControllerName) || isSnapshotCRDKey(k) {
						t.Errorf("rendered although snapshots.controller.enabled=false and --skip-crds: %s", k)
					}
				}
				ds := get[*appsv1.DaemonSet](t, objs, "apps/DaemonSet/"+namespace+"/dhpp-node")
				container(t, ds, "csi-snapshotter")
				get[*snapshotv1.VolumeSnapshotClass](t, objs, "snapshot.storage.k8s.io/VolumeSnapshotClass/<nil>/hostpath-dynamic")
			},
		},
		{
			name: "default snapshot class, retained snapshots, no restore class",
			set: []string{"--set", "snapshots.volumeSnapshotClass.isDefault=true", "--set", "snapshots.volumeSnapshotClass.deletionPolicy=Retain",
				"--set", "storageClass.restoreName=", "--set", "snapshots.controller.replicas=1"},
			check: func(t *testing.T, objs map[string]object) {
				vsc := get[*snapshotv1.VolumeSnapshotClass](t, objs, "snapshot.storage.k8s.io/VolumeSnapshotClass/<nil>/hostpath-dynamic")
				if vsc.Annotations["snapshot.storage.kubernetes.io/is-default-class"] != "true" || vsc.DeletionPolicy != snapshotv1.VolumeSnapshotContentRetain {
					t.Errorf("VolumeSnapshotClass annotations %v deletionPolicy %s; want default, Retain", vsc.Annotations, vsc.DeletionPolicy)
				}
				if _, ok := objs["storage.k8s.io/StorageClass/<nil>/hostpath-dynamic-restore"]; ok {
					t.Error("restore StorageClass rendered although storageClass.restoreName is empty")
				}
				dep := get[*appsv1.Deployment](t, objs, "apps/Deployment/"+namespace+"/"+snapshotControllerName)
				if *dep.Spec.Replicas != 1 {
					t.Errorf("snapshot-controller replicas = %d, want 1", *dep.Spec.Replicas)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, parse(t, helmTemplate(t, tc.set...)))
		})
	}
}

// TestStrictDecodingCatchesTypos proves the decoding step in parse can fail:
// a misspelt field must be an error, not silently dropped.
func TestStrictDecodingCatchesTypos(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		wantErr bool
	}{
		{"valid", "apiVersion: storage.k8s.io/v1\nkind: CSIDriver\nmetadata: {name: x}\nspec: {attachRequired: false}\n", false},
		{"misspelt field", "apiVersion: storage.k8s.io/v1\nkind: CSIDriver\nmetadata: {name: x}\nspec: {attachRequird: false}\n", true},
		{"wrong type", "apiVersion: storage.k8s.io/v1\nkind: CSIDriver\nmetadata: {name: x}\nspec: {attachRequired: \"no\"}\n", true},
		{"unknown kind", "apiVersion: storage.k8s.io/v1\nkind: CSIDrivr\nmetadata: {name: x}\n", true},
		{"duplicate object", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseStream([]byte(tc.doc))
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseStream err = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}
}
