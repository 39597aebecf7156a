package scale

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dhpp-io/dhpp/test/e2e/bench"
)

// The driver's orphan check lists every PV once per --orphan-check-period
// (10 min shipped, plus up to 10 % jitter): once at start, then
// periodically. The measurement starts after the rollout, so the start
// listing is outside it; the first periodic one falls inside only if the
// run lasts past the driver's start plus one period and its jitter, which
// a run of ~10 min does by chance or not. holdForOrphanCheck keeps
// measuring until it has, so that every driver's periodic listing is
// counted.

const (
	// defaultOrphanPeriod is dhpp-driver's own default (internal/app).
	defaultOrphanPeriod = 10 * time.Minute
	// orphanFlag is the driver's flag for the period.
	orphanFlag = "--orphan-check-period="
	// holdLongest bounds the hold: a period longer than this (or 0, no
	// check) is not waited for.
	holdLongest = 15 * time.Minute
	// listingSlack is how long a listing of thousands of PVs (9 pages at
	// 4,500) takes on a loaded machine, after its timer fired.
	listingSlack = 20 * time.Second
)

// orphanPeriod is the period dhpp-driver runs with, from its arguments.
func orphanPeriod(args []string) (time.Duration, error) {
	p := defaultOrphanPeriod
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, orphanFlag); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				return 0, fmt.Errorf("dhpp-driver %s: %w", a, err)
			}
			p = d
		}
	}
	return p, nil
}

// orphanHoldUntil is when every driver started at one of starts has made
// its first periodic listing: the latest start plus the period, its
// largest jitter and the listing's own time. Zero when there is nothing to
// wait for (no check, or a period too long to wait).
func orphanHoldUntil(starts []time.Time, period time.Duration) time.Time {
	if period <= 0 || period > holdLongest || len(starts) == 0 {
		return time.Time{}
	}
	latest := starts[0]
	for _, s := range starts[1:] {
		if s.After(latest) {
			latest = s
		}
	}
	return latest.Add(period + period/10 + listingSlack)
}

// driverStarts are the start times of the running dhpp-driver containers.
func driverStarts(ctx context.Context, c kubernetes.Interface) ([]time.Time, error) {
	pods, err := c.CoreV1().Pods(bench.DHPPNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=dhpp,app.kubernetes.io/component=node"})
	if err != nil {
		return nil, err
	}
	var out []time.Time
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == "dhpp-driver" && cs.State.Running != nil {
				out = append(out, cs.State.Running.StartedAt.Time)
			}
		}
	}
	return out, nil
}

// holdForOrphanCheck waits, after the last level, until every driver has
// made its first periodic orphan listing (see above) and returns how long
// it waited.
func holdForOrphanCheck(ctx context.Context, c kubernetes.Interface, args []string, out io.Writer) (time.Duration, error) {
	period, err := orphanPeriod(args)
	if err != nil {
		return 0, err
	}
	starts, err := driverStarts(ctx, c)
	if err != nil {
		return 0, fmt.Errorf("dhpp-driver start times: %w", err)
	}
	until := orphanHoldUntil(starts, period)
	wait := time.Until(until)
	if wait <= 0 {
		return 0, nil
	}
	fmt.Fprintf(out, "holding the last level %s more: the drivers' orphan check (every %s) lists the PVs next by %s\n",
		wait.Round(time.Second), period, until.UTC().Format("15:04:05"))
	return wait, sleep(ctx, wait)
}
