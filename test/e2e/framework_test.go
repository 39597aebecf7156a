//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/test/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The objects deploy/kustomize/overlays/local installs, as the scenario
// tests rely on them.
const (
	storageClass    = "hostpath-dynamic"
	dhppNamespace   = "dhpp-system"
	dhppDaemonSet   = "dhpp-node"
	dhppPodSelector = "app.kubernetes.io/name=dhpp,app.kubernetes.io/component=node"
	metricsPort     = 9808
	defaultPool     = "default"
	// trashRetention is the local overlay's --trash-retention.
	trashRetention = 30 * time.Second
	// busybox is the image the harness imports into every node.
	busybox = "dhpp.local/busybox:latest"
)

// env is the running cluster with dhpp installed, shared by the scenario
// tests of one `go test` process.
type env struct {
	cfg cluster.Config
	cs  kubernetes.Interface
}

var (
	sharedOnce sync.Once
	shared     *env
	sharedErr  error
	// broughtUp is set when this process started the cluster, so TestMain
	// tears it down again (unless DHPP_E2E_KEEP=1).
	broughtUp bool
)

// TestMain tears down a cluster that one of the scenario tests brought up,
// after all tests ran, and fails the run if down leaves anything behind.
func TestMain(m *testing.M) {
	code := m.Run()
	if broughtUp && os.Getenv("DHPP_E2E_KEEP") != "1" {
		cfg := shared.cfg
		start := time.Now()
		if err := cluster.Down(context.Background(), cfg, os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "down: %v\n", err)
			code = 1
		}
		fmt.Fprintf(os.Stderr, "cluster down in %s\n", time.Since(start).Round(100*time.Millisecond))
		if left := hostLeftovers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "down left behind:\n%s\n", strings.Join(left, "\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// dhppCluster returns the shared cluster with dhpp installed: it brings the
// cluster up (once per process) or reuses a running one, and (re)applies the
// local overlay, which is a no-op when it is already installed.
func dhppCluster(t *testing.T) *env {
	t.Helper()
	requireRoot(t)
	sharedOnce.Do(func() {
		shared, sharedErr = startShared()
	})
	if sharedErr != nil {
		t.Fatalf("cluster with dhpp: %v", sharedErr)
	}
	return shared
}

func startShared() (*env, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		return nil, err
	}
	cfg.InstallDHPP = true
	e := &env{cfg: cfg}
	start := time.Now()
	err = cluster.Up(ctx, cfg, os.Stderr)
	switch {
	case errors.Is(err, cluster.ErrAlreadyRunning):
		fmt.Fprintln(os.Stderr, "reusing the running cluster; applying the dhpp overlay")
		if err := cluster.InstallDHPP(ctx, cfg, os.Stderr); err != nil {
			return e, fmt.Errorf("install dhpp on the running cluster: %w", err)
		}
	case err != nil:
		if derr := cluster.Down(context.Background(), cfg, os.Stderr); derr != nil {
			err = errors.Join(err, fmt.Errorf("down after failed up: %w", derr))
		}
		return e, fmt.Errorf("up: %w", err)
	default:
		broughtUp = true
		fmt.Fprintf(os.Stderr, "cluster up with dhpp in %s\n", time.Since(start).Round(100*time.Millisecond))
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.KubeconfigPath())
	if err != nil {
		return e, fmt.Errorf("kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 50, 100
	if e.cs, err = kubernetes.NewForConfig(rc); err != nil {
		return e, fmt.Errorf("client: %w", err)
	}
	return e, nil
}

// hostLeftovers lists what of the cluster is still on the host (the checks
// of assertHostClean, usable outside a test).
func hostLeftovers() []string {
	checks := []struct {
		name string
		cmd  string
		bad  func(string) bool
	}{
		{"network namespaces", "ip netns list", func(s string) bool { return strings.Contains(s, "dhpp-node") }},
		{"loop devices", "losetup -a", func(s string) bool { return strings.Contains(s, "_output/cluster") }},
		{"mounts", "mount | grep -E '/mnt/dhpp-data|/var/lib/kubelet|_output/cluster|/run/dhpp-e2e' || true", func(s string) bool { return strings.TrimSpace(s) != "" }},
		{"iptables", "iptables-save | grep -E 'KUBE|CNI|DHPP' || true", func(s string) bool { return strings.TrimSpace(s) != "" }},
		{"links", "ip -br link", func(s string) bool { return strings.Contains(s, "dhpp-") }},
		{"routes", "ip route", func(s string) bool {
			return strings.Contains(s, "10.244.") || strings.Contains(s, "10.96.") || strings.Contains(s, "10.200.")
		}},
		{"cgroups", "ls -d /sys/fs/cgroup/*/dhpp-node-* 2>/dev/null || true", func(s string) bool { return strings.TrimSpace(s) != "" }},
	}
	var left []string
	for _, c := range checks {
		out, err := exec.Command("sh", "-c", c.cmd).CombinedOutput()
		if err != nil {
			left = append(left, fmt.Sprintf("%s: %v", c.name, err))
		} else if c.bad(string(out)) {
			left = append(left, fmt.Sprintf("%s:\n%s", c.name, out))
		}
	}
	return left
}

// testCtx is a context for one test, cancelled when it ends.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// namespace creates a namespace for one test. Its cleanup deletes it and
// waits until its PersistentVolumes are gone too, so that the next test
// starts with the nodes' capacity back and nothing of this one in flight.
func (e *env) namespace(t *testing.T, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := e.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	name := ns.Name
	t.Logf("namespace %s", name)
	t.Cleanup(func() {
		if t.Failed() {
			e.dump(t, name)
		}
		if os.Getenv("DHPP_E2E_KEEP_NAMESPACES") == "1" {
			return
		}
		e.deleteNamespace(t, name)
	})
	return name
}

func (e *env) deleteNamespace(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Pods first, with no grace: the test's busyboxes hold nothing worth
	// a graceful stop, and the claims cannot go while pods use them.
	zero := int64(0)
	_ = e.cs.CoreV1().Pods(name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
	if err := e.cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", name, err)
		return
	}
	start := time.Now()
	err := poll(ctx, 4*time.Minute, time.Second, "namespace "+name+" and its volumes gone", func() (bool, string, error) {
		_, err := e.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			return false, "namespace still there", nil
		}
		if !apierrors.IsNotFound(err) {
			return false, "", err
		}
		pvs, err := e.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, "", err
		}
		var left []string
		for _, pv := range pvs.Items {
			if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.Namespace == name {
				left = append(left, pv.Name+"("+string(pv.Status.Phase)+")")
			}
		}
		return len(left) == 0, "PVs left: " + strings.Join(left, " "), nil
	})
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	t.Logf("namespace %s and its volumes deleted in %s", name, time.Since(start).Round(100*time.Millisecond))
}

// dump logs what a failed test's namespace and dhpp look like.
func (e *env) dump(t *testing.T, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"-n", ns, "get", "pods,pvc,events", "-o", "wide"},
		{"get", "pv", "-o", "wide"},
		{"-n", dhppNamespace, "get", "pods,csistoragecapacities", "-o", "wide"},
	} {
		out, err := e.cfg.Kubectl(ctx, args...)
		t.Logf("kubectl %s:\n%s %v", strings.Join(args, " "), out, err)
	}
	out, _ := e.cfg.Kubectl(ctx, "-n", dhppNamespace, "logs", "-l", dhppPodSelector, "-c", "dhpp-driver", "--tail=30", "--prefix")
	t.Logf("driver logs:\n%s", out)
}

