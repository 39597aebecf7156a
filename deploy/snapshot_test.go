package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
)

const (
	snapshotControllerName = "dhpp-snapshot-controller"
	// snapshotClientModule ships the VolumeSnapshot CRDs (config/crd); its
	// version in go.mod is the external-snapshotter release deploy/ runs.
	snapshotClientModule = "github.com/kubernetes-csi/external-snapshotter/client/v8"
	snapshotCRDDir       = "kustomize/components/snapshot-crds"
	helmCRDDir           = "helm/dhpp/crds"
	externalOverlay      = "kustomize/overlays/external-snapshot-controller"
)

// snapshotCRDs are the files deploy/ copies from the client module.
var snapshotCRDs = []string{
	"snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
	"snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
	"snapshot.storage.k8s.io_volumesnapshots.yaml",
}

func isSnapshotCRD(raw map[string]any) bool {
	meta, _ := raw["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	return raw["kind"] == "CustomResourceDefinition" && strings.HasSuffix(name, ".snapshot.storage.k8s.io")
}

func isSnapshotCRDKey(key string) bool {
	return strings.Contains(key, "/CustomResourceDefinition/") && strings.HasSuffix(key, ".snapshot.storage.k8s.io")
}

// snapshotModule returns the client module's version and directory as the
// root go.mod pins it (downloading it into the module cache if needed).
func snapshotModule(t *testing.T) (version, dir string) {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", snapshotClientModule).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", snapshotClientModule, err)
	}
	var m struct{ Version, Dir, Error string }
	if err := json.Unmarshal(out, &m); err != nil || m.Error != "" || m.Dir == "" {
		t.Fatalf("go mod download %s: %v %s\n%s", snapshotClientModule, err, m.Error, out)
	}
	return m.Version, m.Dir
}

