package kubectl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/kube"
	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

var now = time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)

func mt(d time.Duration) metav1.Time { return metav1.NewTime(now.Add(d)) }

const gib = 1 << 30

// cluster is the fixture: two nodes, each with a default pool; n2's is
// fenced; n1's trash holds one claim deleted 5 minutes ago.
type cluster struct {
	pools   []*v1.DhppPool
	objects []runtime.Object
}

func healthyCluster() *cluster {
	n1 := &v1.DhppPool{ObjectMeta: metav1.ObjectMeta{Name: "n1.default", Labels: map[string]string{v1.LabelNode: "n1", v1.LabelPool: "default"}},
		Spec: v1.DhppPoolSpec{Node: "n1", Pool: "default"},
		Status: v1.DhppPoolStatus{Path: "/var/lib/dhpp/default", Backend: "btrfs", SizeEnforced: true,
			CapacityBytes: 20 * gib, Capacity: "20Gi", Provisioned: "3Gi", Used: "1.5Gi", Free: "18.5Gi", Available: "17Gi", Volumes: 2,
			Health: v1.Health{State: "Healthy", ProbeLatency: "2ms"},
			Trash: v1.Trash{Entries: 1, Bytes: gib, Size: "1Gi", Items: []v1.TrashEntry{{Entry: "pvc-old@1764403200000000000",
				VolumeID: "n1/default/pvc-old", PV: "pvc-old", Namespace: "db", Claim: "data-db-2", SizeBytes: gib,
				DeletedAt: mt(-5 * time.Minute), PurgeAt: mt(10 * time.Minute)}}},
			Mount:         &v1.Mount{Point: "/var/lib/dhpp", Propagation: v1.PropagationShared},
			DriverVersion: "v0.2.0", UpdatedAt: mt(-20 * time.Second)}}
	n2 := &v1.DhppPool{ObjectMeta: metav1.ObjectMeta{Name: "n2.default", Labels: map[string]string{v1.LabelNode: "n2", v1.LabelPool: "default"}},
		Spec: v1.DhppPoolSpec{Node: "n2", Pool: "default"},
		Status: v1.DhppPoolStatus{Path: "/var/lib/dhpp/default", Backend: "dir", SizeEnforced: false,
			Capacity: "20Gi", Provisioned: "1Gi", Used: "2Gi", Free: "18Gi", Available: "17Gi", Volumes: 1,
			Health:        v1.Health{State: "Healthy", ProbeLatency: "900µs"},
			RAID:          v1.RAID{Degraded: false},
			Mount:         &v1.Mount{Point: "/var/lib/dhpp", Propagation: v1.PropagationShared},
			DriverVersion: "v0.2.0", UpdatedAt: mt(-10 * time.Second)}}
	labels := map[string]string{"app": "dhpp-node"}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "dhpp-node", Namespace: "dhpp-system"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "dhpp-driver", Image: "dhpp-driver:v0.2.0"}, {Name: "csi-provisioner", Image: "csi-provisioner:v6.3.0"}}}}},
		Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, NumberReady: 2, UpdatedNumberScheduled: 2}}
	pod := func(node string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "dhpp-node-" + node, Namespace: "dhpp-system", Labels: labels},
			Spec: corev1.PodSpec{NodeName: node},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{
				{Name: "dhpp-driver", Ready: true}, {Name: "csi-provisioner", Ready: true}}}}
	}
	pv := func(name, node, ns, claim string, size int64) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:               corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)},
				ClaimRef:               &corev1.ObjectReference{Namespace: ns, Name: claim},
				PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: dhpp.DriverName, VolumeHandle: node + "/default/" + name, VolumeAttributes: map[string]string{dhpp.ContextBackend: "btrfs"}}}},
			Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound}}
	}
	capacity := func(node string) *storagev1.CSIStorageCapacity {
		return &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: "csisc-" + node, Namespace: "dhpp-system"}, StorageClassName: "dhpp",
			NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{dhpp.TopologyKey: node}}}
	}
	other := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "nfs-1"}, Spec: corev1.PersistentVolumeSpec{
		PersistentVolumeSource: corev1.PersistentVolumeSource{NFS: &corev1.NFSVolumeSource{Server: "x", Path: "/"}}}}
	return &cluster{
		pools: []*v1.DhppPool{n1, n2},
		objects: []runtime.Object{
			&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}},
			&storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: dhpp.DriverName}, Spec: storagev1.CSIDriverSpec{
				AttachRequired: ptr.To(false), PodInfoOnMount: ptr.To(true), StorageCapacity: ptr.To(true),
				FSGroupPolicy: ptr.To(storagev1.FileFSGroupPolicy), VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}}},
			&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "dhpp"}, Provisioner: dhpp.DriverName},
			ds, pod("n1"), pod("n2"), capacity("n1"), capacity("n2"),
			pv("pvc-a", "n1", "db", "data-db-0", 2*gib), pv("pvc-b", "n2", "db", "data-db-1", gib), pv("pvc-c", "n1", "web", "cache", gib), other,
		},
	}
}