// poll calls check every interval until it reports done, returns an error,
// or timeout passes; the last status it gave goes into the timeout error.
func poll(ctx context.Context, timeout, interval time.Duration, what string, check func() (done bool, status string, err error)) error {
	deadline := time.Now().Add(timeout)
	var status string
	for {
		done, s, err := check()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if done {
			return nil
		}
		status = s
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s; last: %s", timeout, what, status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w; last: %s", what, ctx.Err(), status)
		case <-time.After(interval):
		}
	}
}

// applyYAML applies a manifest and fails the test on error.
func (e *env) applyYAML(t *testing.T, ctx context.Context, manifest string) {
	t.Helper()
	if err := apply(ctx, e.cfg, manifest); err != nil {
		t.Fatal(err)
	}
}

// exec runs a command in a pod's first container and returns its stdout.
// The error carries stdout and stderr, which is how a failing dd or touch
// explains itself; stderr is kept out of the result because kubectl adds
// its own noise there (e.g. websocket "Unknown stream id" lines).
func (e *env) exec(ctx context.Context, ns, pod string, cmd ...string) (string, error) {
	args := append([]string{"--kubeconfig=" + e.cfg.KubeconfigPath(), "-n", ns, "exec", pod, "--"}, cmd...)
	c := exec.CommandContext(ctx, e.cfg.KubeBin("kubectl"), args...)
	var stdout, stderr strings.Builder
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("exec in %s/%s %q: %w: %s%s", ns, pod, strings.Join(cmd, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// sh runs a shell script in a pod and fails the test if it fails.
func (e *env) sh(t *testing.T, ctx context.Context, ns, pod, script string) string {
	t.Helper()
	out, err := e.exec(ctx, ns, pod, "sh", "-c", script)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// waitPodReady waits until pod exists, is Ready, and (if notUID is set) is
// a different incarnation than the one with that UID.
func (e *env) waitPodReady(t *testing.T, ctx context.Context, ns, name string, notUID string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := poll(ctx, timeout, time.Second, "pod "+ns+"/"+name+" Ready", func() (bool, string, error) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not found", nil
		}
		if err != nil {
			return false, "", err
		}
		if notUID != "" && string(p.UID) == notUID {
			return false, "still the old pod", nil
		}
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, "", fmt.Errorf("pod ended: %s %s", p.Status.Phase, p.Status.Message)
		}
		pod = p
		return podReady(p), podStatus(p), nil
	})
	if err != nil {
		e.describe(t, ctx, ns, "pod", name)
		t.Fatal(err)
	}
	return pod
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podStatus is a one-line summary for timeout messages.
func podStatus(p *corev1.Pod) string {
	s := fmt.Sprintf("phase=%s node=%q", p.Status.Phase, p.Spec.NodeName)
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			s += fmt.Sprintf(" %s: %s", c.Type, c.Message)
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			s += fmt.Sprintf(" %s waiting: %s %s", cs.Name, w.Reason, w.Message)
		}
	}
	return s
}

