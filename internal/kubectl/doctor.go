package kubectl

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// driverContainer names the driver's container in dhpp's DaemonSet.
const driverContainer = "dhpp-driver"

// staleAfter is when a pool status counts as no longer published: the
// driver rewrites it at least every 5 minutes (pkg/poolstatus).
const staleAfter = 10 * time.Minute

// Check is one finding of doctor.
type Check struct {
	// Status is OK, WARN or FAIL.
	Status  string `json:"status"`
	Subject string `json:"subject"`
	Message string `json:"message"`
	// Fix says what to do about a WARN or FAIL.
	Fix string `json:"fix,omitempty"`
}

type report struct{ checks []Check }

func (r *report) ok(subject, format string, a ...any) {
	r.checks = append(r.checks, Check{Status: "OK", Subject: subject, Message: fmt.Sprintf(format, a...)})
}

func (r *report) warn(subject, fix, format string, a ...any) {
	r.checks = append(r.checks, Check{Status: "WARN", Subject: subject, Message: fmt.Sprintf(format, a...), Fix: fix})
}

func (r *report) fail(subject, fix, format string, a ...any) {
	r.checks = append(r.checks, Check{Status: "FAIL", Subject: subject, Message: fmt.Sprintf(format, a...), Fix: fix})
}

// doctor checks an installation: the CSIDriver, the DaemonSet and its
// containers on every node, the pools each node publishes, the
// CSIStorageCapacity objects the scheduler needs, and versions.
func doctor(ctx context.Context, env Env, o Options) error {
	r := &report{}
	checkCSIDriver(ctx, env, r)
	nodes, err := env.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list Nodes: %w", err)
	}
	withDriver := checkDaemonSet(ctx, env, r, nodes.Items)
	checkPools(ctx, env, r, withDriver)
	checkCapacity(ctx, env, r, withDriver)
	if o.Output == "json" || o.Output == "yaml" {
		if err := structured(env.Out, o.Output, map[string]any{"checks": r.checks}); err != nil {
			return err
		}
	} else {
		for _, c := range r.checks {
			fmt.Fprintf(env.Out, "%-4s  %s: %s\n", c.Status, c.Subject, c.Message)
			if c.Fix != "" {
				fmt.Fprintf(env.Out, "      fix: %s\n", c.Fix)
			}
		}
	}
	for _, c := range r.checks {
		if c.Status == "FAIL" {
			return errChecksFailed
		}
	}
	return nil
}

func checkCSIDriver(ctx context.Context, env Env, r *report) {
	subject := "CSIDriver " + dhpp.DriverName
	d, err := env.Kube.StorageV1().CSIDrivers().Get(ctx, dhpp.DriverName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		r.fail(subject, "install dhpp: kubectl apply -k deploy/kustomize/base (or the Helm chart in deploy/helm/dhpp)", "not found")
		return
	}
	if err != nil {
		r.fail(subject, "check your access (kubectl auth can-i get csidrivers)", "cannot read: %v", err)
		return
	}
	var wrong []string
	want := func(field string, got, exp any) {
		if fmt.Sprint(got) != fmt.Sprint(exp) {
			wrong = append(wrong, fmt.Sprintf("%s is %v, want %v", field, got, exp))
		}
	}
	s := d.Spec
	want("attachRequired", deref(s.AttachRequired), false)
	want("podInfoOnMount", deref(s.PodInfoOnMount), true)
	want("storageCapacity", deref(s.StorageCapacity), true)
	want("fsGroupPolicy", deref(s.FSGroupPolicy), storagev1.FileFSGroupPolicy)
	want("volumeLifecycleModes", s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent})
	if len(wrong) > 0 {
		r.fail(subject, "re-apply deploy/'s csidriver.yaml: kubectl delete csidriver "+dhpp.DriverName+" && kubectl apply -k deploy/kustomize/base (CSIDriver fields are immutable)", "%s", strings.Join(wrong, "; "))
		return
	}
	r.ok(subject, "attachRequired=false, podInfoOnMount=true, storageCapacity=true, fsGroupPolicy=File, Persistent")
}

func deref[T any](p *T) any {
	if p == nil {
		return "<unset>"
	}
	return *p
}

