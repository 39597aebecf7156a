package scale

import (
	"testing"
	"time"
)

func TestOrphanPeriod(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		want    time.Duration
		wantErr bool
	}{
		{"shipped", []string{"--node-id=$(NODE_NAME)", "--orphan-grace=1h", "--orphan-check-period=10m"}, 10 * time.Minute, false},
		{"e2e overlay", []string{"--orphan-check-period=5s"}, 5 * time.Second, false},
		{"off", []string{"--orphan-check-period=0"}, 0, false},
		{"driver default", []string{"--orphan-grace=1h"}, defaultOrphanPeriod, false},
		{"the last one wins", []string{"--orphan-check-period=1m", "--orphan-check-period=2m"}, 2 * time.Minute, false},
		{"garbage", []string{"--orphan-check-period=often"}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := orphanPeriod(tc.args)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("orphanPeriod(%q) = %s, %v; want %s, error %v", tc.args, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestOrphanHoldUntil(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 19, 0, 0, 0, time.UTC)
	starts := []time.Time{t0, t0.Add(40 * time.Second), t0.Add(10 * time.Second)}
	for _, tc := range []struct {
		name   string
		starts []time.Time
		period time.Duration
		want   time.Time
	}{
		// The last driver started at +40 s; its first periodic listing
		// comes by +40 s + 10 min + 1 min jitter, and takes up to 20 s.
		{"shipped", starts, 10 * time.Minute, t0.Add(40*time.Second + 11*time.Minute + listingSlack)},
		{"short period", starts[:1], 5 * time.Second, t0.Add(5*time.Second + 500*time.Millisecond + listingSlack)},
		{"no check", starts, 0, time.Time{}},
		{"too long to wait", starts, time.Hour, time.Time{}},
		{"no driver found", nil, 10 * time.Minute, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := orphanHoldUntil(tc.starts, tc.period); !got.Equal(tc.want) {
				t.Errorf("orphanHoldUntil = %s, want %s", got, tc.want)
			}
		})
	}
}
