package health_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/health"
)

func TestDescribeStatus(t *testing.T) {
	since := time.Date(2026, 11, 21, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		s    health.Status
		want string
	}{
		{
			name: "fenced by the probe",
			s:    health.Status{State: health.Fenced, Since: since, Reason: health.ReasonReadOnly, ConsecutiveFailures: 3, LastError: "write /p/.dhpp/health: read-only file system"},
			want: "state Fenced since 2026-11-21T20:00:00Z, reason read_only after 3 consecutive failed probes, last probe error: write /p/.dhpp/health: read-only file system",
		},
		{
			name: "fenced by hand",
			s:    health.Status{State: health.Fenced, Since: since, Reason: health.ReasonManual, Manual: true, LastError: "restored from label"},
			want: "state Fenced since 2026-11-21T20:00:00Z, reason manual (fenced by hand), last error: restored from label",
		},
		{
			name: "no time, no error",
			s:    health.Status{State: health.Fenced},
			want: "state Fenced",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.Describe(); got != tt.want {
				t.Fatalf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestPoolFenced(t *testing.T) {
	mon, err := health.NewMonitor(health.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.AddPool("a", filepath.Join(t.TempDir(), "health")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		pool       string
		act        func()
		wantFenced bool
		wantReason string
	}{
		{name: "healthy", pool: "a", act: func() {}},
		{name: "unknown pool is not fenced", pool: "zz", act: func() {}},
		{name: "fenced", pool: "a", act: func() { _ = mon.Fence("a", "disk replaced soon") }, wantFenced: true, wantReason: "state Fenced"},
		{name: "unfenced", pool: "a", act: func() { _ = mon.Unfence("a") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.act()
			fenced, why := mon.PoolFenced(tt.pool)
			if fenced != tt.wantFenced || !strings.Contains(why, tt.wantReason) || (!fenced && why != "") {
				t.Fatalf("PoolFenced = %v, %q; want %v, %q", fenced, why, tt.wantFenced, tt.wantReason)
			}
			if fenced && !strings.Contains(why, "disk replaced soon") {
				t.Fatalf("reason %q lacks the message", why)
			}
		})
	}
}