// withSnapshots puts two deleted snapshots in n2's trash: one with its
// VolumeSnapshot's name, one as a driver older than the kind field
// published it (no kind, no record).
func withSnapshots(c *cluster) {
	c.pools[1].Status.Trash = v1.Trash{Entries: 2, Bytes: gib, Size: "1Gi", Items: []v1.TrashEntry{
		{Entry: "snapshot:snap-1@1764403500000000000", Kind: v1.TrashKindSnapshot, Namespace: "db", VolumeSnapshot: "nightly",
			SnapshotContent: "snapcontent-1", SnapshotID: "n2/default/snap-1", SourceVolumeID: "n2/default/pvc-b", SizeBytes: gib,
			DeletedAt: mt(-time.Minute), PurgeAt: mt(14 * time.Minute)},
		{Entry: "snapshot:snap-0@1764403000000000000", DeletedAt: mt(-6 * time.Minute), PurgeAt: mt(-2 * time.Minute)},
	}}
}

// env builds the fake API servers of c.
func (c *cluster) env(t *testing.T) (Env, *bytes.Buffer, *dynfake.FakeDynamicClient, *fake.Clientset) {
	t.Helper()
	var objs []runtime.Object
	for _, p := range c.pools {
		u, err := v1.ToUnstructured(p)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, u)
	}
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{v1.GroupVersionResource: v1.Kind + "List"}, objs...)
	kc := fake.NewClientset(c.objects...)
	out := &bytes.Buffer{}
	return Env{Kube: kc, Dyn: dyn, Namespace: "db", Out: out, Now: func() time.Time { return now },
		Usage: func(_ context.Context, node string) (map[string]int64, error) {
			if node == "n2" {
				return nil, errors.New("node proxy: forbidden")
			}
			return map[string]int64{"db/data-db-0": 512 << 20, "web/cache": 3 << 20}, nil
		}}, out, dyn, kc
}

func lines(s ...string) string { return strings.Join(s, "\n") + "\n" }