// checkDaemonSet finds dhpp's DaemonSet (the one with a dhpp-driver
// container), checks that every container of its pod is ready on every
// node, and returns the driver pods that run, by node.
func checkDaemonSet(ctx context.Context, env Env, r *report, nodes []corev1.Node) map[string]*corev1.Pod {
	running := map[string]*corev1.Pod{}
	dss, err := env.Kube.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		r.fail("DaemonSet", "check your access (kubectl auth can-i list daemonsets -A)", "cannot list: %v", err)
		return running
	}
	var ds *appsv1.DaemonSet
	for i := range dss.Items {
		for _, c := range dss.Items[i].Spec.Template.Spec.Containers {
			if c.Name == driverContainer {
				ds = &dss.Items[i]
			}
		}
	}
	if ds == nil {
		r.fail("DaemonSet", "install dhpp: kubectl apply -k deploy/kustomize/base", "no DaemonSet runs a %s container", driverContainer)
		return running
	}
	subject := "DaemonSet " + ds.Namespace + "/" + ds.Name
	var images []string
	for _, c := range ds.Spec.Template.Spec.Containers {
		images = append(images, c.Name+"="+c.Image)
	}
	st := ds.Status
	if st.NumberReady == st.DesiredNumberScheduled && st.UpdatedNumberScheduled == st.DesiredNumberScheduled && st.DesiredNumberScheduled > 0 {
		r.ok(subject, "%d/%d pods ready and up to date (%s)", st.NumberReady, st.DesiredNumberScheduled, strings.Join(images, ", "))
	} else {
		r.fail(subject, "see the per-node findings below; kubectl -n "+ds.Namespace+" get pods -o wide", "%d of %d pods ready, %d up to date", st.NumberReady, st.DesiredNumberScheduled, st.UpdatedNumberScheduled)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		r.fail(subject, "", "bad selector: %v", err)
		return running
	}
	pods, err := env.Kube.CoreV1().Pods(ds.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		r.fail(subject, "check your access (kubectl auth can-i list pods -n "+ds.Namespace+")", "cannot list its pods: %v", err)
		return running
	}
	podOn := map[string]*corev1.Pod{}
	for i := range pods.Items {
		podOn[pods.Items[i].Spec.NodeName] = &pods.Items[i]
	}
	for _, n := range nodes {
		p := podOn[n.Name]
		if p == nil {
			if len(n.Spec.Taints) > 0 {
				r.warn("node "+n.Name, "if dhpp should run there, add tolerations for its taints to the DaemonSet", "no dhpp driver pod (the node has taints %s)", taintList(n.Spec.Taints))
			} else {
				r.fail("node "+n.Name, "kubectl -n "+ds.Namespace+" describe daemonset "+ds.Name+" (node selector, affinity, resources)", "no dhpp driver pod")
			}
			continue
		}
		if bad := notReady(p); len(bad) > 0 {
			fix := "kubectl -n " + p.Namespace + " describe pod " + p.Name + "; kubectl -n " + p.Namespace + " logs " + p.Name + " -c <container>"
			if dir := notSharedMount(p); dir != "" {
				fix = fmt.Sprintf("on node %s, as root: mount --make-rshared %s (the container runtime starts a container with a Bidirectional mount only from a shared mount; make it last: see the README, Install on your cluster); then: kubectl -n %s delete pod %s",
					n.Name, dir, p.Namespace, p.Name)
			}
			r.fail("node "+n.Name, fix, "pod %s: %s", p.Name, strings.Join(bad, "; "))
			continue
		}
		running[n.Name] = p
		r.ok("node "+n.Name, "pod %s: all %d containers ready", p.Name, len(p.Status.ContainerStatuses))
	}
	return running
}

// notReady describes each container of p that is not ready, with the
// reason kubectl would show (ImagePullBackOff, CrashLoopBackOff, ...).
func notReady(p *corev1.Pod) []string {
	var bad []string
	if len(p.Status.ContainerStatuses) == 0 {
		return []string{"phase " + string(p.Status.Phase) + ", no container started"}
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.Ready {
			continue
		}
		why := "not ready"
		switch {
		case c.State.Waiting != nil:
			why = c.State.Waiting.Reason
			if c.State.Waiting.Message != "" {
				why += " (" + c.State.Waiting.Message + ")"
			}
		case c.State.Terminated != nil:
			why = "terminated: " + c.State.Terminated.Reason
		}
		bad = append(bad, fmt.Sprintf("container %s %s", c.Name, why))
	}
	return bad
}