func (e *env) describe(t *testing.T, ctx context.Context, ns, kind, name string) {
	t.Helper()
	out, _ := e.cfg.Kubectl(context.Background(), "-n", ns, "describe", kind, name)
	t.Logf("describe %s %s:\n%s", kind, name, out)
}

// waitPodGone waits until no pod named name exists.
func (e *env) waitPodGone(t *testing.T, ctx context.Context, ns, name string, timeout time.Duration) {
	t.Helper()
	err := poll(ctx, timeout, time.Second, "pod "+ns+"/"+name+" gone", func() (bool, string, error) {
		_, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		return false, "still there", err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitPVCBound waits for a claim to be Bound and returns it with its PV.
func (e *env) waitPVCBound(t *testing.T, ctx context.Context, ns, name string, timeout time.Duration) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	t.Helper()
	var pvc *corev1.PersistentVolumeClaim
	err := poll(ctx, timeout, time.Second, "PVC "+ns+"/"+name+" Bound", func() (bool, string, error) {
		c, err := e.cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not found", nil
		}
		if err != nil {
			return false, "", err
		}
		pvc = c
		return c.Status.Phase == corev1.ClaimBound, "phase " + string(c.Status.Phase), nil
	})
	if err != nil {
		e.describe(t, ctx, ns, "pvc", name)
		t.Fatal(err)
	}
	pv, err := e.cs.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("PV of %s/%s: %v", ns, name, err)
	}
	return pvc, pv
}

// pvNode is the node a dhpp PV's nodeAffinity pins it to, or an error
// saying why the PV is not a well-formed dhpp volume.
func pvNode(pv *corev1.PersistentVolume) (string, error) {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != dhpp.DriverName {
		return "", fmt.Errorf("PV %s is not a %s volume", pv.Name, dhpp.DriverName)
	}
	na := pv.Spec.NodeAffinity
	if na == nil || na.Required == nil || len(na.Required.NodeSelectorTerms) != 1 {
		return "", fmt.Errorf("PV %s: want exactly one required node selector term, got %+v", pv.Name, na)
	}
	term := na.Required.NodeSelectorTerms[0]
	if len(term.MatchExpressions) != 1 {
		return "", fmt.Errorf("PV %s: want one match expression, got %+v", pv.Name, term)
	}
	ex := term.MatchExpressions[0]
	if ex.Key != dhpp.TopologyKey || ex.Operator != corev1.NodeSelectorOpIn || len(ex.Values) != 1 {
		return "", fmt.Errorf("PV %s: want %s In [node], got %+v", pv.Name, dhpp.TopologyKey, ex)
	}
	return ex.Values[0], nil
}

