//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestDriverRestart kills the dhpp-node pod on a node whose volumes are in
// use: the app keeps reading and writing its volume while the driver is away
// and after it is back, the DaemonSet brings the driver back, and a new
// claim provisions on that node again. Once per backend: a btrfs subvolume,
// and a loop volume (whose loop device and mount the dead driver made).
func TestDriverRestart(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 15*time.Minute)
	ns := e.namespace(t, "restart")
	for _, node := range []string{btrfsNode, loopNode} {
		t.Run(nodeFS(node)+" node "+node, func(t *testing.T) {
			driverRestartCheck(t, e, ctx, ns, node)
		})
	}
}

// appendLoop appends a counter line to /data/log five times a second.
const appendLoop = `trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo $i >> /data/log; sleep 0.2; done`

func driverRestartCheck(t *testing.T, e *env, ctx context.Context, ns, node string) {
	app := "app-" + node
	e.applyYAML(t, ctx, pvcYAML(ns, app, "64Mi", false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, app, app, podOpts{node: node, command: appendLoop}))
	e.waitPodReady(t, ctx, ns, app, "", 3*time.Minute)

	counter := func() (int, error) {
		out, err := e.exec(ctx, ns, app, "tail", "-n", "1", "/data/log")
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(strings.TrimSpace(out))
	}
	last, err := counter()
	if err != nil {
		t.Fatal(err)
	}

	old, err := e.driverPod(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	// A one-second grace: SIGTERM, then SIGKILL. Not a forced delete: the
	// old pod object stays until its containers are dead, so the DaemonSet
	// never runs two drivers on one node.
	grace := int64(1)
	killed := time.Now()
	if err := e.cs.CoreV1().Pods(dhppNamespace).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatalf("delete driver pod %s: %v", old.Name, err)
	}
	t.Logf("deleted driver pod %s on %s", old.Name, node)

	// While no driver is Ready on the node, the app must keep writing and
	// reading its volume.
	// The app appends 5 lines a second; two reads may fall between two
	// appends, so only a counter that stands still for appStall counts as
	// stopped I/O.
	const appStall = 3 * time.Second
	var during []int
	var back string
	lastChange := time.Now()
	err = poll(ctx, 3*time.Minute, time.Second, "a new Ready driver pod on "+node, func() (bool, string, error) {
		p, err := e.driverPod(ctx, node)
		if err == nil && p.UID != old.UID && podReady(p) {
			back = p.Name
			return true, "", nil
		}
		n, cerr := counter()
		if cerr != nil {
			return false, "", fmt.Errorf("app I/O while the driver is away: %w", cerr)
		}
		if n > last {
			during = append(during, n)
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) > appStall {
			return false, "", fmt.Errorf("app counter stuck at %d for %s while the driver is away", n, time.Since(lastChange).Round(100*time.Millisecond))
		}
		return false, fmt.Sprintf("counter %d", n), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("driver %s Ready on %s %s after the kill; app counter advanced during the gap: %v",
		back, node, time.Since(killed).Round(100*time.Millisecond), during)
	if len(during) == 0 {
		t.Errorf("no app I/O was observed while the driver was away (it came back in %s)", time.Since(killed))
	}
	if _, err := e.cs.CoreV1().Pods(dhppNamespace).Get(ctx, old.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("old driver pod %s still exists: %v", old.Name, err)
	}

	// After: still the same container, still writing, and every line of
	// the log is there (no write was lost).
	time.Sleep(time.Second)
	n, err := counter()
	if err != nil {
		t.Fatal(err)
	}
	if n <= last {
		t.Errorf("app counter %d did not advance after the driver came back (was %d)", n, last)
	}
	if out, err := e.exec(ctx, ns, app, "awk", `$1 != NR { print "line " NR " is " $1; exit 1 } END { print NR " lines" }`, "/data/log"); err != nil {
		t.Errorf("the app's log has a gap: %v", err)
	} else {
		t.Logf("app log intact: %s", strings.TrimSpace(out))
	}
	p, err := e.cs.CoreV1().Pods(ns).Get(ctx, app, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rc := p.Status.ContainerStatuses[0].RestartCount; rc != 0 || !podReady(p) {
		t.Errorf("app pod restarted %d times or is not Ready: %s", rc, podStatus(p))
	}

	// New volumes provision on the node again.
	start := time.Now()
	fresh := "fresh-" + node
	e.applyYAML(t, ctx, pvcYAML(ns, fresh, "64Mi", false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, fresh, fresh, podOpts{node: node}))
	e.waitPodReady(t, ctx, ns, fresh, "", 3*time.Minute)
	_, pv := e.waitPVCBound(t, ctx, ns, fresh, time.Minute)
	if got, err := pvNode(pv); err != nil || got != node {
		t.Errorf("new volume on %q (%v), want %s", got, err, node)
	}
	if got := e.sh(t, ctx, ns, fresh, "echo ok > /data/f && cat /data/f"); got != "ok" {
		t.Errorf("new volume reads %q", got)
	}
	t.Logf("a new claim provisioned and mounted on %s in %s", node, time.Since(start).Round(100*time.Millisecond))
}