// TestSnapshotCRDsMatchUpstream: the checked-in CRDs (kustomize component
// and Helm crds/) are byte for byte those of the client module at the
// version go.mod pins; `make snapshot-crds` refreshes them after a bump.
func TestSnapshotCRDsMatchUpstream(t *testing.T) {
	version, dir := snapshotModule(t)
	for _, name := range snapshotCRDs {
		want, err := os.ReadFile(filepath.Join(dir, "config", "crd", name))
		if err != nil {
			t.Fatalf("upstream CRD: %v", err)
		}
		for _, d := range []string{snapshotCRDDir, helmCRDDir} {
			got, err := os.ReadFile(filepath.Join(d, name))
			if err != nil {
				t.Errorf("checked-in CRD: %v", err)
				continue
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s/%s differs from %s %s's config/crd (run make snapshot-crds)", d, name, snapshotClientModule, version)
			}
		}
	}
	for _, d := range []string{snapshotCRDDir, helmCRDDir} {
		files, err := filepath.Glob(filepath.Join(d, "*.storage.k8s.io_*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != len(snapshotCRDs) {
			t.Errorf("%s holds %d CRD files, want exactly %v", d, len(files), snapshotCRDs)
		}
	}
}

// TestSnapshotImagesMatchModule: the sidecar and controller images are the
// external-snapshotter release whose CRDs deploy/ ships.
func TestSnapshotImagesMatchModule(t *testing.T) {
	version, _ := snapshotModule(t)
	objs := parse(t, kustomizeBuild(t, "kustomize/base"))
	ds := get[*appsv1.DaemonSet](t, objs, "apps/DaemonSet/"+namespace+"/dhpp-node")
	dep := get[*appsv1.Deployment](t, objs, "apps/Deployment/"+namespace+"/"+snapshotControllerName)
	for _, img := range []string{container(t, ds, "csi-snapshotter").Image, dep.Spec.Template.Spec.Containers[0].Image} {
		if _, tag, _ := strings.Cut(img, ":"); tag != version {
			t.Errorf("image %s, want tag %s (the %s version in go.mod)", img, version, snapshotClientModule)
		}
	}
}

// checkSnapshots: the csi-snapshotter sidecar in node-deployment mode, the
// distributed snapshot-controller, the classes, and their RBAC.
func checkSnapshots(t *testing.T, objs map[string]object, ds *appsv1.DaemonSet) {
	t.Helper()
	s := container(t, ds, "csi-snapshotter")
	for _, a := range []string{"--csi-address=/csi/csi.sock", "--node-deployment", "--feature-gates=CSIVolumeGroupSnapshot=false", "--extra-create-metadata"} {
		if !slices.Contains(s.Args, a) {
			t.Errorf("csi-snapshotter args %q lack %q", s.Args, a)
		}
	}
	if slices.ContainsFunc(s.Args, func(a string) bool { return strings.HasPrefix(a, "--leader-election") }) {
		t.Errorf("csi-snapshotter args %q: --node-deployment refuses leader election", s.Args)
	}
	if !hasEnv(s, "NODE_NAME", "spec.nodeName") {
		t.Error("csi-snapshotter lacks NODE_NAME from spec.nodeName (--node-deployment exits without it)")
	}
	if !slices.ContainsFunc(s.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "socket-dir" && m.MountPath == "/csi" }) {
		t.Errorf("csi-snapshotter does not mount the driver's socket at /csi: %+v", s.VolumeMounts)
	}

	vsc := get[*snapshotv1.VolumeSnapshotClass](t, objs, "snapshot.storage.k8s.io/VolumeSnapshotClass/<nil>/hostpath-dynamic")
	if vsc.Driver != dhpp.DriverName || vsc.DeletionPolicy != snapshotv1.VolumeSnapshotContentDelete || vsc.Namespace != "" {
		t.Errorf("VolumeSnapshotClass driver %q deletionPolicy %q namespace %q; want %s Delete, cluster-scoped", vsc.Driver, vsc.DeletionPolicy, vsc.Namespace, dhpp.DriverName)
	}
	rc := get[*storagev1.StorageClass](t, objs, "storage.k8s.io/StorageClass/<nil>/hostpath-dynamic-restore")
	if rc.Provisioner != dhpp.DriverName || rc.VolumeBindingMode == nil || *rc.VolumeBindingMode != storagev1.VolumeBindingImmediate ||
		rc.AllowVolumeExpansion == nil || !*rc.AllowVolumeExpansion || rc.ReclaimPolicy == nil || *rc.ReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		t.Errorf("restore StorageClass = provisioner %q binding %v expansion %v reclaim %v; want %s Immediate true Delete",
			rc.Provisioner, rc.VolumeBindingMode, rc.AllowVolumeExpansion, rc.ReclaimPolicy, dhpp.DriverName)
	}
	// The csi-provisioner races for Immediate claims only with immediate
	// binding on (its default): the restore class depends on it.
	if p := container(t, ds, "csi-provisioner"); slices.Contains(p.Args, "--node-deployment-immediate-binding=false") {
		t.Errorf("csi-provisioner args %q turn off immediate binding, which the restore class needs", p.Args)
	}

	dep := get[*appsv1.Deployment](t, objs, "apps/Deployment/"+namespace+"/"+snapshotControllerName)
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Errorf("snapshot-controller replicas = %v, want 2", dep.Spec.Replicas)
	}
	pod := dep.Spec.Template.Spec
	if pod.ServiceAccountName != snapshotControllerName || len(pod.Containers) != 1 {
		t.Fatalf("snapshot-controller pod: serviceAccount %q, %d containers", pod.ServiceAccountName, len(pod.Containers))
	}
	c := pod.Containers[0]
	for _, a := range []string{"--leader-election=true", "--enable-distributed-snapshotting", "--feature-gates=CSIVolumeGroupSnapshot=false"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("snapshot-controller args %q lack %q", c.Args, a)
		}
	}
	if sc := c.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("snapshot-controller security context = %+v, want non-root, no escalation", c.SecurityContext)
	}
	get[*corev1.ServiceAccount](t, objs, "/ServiceAccount/"+namespace+"/"+snapshotControllerName)
	checkRBAC(t, objs, snapshotControllerName, snapshotControllerRequired, snapshotControllerForbidden)

	for _, name := range []string{"volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots"} {
		if _, ok := objs["apiextensions.k8s.io/CustomResourceDefinition/<nil>/"+name+".snapshot.storage.k8s.io"]; !ok {
			t.Errorf("CRD %s.snapshot.storage.k8s.io not rendered", name)
		}
	}
}

