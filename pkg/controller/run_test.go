package controller

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, c Config)
		wantErr string
	}{
		{name: "defaults", check: func(t *testing.T, c Config) {
			if c.Grace != 2*time.Minute || c.FenceLimit != 10*time.Minute || c.DryRun || c.LeaderElection || c.MetricsAddress != ":9808" {
				t.Errorf("defaults = %+v", c)
			}
		}},
		{name: "leader election takes the pod's namespace", args: []string{"--leader-election"}, env: map[string]string{"POD_NAMESPACE": "dhpp-system"},
			check: func(t *testing.T, c Config) {
				if !c.LeaderElection || c.LeaderElectionNamespace != "dhpp-system" || c.LeaseDuration != 15*time.Second {
					t.Errorf("leader election config = %+v", c)
				}
			}},
		{name: "short limits and dry run", args: []string{"--grace-period=20s", "--fenced-pool-limit=0", "--dry-run"},
			check: func(t *testing.T, c Config) {
				if c.Grace != 20*time.Second || c.FenceLimit != 0 || !c.DryRun {
					t.Errorf("config = %+v", c)
				}
			}},
		{name: "leader election without namespace", args: []string{"--leader-election"}, wantErr: "--leader-election-namespace"},
		{name: "renew deadline not below lease duration", args: []string{"--leader-election", "--leader-election-namespace=x", "--leader-election-renew-deadline=20s"}, wantErr: "lease duration"},
		{name: "negative grace", args: []string{"--grace-period=-1s"}, wantErr: "--grace-period"},
		{name: "negative fence limit", args: []string{"--fenced-pool-limit=-1s"}, wantErr: "--fenced-pool-limit"},
		{name: "no workers", args: []string{"--workers=0"}, wantErr: "--workers"},
		{name: "stray argument", args: []string{"recreate"}, wantErr: "unexpected argument"},
		{name: "unknown flag", args: []string{"--grace=1m"}, wantErr: "grace"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.args, io.Discard, env(tc.env))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) err = %v, want one mentioning %q", tc.args, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
	var out strings.Builder
	if _, err := Parse([]string{"--help"}, &out, env(nil)); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-grace-period duration") {
		t.Errorf("--help: err %v, output %q", err, out.String())
	}
}