// volumeName is the volume's name inside its pool: the last element of the
// <node>/<pool>/<name> volume ID.
func volumeName(pv *corev1.PersistentVolume) string {
	id := pv.Spec.CSI.VolumeHandle
	return id[strings.LastIndex(id, "/")+1:]
}

// capacities maps node name to the CSIStorageCapacity the node's provisioner
// publishes for the hostpath-dynamic class.
func (e *env) capacities(ctx context.Context) (map[string]*storagev1.CSIStorageCapacity, error) {
	list, err := e.cs.StorageV1().CSIStorageCapacities(dhppNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list CSIStorageCapacity: %w", err)
	}
	m := map[string]*storagev1.CSIStorageCapacity{}
	for i := range list.Items {
		c := &list.Items[i]
		if c.StorageClassName != storageClass || c.NodeTopology == nil {
			continue
		}
		node := c.NodeTopology.MatchLabels[dhpp.TopologyKey]
		if node == "" {
			continue
		}
		if m[node] != nil {
			return nil, fmt.Errorf("two CSIStorageCapacity objects for node %s and class %s: %s, %s", node, storageClass, m[node].Name, c.Name)
		}
		m[node] = c
	}
	return m, nil
}

// capacityBytes is a node's published capacity (-1 if it has none).
func (e *env) capacityBytes(ctx context.Context, node string) (int64, error) {
	m, err := e.capacities(ctx)
	if err != nil {
		return 0, err
	}
	c := m[node]
	if c == nil || c.Capacity == nil {
		return -1, nil
	}
	return c.Capacity.Value(), nil
}

// driverPod is the dhpp-node pod running on node.
func (e *env) driverPod(ctx context.Context, node string) (*corev1.Pod, error) {
	pods, err := e.cs.CoreV1().Pods(dhppNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: dhppPodSelector, FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil {
		return nil, fmt.Errorf("list driver pods on %s: %w", node, err)
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i], nil
		}
	}
	return nil, fmt.Errorf("no dhpp-node pod on %s", node)
}

// scrape fetches the driver's /metrics on node (the host routes to pod
// IPs) in Prometheus text format.
func (e *env) scrape(ctx context.Context, node string) (string, error) {
	pod, err := e.driverPod(ctx, node)
	if err != nil {
		return "", err
	}
	if pod.Status.PodIP == "" {
		return "", fmt.Errorf("driver pod %s has no IP yet", pod.Name)
	}
	text, err := httpGet(ctx, fmt.Sprintf("http://%s:%d/metrics", pod.Status.PodIP, metricsPort))
	if err != nil {
		return "", fmt.Errorf("scrape %s: %w", pod.Name, err)
	}
	return text, nil
}

// httpGet fetches url (5 s timeout) and wants HTTP 200.
func httpGet(ctx context.Context, url string) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return string(body), nil
}

// sampleSum adds up the samples of metric name whose label set contains
// labels (e.g. `pool="default"`); found is false if no series matches.
func sampleSum(text, name, labels string) (sum float64, found bool, err error) {
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		series, val, ok := strings.Cut(l, "} ")
		if !ok { // no labels
			series, val, _ = strings.Cut(l, " ")
		}
		if !strings.Contains(series, labels) {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			return 0, false, fmt.Errorf("no value in %q", l)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, false, fmt.Errorf("parse %q: %w", l, err)
		}
		sum += v
		found = true
	}
	return sum, found, nil
}

// nodeExec runs a command in a node's mount namespace (where its data disk
// is mounted) and fails the test on error.
func (e *env) nodeExec(t *testing.T, ctx context.Context, node string, argv ...string) string {
	t.Helper()
	out, err := cluster.NodeExec(ctx, e.cfg, node, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }

func mib(b int64) string { return fmt.Sprintf("%.0fMi", float64(b)/(1<<20)) }

// nodeNames are the cluster's nodes, in order.
func nodeNames() []string {
	var ns []string
	for _, n := range cluster.DefaultNodes() {
		ns = append(ns, n.Name)
	}
	return ns
}

// nodeFS is the filesystem of a node's data disk.
func nodeFS(node string) string {
	for _, n := range cluster.DefaultNodes() {
		if n.Name == node {
			return n.FS
		}
	}
	return ""
}

// Two of the default nodes, by role: a btrfs node (qgroup-enforced sizes,
// online growth) and the ext4 node (loop backend, block volumes).
const (
	btrfsNode = "dhpp-node-1"
	loopNode  = "dhpp-node-3"
)