// snapshotControllerRequired is what the common snapshot-controller does
// with --enable-distributed-snapshotting (upstream's documented RBAC).
var snapshotControllerRequired = []permission{
	{"snapshot-controller", "", "", "persistentvolumes", []string{"get", "list", "watch"}},
	{"snapshot-controller", "", "", "persistentvolumeclaims", []string{"get", "list", "watch", "update"}},
	{"snapshot-controller", "", "", "nodes", []string{"get", "list", "watch"}},
	{"snapshot-controller", "", "", "events", []string{"create", "patch"}},
	{"snapshot-controller", "", "snapshot.storage.k8s.io", "volumesnapshotclasses", []string{"get", "list", "watch"}},
	{"snapshot-controller", "", "snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"create", "get", "list", "watch", "update", "delete", "patch"}},
	{"snapshot-controller", "", "snapshot.storage.k8s.io", "volumesnapshotcontents/status", []string{"patch"}},
	{"snapshot-controller", "", "snapshot.storage.k8s.io", "volumesnapshots", []string{"get", "list", "watch", "update", "patch"}},
	{"snapshot-controller", "", "snapshot.storage.k8s.io", "volumesnapshots/status", []string{"update", "patch"}},
	{"snapshot-controller", namespace, "coordination.k8s.io", "leases", []string{"get", "create", "update"}},
}

var snapshotControllerForbidden = []permission{
	{"nobody", "", "", "secrets", []string{"get", "list"}},
	{"nobody", "", "", "persistentvolumes", []string{"create", "update", "patch", "delete"}},
	{"nobody", "", "", "persistentvolumeclaims", []string{"create", "delete", "patch"}},
	{"nobody", "", "", "nodes", []string{"patch", "update"}},
	{"nobody", "", "", "pods", []string{"get", "list"}},
	{"nobody", "", "snapshot.storage.k8s.io", "volumesnapshots", []string{"create", "delete"}},
	{"nobody", "", "groupsnapshot.storage.k8s.io", "volumegroupsnapshots", []string{"get", "list"}},
	{"nobody", "", "coordination.k8s.io", "leases", []string{"get"}},
}

// TestExternalSnapshotControllerOverlay: the overlay for clusters that
// already have the CRDs and a snapshot-controller is the base less exactly
// the two components' objects, everything else unchanged.
func TestExternalSnapshotControllerOverlay(t *testing.T) {
	base := parse(t, kustomizeBuild(t, "kustomize/base"))
	ext := parse(t, kustomizeBuild(t, externalOverlay))
	var removed []string
	for _, k := range keys(base) {
		o, ok := ext[k]
		if !ok {
			removed = append(removed, k)
			continue
		}
		if diff := cmp.Diff(base[k].raw, o.raw); diff != "" {
			t.Errorf("%s changed by the overlay (-base +overlay):\n%s", k, diff)
		}
	}
	if len(ext) != len(base)-len(removed) {
		t.Errorf("overlay adds objects: %d vs %d-%d", len(ext), len(base), len(removed))
	}
	var want []string
	for _, k := range keys(base) {
		if isSnapshotCRDKey(k) || strings.HasSuffix(k, "/"+snapshotControllerName) {
			want = append(want, k)
		}
	}
	if len(want) != 9 {
		t.Errorf("base has %d snapshot CRD/controller objects, want 3 CRDs + 6 controller objects: %v", len(want), want)
	}
	if diff := cmp.Diff(want, removed); diff != "" {
		t.Errorf("overlay removes (-want +got):\n%s", diff)
	}
	// What stays works with any snapshot-controller: the sidecar, the class.
	ds := get[*appsv1.DaemonSet](t, ext, "apps/DaemonSet/"+namespace+"/dhpp-node")
	container(t, ds, "csi-snapshotter")
	get[*snapshotv1.VolumeSnapshotClass](t, ext, "snapshot.storage.k8s.io/VolumeSnapshotClass/<nil>/hostpath-dynamic")
}