// mountNotShared matches the container runtime's refusal of a mount whose
// propagation the node's mount cannot give (containerd and CRI-O word it
// the same): `path "/mnt/dhpp-data" is mounted on "/mnt/dhpp-data" but it
// is not a shared mount` (Bidirectional), `... not a shared or slave
// mount` (HostToContainer).
var mountNotShared = regexp.MustCompile(`is mounted on "([^"]+)" but it is not a shared`)

// notSharedMount is the node's mount point that kept one of p's
// containers from starting because it is not shared, "" if none did.
func notSharedMount(p *corev1.Pod) string {
	for _, c := range p.Status.ContainerStatuses {
		if w := c.State.Waiting; w != nil {
			if m := mountNotShared.FindStringSubmatch(w.Message); m != nil {
				return m[1]
			}
		}
	}
	return ""
}

func taintList(ts []corev1.Taint) string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Key + ":" + string(t.Effect)
	}
	return strings.Join(out, ", ")
}

// checkPools: every node whose driver runs publishes its pools, recently,
// none is fenced or missing, and each pool's data directory is a shared
// mount in the driver's container.
func checkPools(ctx context.Context, env Env, r *report, running map[string]*corev1.Pod) {
	ps, err := listPools(ctx, env, "")
	if err != nil {
		r.fail("DhppPools", "install dhpp's CRDs from deploy/", "%v", err)
		return
	}
	byNode := map[string][]v1.DhppPool{}
	versions := map[string][]string{}
	for _, p := range ps {
		byNode[p.Spec.Node] = append(byNode[p.Spec.Node], p)
		if v := p.Status.DriverVersion; v != "" {
			versions[v] = append(versions[v], p.Spec.Node)
		}
	}
	now := env.Now()
	for _, n := range sortedKeys(running) {
		if len(byNode[n]) == 0 {
			r.fail("node "+n, "the driver publishes its pools within 30 s of starting; if it runs longer, read its log: kubectl logs <pod> -c dhpp-driver (RBAC on dhpppools?)", "no DhppPool published")
		}
	}
	for _, p := range ps {
		subject := "pool " + p.Spec.Node + "/" + p.Spec.Pool
		s := p.Status
		switch {
		case s.UpdatedAt.IsZero() || now.Sub(s.UpdatedAt.Time) > staleAfter:
			r.fail(subject, "is the driver on "+p.Spec.Node+" running? kubectl dhpp doctor lists its pod; its log says why it cannot write", "status not updated for %s (last %s)", staleAfter, age(now, s.UpdatedAt.Time))
		case s.Missing != "":
			r.fail(subject, "mount the data disk at "+s.Path+" on "+p.Spec.Node+"; the pool opens by itself, then unfence it: kubectl dhpp unfence "+p.Spec.Node+" "+p.Spec.Pool, "%s", s.Missing)
		case s.Health.State == "Fenced":
			r.fail(subject, "repair or replace the disk, then: kubectl dhpp unfence "+p.Spec.Node+" "+p.Spec.Pool, "fenced (%s): %s", s.Health.Reason, s.Health.Message)
		case s.Health.State == "Failing":
			r.warn(subject, "watch it: kubectl get dpool "+p.Name+" -w; the pool is fenced after repeated failures", "disk probe failing (%s): %s", s.Health.Reason, s.Health.Message)
		case s.RAID.Degraded:
			r.warn(subject, "replace the failed disk and let the array rebuild", "RAID degraded: %s", s.RAID.Detail)
		case s.QuarantinedVolumes > 0:
			r.warn(subject, "see the node's VolumesQuarantined Event: kubectl describe node "+p.Spec.Node, "%d quarantined volumes", s.QuarantinedVolumes)
		default:
			r.ok(subject, "%s, %s free of %s, %d volumes, probe %s", s.Health.State, s.Free, s.Capacity, s.Volumes, s.Health.ProbeLatency)
		}
		if pod := running[p.Spec.Node]; pod != nil {
			checkMount(r, p, pod)
		}
	}
	switch len(versions) {
	case 0:
	case 1:
		for v := range versions {
			r.ok("versions", "every driver runs %s (kubectl-dhpp %s)", v, dhpp.Version)
		}
	default:
		var parts []string
		for _, v := range sortedKeys(versions) {
			parts = append(parts, fmt.Sprintf("%s on %s", v, strings.Join(uniq(versions[v]), ",")))
		}
		r.warn("versions", "finish the rollout: kubectl -n <namespace> rollout status daemonset/dhpp-node", "drivers differ: %s", strings.Join(parts, "; "))
	}
}

