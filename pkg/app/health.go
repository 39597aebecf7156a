package app

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/dhpp-io/dhpp/pkg/driver"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// poolHealth adapts a health.Monitor to driver.PoolHealth.
type poolHealth struct{ m *health.Monitor }

var _ driver.PoolHealth = poolHealth{}

// PoolFenced reports whether pool is fenced, with a reason that names the
// state, the failure reason and the last probe error: it ends up in
// CreateVolume's ResourceExhausted message and in the volume conditions, so
// whoever reads a Pending PVC's events learns why without node access.
func (h poolHealth) PoolFenced(pool string) (bool, string) {
	fenced, s := h.m.Fenced(pool)
	if !fenced {
		return false, ""
	}
	return true, describeStatus(s)
}

func describeStatus(s health.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "state %s", s.State)
	if !s.Since.IsZero() {
		fmt.Fprintf(&b, " since %s", s.Since.UTC().Format(time.RFC3339))
	}
	if s.Reason != "" {
		fmt.Fprintf(&b, ", reason %s", s.Reason)
	}
	switch {
	case s.Manual:
		// A manual fence's LastError is the operator's (or the restore's)
		// message until a probe fails.
		if s.LastError != "" {
			fmt.Fprintf(&b, " (fenced by hand), last error: %s", s.LastError)
		}
	default:
		if s.ConsecutiveFailures > 0 {
			fmt.Fprintf(&b, " after %d consecutive failed probes", s.ConsecutiveFailures)
		}
		if s.LastError != "" {
			fmt.Fprintf(&b, ", last probe error: %s", s.LastError)
		}
	}
	return b.String()
}

// newMonitor makes the Monitor with one probe per pool, on the pool's own
// disk at <pool>/.dhpp/health.
func newMonitor(cfg health.Config, pools []*node.Pool) (*health.Monitor, error) {
	mon, err := health.NewMonitor(cfg)
	if err != nil {
		return nil, err
	}
	for _, p := range pools {
		if err := mon.AddPool(p.Name, filepath.Join(p.Path, filepath.FromSlash(node.HealthFile))); err != nil {
			return nil, err
		}
	}
	return mon, nil
}