func TestCommands(t *testing.T) {
	cases := []struct {
		name    string
		mutate  func(c *cluster)
		all     bool
		args    []string
		opts    Options
		want    string // whole output, when set
		wantErr string
	}{
		{name: "pools", args: []string{"pools"}, want: lines(
			"NODE   POOL      BACKEND   ENFORCED   CAPACITY   PROVISIONED   USED    FREE     VOLUMES   HEALTH    REASON   RAID   PROBE   TRASH",
			"n1     default   btrfs     yes        20Gi       3Gi           1.5Gi   18.5Gi   2         Healthy   <none>   ok     2ms     1 (1Gi)",
			"n2     default   dir       no         20Gi       1Gi           2Gi     18Gi     1         Healthy   <none>   ok     900µs   0",
		)},
		{name: "pools of one node, wide", args: []string{"pools"}, opts: Options{Node: "n2", Output: "wide"}, want: lines(
			"NODE   POOL      BACKEND   ENFORCED   CAPACITY   PROVISIONED   USED   FREE   VOLUMES   HEALTH    REASON   RAID   PROBE   TRASH   AVAILABLE   PATH                    UPDATED   VERSION   MESSAGE",
			"n2     default   dir       no         20Gi       1Gi           2Gi    18Gi   1         Healthy   <none>   ok     900µs   0       17Gi        /var/lib/dhpp/default   10s       v0.2.0    <none>",
		)},
		{name: "pools of an unknown node", args: []string{"pools"}, opts: Options{Node: "n9"}, wantErr: `no pools published for node "n9"`},
		{name: "pools when none is published", mutate: func(c *cluster) { c.pools = nil }, args: []string{"pools"}, wantErr: "no pools published: is dhpp's driver running?"},
		{name: "volumes of the namespace, used from the kubelet", args: []string{"volumes"}, want: lines(
			"NAMESPACE   CLAIM       NODE   POOL      BACKEND   SIZE   USED     HEALTH",
			"db          data-db-0   n1     default   btrfs     2Gi    512Mi    Healthy",
			"db          data-db-1   n2     default   btrfs     1Gi    <none>   Healthy",
		)},
		{name: "volumes of all namespaces by size", all: true, args: []string{"volumes"}, opts: Options{SortBy: "size"}, want: lines(
			"NAMESPACE   CLAIM       NODE   POOL      BACKEND   SIZE   USED     HEALTH",
			"db          data-db-0   n1     default   btrfs     2Gi    512Mi    Healthy",
			"db          data-db-1   n2     default   btrfs     1Gi    <none>   Healthy",
			"web         cache       n1     default   btrfs     1Gi    3Mi      Healthy",
		)},
		{name: "volumes of one node, wide", all: true, args: []string{"volumes"}, opts: Options{Node: "n2", Output: "wide"}, want: lines(
			"NAMESPACE   CLAIM       NODE   POOL      BACKEND   SIZE   USED     HEALTH    PV      PHASE",
			"db          data-db-1   n2     default   btrfs     1Gi    <none>   Healthy   pvc-b   Bound",
		)},
		{name: "volumes: bad sort key", args: []string{"volumes"}, opts: Options{SortBy: "color"}, wantErr: `unknown --sort-by "color"`},
		{name: "trash", args: []string{"trash"}, want: lines(
			"NODE   POOL      KIND     ENTRY                         NAMESPACE   NAME        SIZE   DELETED   PURGED",
			"n1     default   Volume   pvc-old@1764403200000000000   db          data-db-2   1Gi    5m ago    in 10m",
		)},
		{name: "trash with snapshots, wide", mutate: withSnapshots, args: []string{"trash"}, opts: Options{Output: "wide"}, want: lines(
			"NODE   POOL      KIND       ENTRY                                 NAMESPACE   NAME        SIZE     DELETED   PURGED   PV        ID                   SOURCE             DELETED-AT             PURGE-AT",
			"n2     default   Snapshot   snapshot:snap-1@1764403500000000000   db          nightly     1Gi      1m ago    in 14m   <none>    n2/default/snap-1    n2/default/pvc-b   2026-11-29T09:59:00Z   2026-11-29T10:14:00Z",
			"n1     default   Volume     pvc-old@1764403200000000000           db          data-db-2   1Gi      5m ago    in 10m   pvc-old   n1/default/pvc-old   <none>             2026-11-29T09:55:00Z   2026-11-29T10:10:00Z",
			"n2     default   Snapshot   snapshot:snap-0@1764403000000000000   <none>      <none>      <none>   6m ago    due      <none>    <none>               <none>             2026-11-29T09:54:00Z   2026-11-29T09:58:00Z",
		)},
		{name: "restore of a snapshot entry", mutate: withSnapshots, args: []string{"restore", "snapshot:snap-1@1764403500000000000"}, opts: Options{To: "db/nightly-data"},
			wantErr: "trash entry snapshot:snap-1@1764403500000000000 is a deleted snapshot (VolumeSnapshot db/nightly, taken of volume n2/default/pvc-b), not a volume: kubectl dhpp restore brings back deleted volumes only. " +
				"If its source claim still exists, take a new VolumeSnapshot of it; to keep this snapshot's data, copy it on node n2 from /var/lib/dhpp/default/.dhpp/trash/snapshot:snap-1@1764403500000000000 before it is purged (in 14m). " +
				"To keep snapshots when their VolumeSnapshot is deleted, give their VolumeSnapshotClass deletionPolicy: Retain"},
		{name: "restore of a snapshot entry an older driver published without kind", mutate: withSnapshots, args: []string{"restore", "snapshot:snap-0@1764403000000000000"}, opts: Options{To: "db/x"},
			wantErr: "trash entry snapshot:snap-0@1764403000000000000 is a deleted snapshot, not a volume"},
		{name: "trash of a node with an empty trash", args: []string{"trash", "n2"}, want: "The trash is empty: no deleted volume or snapshot is waiting to be purged.\n"},
		{name: "trash of an unknown node", args: []string{"trash", "n9"}, wantErr: `no pools published for node "n9"`},
		{name: "unknown command", args: []string{"pool"}, wantErr: `unknown command "pool"`},
		{name: "unknown output", args: []string{"pools"}, opts: Options{Output: "table"}, wantErr: `unknown output format "table"`},
		{name: "extra argument", args: []string{"pools", "n1"}, wantErr: "usage: kubectl dhpp pools"},
		{name: "fence without a reason", args: []string{"fence", "n1", "default"}, wantErr: "--reason is required"},
		{name: "fence of an unknown pool", args: []string{"fence", "n1", "fast"}, opts: Options{Reason: "x"}, wantErr: `node "n1" has no pool "fast" published`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := healthyCluster()
			if c.mutate != nil {
				c.mutate(cl)
			}
			env, out, _, _ := cl.env(t)
			env.AllNamespaces = c.all
			err := Run(context.Background(), env, c.args, c.opts)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, out.String()); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStructuredOutput(t *testing.T) {
	for _, args := range [][]string{{"pools"}, {"volumes"}, {"trash"}, {"doctor"}} {
		for _, format := range []string{"json", "yaml"} {
			env, out, _, _ := healthyCluster().env(t)
			if err := Run(context.Background(), env, args, Options{Output: format}); err != nil {
				t.Fatalf("%v -o %s: %v", args, format, err)
			}
			if format == "json" {
				var v map[string]any
				if err := json.Unmarshal(out.Bytes(), &v); err != nil {
					t.Errorf("%v -o json is not JSON: %v\n%s", args, err, out)
				}
				if _, ok := v["items"]; !ok && args[0] != "doctor" {
					t.Errorf("%v -o json has no items: %s", args, out)
				}
			} else if !strings.Contains(out.String(), ":") || strings.HasPrefix(out.String(), "{") {
				t.Errorf("%v -o yaml is not YAML:\n%s", args, out)
			}
		}
	}
	env, out, _, _ := healthyCluster().env(t)
	if err := Run(context.Background(), env, []string{"pools"}, Options{Output: "json"}); err != nil {
		t.Fatal(err)
	}
	var l v1.DhppPoolList
	if err := json.Unmarshal(out.Bytes(), &l); err != nil || len(l.Items) != 2 || l.Items[0].Kind != v1.Kind || l.Items[1].Status.Backend != "dir" {
		t.Errorf("pools -o json: %v %+v", err, l)
	}
}

func TestDoctor(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(c *cluster)
		fail   bool
		want   []string
	}{
		{"healthy install", nil, false, []string{
			"OK    CSIDriver hostpath.dhpp.io: attachRequired=false",
			"OK    DaemonSet dhpp-system/dhpp-node: 2/2 pods ready and up to date (dhpp-driver=dhpp-driver:v0.2.0, csi-provisioner=csi-provisioner:v6.3.0)",
			"OK    node n1: pod dhpp-node-n1: all 2 containers ready",
			"OK    pool n1/default: Healthy, 18.5Gi free of 20Gi, 2 volumes, probe 2ms",
			"OK    data directory n1/default: /var/lib/dhpp is a shared mount in the driver's container",
			"OK    data directory n2/default: /var/lib/dhpp is a shared mount in the driver's container",
			"OK    versions: every driver runs v0.2.0",
			"OK    CSIStorageCapacity: published for every node with a running driver (2 nodes, classes dhpp)",
		}},
		{"no CSIDriver", func(c *cluster) { c.objects = c.objects[:2] }, true, []string{
			"FAIL  CSIDriver hostpath.dhpp.io: not found",
			"      fix: install dhpp: kubectl apply -k deploy/kustomize/base",
			"FAIL  DaemonSet: no DaemonSet runs a dhpp-driver container",
		}},
		{"wrong CSIDriver field", func(c *cluster) {
			c.objects[2].(*storagev1.CSIDriver).Spec.StorageCapacity = ptr.To(false)
		}, true, []string{"FAIL  CSIDriver hostpath.dhpp.io: storageCapacity is false, want true"}},
		{"sidecar not ready on a node, DaemonSet missing on another", func(c *cluster) {
			ds := c.objects[4].(*appsv1.DaemonSet)
			ds.Status.NumberReady = 1
			p := c.objects[5].(*corev1.Pod)
			p.Status.ContainerStatuses[1] = corev1.ContainerStatus{Name: "csi-provisioner", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "pull csi-provisioner:v6.3.0: not found"}}}
			c.objects = append(c.objects[:6], c.objects[7:]...) // no pod on n2
		}, true, []string{
			"FAIL  DaemonSet dhpp-system/dhpp-node: 1 of 2 pods ready, 2 up to date",
			"FAIL  node n1: pod dhpp-node-n1: container csi-provisioner ImagePullBackOff (pull csi-provisioner:v6.3.0: not found)",
			"FAIL  node n2: no dhpp driver pod",
		}},
		{"fenced, stale and degraded pools", func(c *cluster) {
			c.pools[0].Status.Health = v1.Health{State: "Fenced", Reason: "io_error", Message: "write: EIO"}
			c.pools[1].Status.UpdatedAt = mt(-time.Hour)
		}, true, []string{
			"FAIL  pool n1/default: fenced (io_error): write: EIO",
			"      fix: repair or replace the disk, then: kubectl dhpp unfence n1 default",
			"FAIL  pool n2/default: status not updated for 10m0s (last 1h)",
		}},
		{"a node publishes no pool, capacity missing", func(c *cluster) {
			c.pools = c.pools[:1]
			c.objects = append(c.objects[:8], c.objects[9:]...) // no CSIStorageCapacity for n2
		}, true, []string{
			"FAIL  node n2: no DhppPool published",
			"FAIL  CSIStorageCapacity: none for node(s) n2",
		}},
		{"data directory private in the driver's container", func(c *cluster) {
			c.pools[1].Status.Mount.Propagation = v1.PropagationPrivate
		}, true, []string{
			"FAIL  data directory n2/default: /var/lib/dhpp is a private mount in the driver's container: a disk the node mounts, unmounts or replaces there after the driver started stays invisible to it",
			"      fix: on node n2, as root: mount --make-rshared /var/lib/dhpp; give the driver's data-dir volumeMount mountPropagation: Bidirectional as deploy/ does; then: kubectl -n dhpp-system delete pod dhpp-node-n2",
		}},
		{"a driver too old to report the mount", func(c *cluster) {
			c.pools[1].Status.Mount = nil
			c.pools[1].Status.DriverVersion = "v0.1.0"
		}, true, []string{
			"FAIL  data directory n2/default: the driver on n2 (v0.1.0) does not report the mount propagation of /var/lib/dhpp/default: too old for this check",
			"      fix: upgrade dhpp to this plugin's version",
		}},
		{"the runtime refuses the driver: the node's data directory is not shared", func(c *cluster) {
			c.objects[4].(*appsv1.DaemonSet).Status.NumberReady = 1
			c.objects[6].(*corev1.Pod).Status.ContainerStatuses[0] = corev1.ContainerStatus{Name: "dhpp-driver", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
				Reason:  "CreateContainerError",
				Message: `failed to generate container "1f2e" spec: failed to generate spec: path "/mnt/dhpp-data" is mounted on "/mnt/dhpp-data" but it is not a shared mount`}}}
		}, true, []string{
			`FAIL  node n2: pod dhpp-node-n2: container dhpp-driver CreateContainerError (failed to generate container "1f2e" spec: failed to generate spec: path "/mnt/dhpp-data" is mounted on "/mnt/dhpp-data" but it is not a shared mount)`,
			"      fix: on node n2, as root: mount --make-rshared /mnt/dhpp-data (the container runtime starts a container with a Bidirectional mount only from a shared mount; make it last: see the README, Install on your cluster); then: kubectl -n dhpp-system delete pod dhpp-node-n2",
		}},
		{"data directory a slave mount: a warning", func(c *cluster) {
			c.pools[0].Status.Mount.Propagation = v1.PropagationSlave
		}, false, []string{
			"WARN  data directory n1/default: /var/lib/dhpp is a slave mount in the driver's container (HostToContainer)",
		}},
		{"RAID degraded and versions differ: warnings only", func(c *cluster) {
			c.pools[1].Status.RAID = v1.RAID{Degraded: true, Detail: "md0: 1 of 2 members failed (sdb)"}
			c.pools[1].Status.DriverVersion = "v0.1.0"
		}, false, []string{
			"WARN  pool n2/default: RAID degraded: md0: 1 of 2 members failed (sdb)",
			"WARN  versions: drivers differ: v0.1.0 on n2; v0.2.0 on n1",
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := healthyCluster()
			if c.mutate != nil {
				c.mutate(cl)
			}
			env, out, _, _ := cl.env(t)
			err := Run(context.Background(), env, []string{"doctor"}, Options{})
			if c.fail != errors.Is(err, errChecksFailed) {
				t.Errorf("error %v, want failed checks %v", err, c.fail)
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestFenceUnfence(t *testing.T) {
	env, out, dyn, kc := healthyCluster().env(t)
	ctx := context.Background()
	// No driver answers in this test: Timeout 0, do not wait.
	if err := Run(ctx, env, []string{"fence", "n1", "default"}, Options{Reason: "replacing sdb"}); err != nil {
		t.Fatalf("fence: %v", err)
	}
	p := getPoolT(t, env, "n1", "default")
	if p.Spec.Fence == nil || p.Spec.Fence.Reason != "replacing sdb" || !p.Spec.Fence.RequestedAt.Time.Equal(now) {
		t.Fatalf("spec.fence = %+v", p.Spec.Fence)
	}
	if !strings.Contains(out.String(), "pool default on node n1 fenced") {
		t.Errorf("fence output: %s", out)
	}

	// unfence clears the request, then annotates the Node.
	var order []string
	dyn.PrependReactor("patch", "dhpppools", func(a k8stestingAction) (bool, runtime.Object, error) {
		order = append(order, "clear spec.fence")
		return false, nil, nil
	})
	kc.PrependReactor("patch", "nodes", func(a k8stestingAction) (bool, runtime.Object, error) {
		order = append(order, "annotate node")
		return false, nil, nil
	})
	if err := Run(ctx, env, []string{"unfence", "n1", "default"}, Options{}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"clear spec.fence", "annotate node"}, order); diff != "" {
		t.Errorf("unfence order (-want +got):\n%s", diff)
	}
	if p := getPoolT(t, env, "n1", "default"); p.Spec.Fence != nil {
		t.Errorf("spec.fence still %+v", p.Spec.Fence)
	}
	n, err := kc.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if err != nil || n.Annotations[kube.UnfenceAnnotationPrefix+"default"] != now.Format(time.RFC3339) {
		t.Errorf("node annotations %v, %v", n.Annotations, err)
	}
}

func TestFenceWaitsForTheDriver(t *testing.T) {
	env, _, dyn, _ := healthyCluster().env(t)
	ctx := context.Background()
	// A driver that never acts: the wait ends with an error that says so.
	err := Run(ctx, env, []string{"fence", "n2", "default"}, Options{Reason: "disk swap", Timeout: 700 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "still reports pool default Healthy after 700ms") {
		t.Fatalf("error %v", err)
	}
	// A driver that acts: fence returns once the status says Fenced.
	go func() {
		time.Sleep(300 * time.Millisecond)
		p := getPoolT(t, env, "n1", "default")
		p.Status.Health.State = "Fenced"
		u, _ := v1.ToUnstructured(p)
		_, _ = dyn.Resource(v1.GroupVersionResource).UpdateStatus(ctx, u, metav1.UpdateOptions{})
	}()
	if err := Run(ctx, env, []string{"fence", "n1", "default"}, Options{Reason: "disk swap", Timeout: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
}

func getPoolT(t *testing.T, env Env, node, pool string) *v1.DhppPool {
	t.Helper()
	p, err := getPool(context.Background(), env, node, pool)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseSummary(t *testing.T) {
	raw := []byte(`{"node":{},"pods":[{"volume":[{"name":"data","usedBytes":4096,"pvcRef":{"name":"data-db-0","namespace":"db"}},{"name":"tmp","usedBytes":1}]}]}`)
	got, err := parseSummary(raw)
	if err != nil || len(got) != 1 || got["db/data-db-0"] != 4096 {
		t.Errorf("parseSummary = %v, %v", got, err)
	}
	if _, err := parseSummary([]byte("<html>")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestMainExitCodes(t *testing.T) {
	cases := []struct {
		args    []string
		code    int
		stderr  string
		comment string
	}{
		{[]string{}, 1, "Commands:", "no command: usage"},
		{[]string{"--help"}, 0, "Commands:", "help"},
		{[]string{"--bogus", "pools"}, 1, "unknown flag: --bogus", "unknown flag"},
		{[]string{"--kubeconfig", "/nonexistent/config", "pools"}, 1, "error: kubeconfig:", "unreadable kubeconfig"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		if code := Main(c.args, &out, &errb); code != c.code || !strings.Contains(errb.String(), c.stderr) {
			t.Errorf("%s: exit %d stderr %q, want %d and %q", c.comment, code, errb.String(), c.code, c.stderr)
		}
	}
}

type k8stestingAction = k8stesting.Action