// checkMount: the driver needs to see what the node mounts at its data
// directory after it started (a disk mounted late, or unmounted and
// replaced); deploy/ mounts the directory Bidirectional, which the
// container runtime grants only from a shared mount on the node and
// which the driver sees as shared. Private means it sees nothing of the
// node's later mounts; slave (HostToContainer) sees them and is enough for
// today's driver, which mounts nothing there itself.
func checkMount(r *report, p v1.DhppPool, pod *corev1.Pod) {
	subject := "data directory " + p.Spec.Node + "/" + p.Spec.Pool
	m := p.Status.Mount
	restart := "kubectl -n " + pod.Namespace + " delete pod " + pod.Name
	switch {
	case m == nil:
		r.fail(subject, "upgrade dhpp to this plugin's version ("+dhpp.Version+"): kubectl apply -k deploy/kustomize/base (or helm upgrade)",
			"the driver on %s (%s) does not report the mount propagation of %s: too old for this check", p.Spec.Node, orUnknown(p.Status.DriverVersion), p.Status.Path)
	case m.Propagation == v1.PropagationShared:
		r.ok(subject, "%s is a shared mount in the driver's container", m.Point)
	case m.Propagation == v1.PropagationSlave:
		r.warn(subject, "mount it with mountPropagation: Bidirectional as deploy/ does (needs the node's mount shared: mount --make-rshared "+m.Point+" on "+p.Spec.Node+"), then: "+restart,
			"%s is a slave mount in the driver's container (HostToContainer): the driver sees the node's mounts there, but not as deploy/ installs it", m.Point)
	default:
		r.fail(subject, "on node "+p.Spec.Node+", as root: mount --make-rshared "+m.Point+"; give the driver's data-dir volumeMount mountPropagation: Bidirectional as deploy/ does; then: "+restart,
			"%s is a %s mount in the driver's container: a disk the node mounts, unmounts or replaces there after the driver started stays invisible to it (it would keep using the old disk)", m.Point, m.Propagation)
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "version unknown"
	}
	return s
}

// checkCapacity: csi-provisioner publishes a CSIStorageCapacity per node
// and dhpp StorageClass; without them the scheduler ignores free space.
func checkCapacity(ctx context.Context, env Env, r *report, running map[string]*corev1.Pod) {
	scs, err := env.Kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		r.fail("StorageClasses", "check your access", "cannot list: %v", err)
		return
	}
	classes := map[string]bool{}
	for _, sc := range scs.Items {
		if sc.Provisioner == dhpp.DriverName {
			classes[sc.Name] = true
		}
	}
	if len(classes) == 0 {
		r.warn("StorageClasses", "create one: see deploy/kustomize/base/storageclass.yaml", "no StorageClass uses %s", dhpp.DriverName)
		return
	}
	caps, err := env.Kube.StorageV1().CSIStorageCapacities("").List(ctx, metav1.ListOptions{})
	if err != nil {
		r.fail("CSIStorageCapacity", "check your access (kubectl auth can-i list csistoragecapacities -A)", "cannot list: %v", err)
		return
	}
	have := map[string]bool{}
	for _, c := range caps.Items {
		if !classes[c.StorageClassName] || c.NodeTopology == nil {
			continue
		}
		if n := c.NodeTopology.MatchLabels[dhpp.TopologyKey]; n != "" {
			have[n] = true
		}
	}
	var missing []string
	for _, n := range sortedKeys(running) {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		r.fail("CSIStorageCapacity", "csi-provisioner publishes them (--enable-capacity); read its log: kubectl logs <dhpp pod> -c csi-provisioner", "none for node(s) %s", strings.Join(missing, ", "))
		return
	}
	r.ok("CSIStorageCapacity", "published for every node with a running driver (%d nodes, classes %s)", len(running), strings.Join(sortedKeys(classes), ", "))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func uniq(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
