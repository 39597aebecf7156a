package app

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
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
		{
			name: "minimal with NODE_NAME",
			args: []string{"--pool=default=/mnt/data"},
			env:  map[string]string{"NODE_NAME": "worker-1"},
			check: func(t *testing.T, c Config) {
				if c.NodeID != "worker-1" || len(c.Pools) != 1 || c.Pools[0] != (node.PoolConfig{Name: "default", Path: "/mnt/data", Backend: node.BackendAuto}) {
					t.Fatalf("config %+v", c)
				}
				if c.TrashRetention != 15*time.Minute || c.DefaultVolumeSize != 1<<30 {
					t.Fatalf("defaults %+v", c)
				}
			},
		},
		{
			name: "flags win over env, several pools, quantities",
			args: []string{"--node-id=n2", "--pool=a=/x,backend=btrfs", "--pool=b=/y,backend=loop,fs=xfs", "--pool=c=/z,backend=btrfs,btrfs-quota=simple", "--default-volume-size=2Gi", "--trash-retention=30s"},
			env:  map[string]string{"NODE_NAME": "ignored"},
			check: func(t *testing.T, c Config) {
				if c.NodeID != "n2" || len(c.Pools) != 3 || c.Pools[1].Backend != node.BackendLoop || c.Pools[1].FsType != "xfs" || c.Pools[2].BtrfsQuota != node.BtrfsQuotaSimple || c.DefaultVolumeSize != 2<<30 || c.TrashRetention != 30*time.Second {
					t.Fatalf("config %+v", c)
				}
			},
		},
		{name: "no pool", args: []string{"--node-id=n"}, wantErr: "no --pool given"},
		{name: "pool without path", args: []string{"--node-id=n", "--pool=default"}, wantErr: "want name=path"},
		{name: "relative pool path", args: []string{"--node-id=n", "--pool=d=data"}, wantErr: "must be absolute"},
		{name: "bad backend", args: []string{"--node-id=n", "--pool=d=/x,backend=zfs"}, wantErr: `unknown backend "zfs"`},
		{name: "bad pool option", args: []string{"--node-id=n", "--pool=d=/x,quota=1"}, wantErr: `unknown option "quota"`},
		{name: "bad btrfs quota mode", args: []string{"--node-id=n", "--pool=d=/x,btrfs-quota=squota"}, wantErr: `btrfs-quota="squota": want qgroup or simple`},
		{name: "bad loop fs", args: []string{"--node-id=n", "--pool=d=/x,fs=zfs"}, wantErr: `fsType "zfs" is not supported`},
		{name: "bad pool name", args: []string{"--node-id=n", "--pool=D_1=/x"}, wantErr: "DNS label"},
		{name: "zero retention", args: []string{"--node-id=n", "--pool=d=/x", "--trash-retention=0s"}, wantErr: "must be positive"},
		{name: "bad size", args: []string{"--node-id=n", "--pool=d=/x", "--default-volume-size=lots"}, wantErr: "is not a size"},
		{name: "bad node id", args: []string{"--node-id=no/de", "--pool=d=/x"}, wantErr: "--node-id"},
		{name: "unknown flag", args: []string{"--frobnicate"}, wantErr: "flag provided but not defined"},
		{name: "stray argument", args: []string{"--node-id=n", "--pool=d=/x", "extra"}, wantErr: `unexpected argument "extra"`},
		{
			name: "health defaults are the seed probe's",
			args: []string{"--node-id=n", "--pool=d=/x"},
			check: func(t *testing.T, c Config) {
				if c.Health != health.DefaultConfig() {
					t.Fatalf("health %+v, want %+v", c.Health, health.DefaultConfig())
				}
				if c.Health.Period != 5*time.Second || c.Health.Timeout != time.Second || c.Health.FailureThreshold != 3 || c.Health.SuccessThreshold != 1 || c.Health.AutoUnfence {
					t.Fatalf("health %+v", c.Health)
				}
				if c.Kubeconfig != "" {
					t.Fatalf("kubeconfig %q", c.Kubeconfig)
				}
			},
		},
		{
			name: "health flags",
			args: []string{"--node-id=n", "--pool=d=/x", "--health-period=2s", "--health-timeout=500ms", "--health-failure-threshold=5",
				"--health-success-threshold=2", "--health-unfence-threshold=12", "--health-auto-unfence", "--kubeconfig=/etc/kube.conf"},
			check: func(t *testing.T, c Config) {
				want := health.DefaultConfig()
				want.Period, want.Timeout, want.FailureThreshold, want.SuccessThreshold, want.UnfenceThreshold, want.AutoUnfence = 2*time.Second, 500*time.Millisecond, 5, 2, 12, true
				if c.Health != want || c.Kubeconfig != "/etc/kube.conf" {
					t.Fatalf("health %+v kubeconfig %q, want %+v", c.Health, c.Kubeconfig, want)
				}
			},
		},
		{name: "health timeout above period", args: []string{"--node-id=n", "--pool=d=/x", "--health-period=1s", "--health-timeout=2s"}, wantErr: "--health-timeout 2s must not exceed --health-period 1s"},
		{name: "zero failure threshold", args: []string{"--node-id=n", "--pool=d=/x", "--health-failure-threshold=0"}, wantErr: "--health-failure-threshold must be >= 1"},
		{name: "zero success threshold", args: []string{"--node-id=n", "--pool=d=/x", "--health-success-threshold=0"}, wantErr: "--health-success-threshold must be >= 1"},
		{name: "zero unfence threshold", args: []string{"--node-id=n", "--pool=d=/x", "--health-unfence-threshold=0"}, wantErr: "--health-unfence-threshold must be >= 1"},
		{name: "several health errors on one line", args: []string{"--node-id=n", "--pool=d=/x", "--health-period=0s", "--health-failure-threshold=-1"}, wantErr: "--health-period must be > 0, got 0s; --health-failure-threshold must be >= 1"},
		{name: "bad health period", args: []string{"--node-id=n", "--pool=d=/x", "--health-period=soon"}, wantErr: "health-period"},
		{
			name: "orphan check defaults and flags",
			args: []string{"--node-id=n", "--pool=d=/x"},
			check: func(t *testing.T, c Config) {
				if c.Orphans != (OrphanConfig{Grace: time.Hour, Period: 10 * time.Minute, Trash: true}) {
					t.Fatalf("orphans %+v", c.Orphans)
				}
			},
		},
		{
			name: "orphan check report only, short grace",
			args: []string{"--node-id=n", "--pool=d=/x", "--orphan-grace=30s", "--orphan-check-period=5s", "--orphan-trash=false"},
			check: func(t *testing.T, c Config) {
				if c.Orphans != (OrphanConfig{Grace: 30 * time.Second, Period: 5 * time.Second}) {
					t.Fatalf("orphans %+v", c.Orphans)
				}
			},
		},
		{name: "orphan check off", args: []string{"--node-id=n", "--pool=d=/x", "--orphan-check-period=0"}, check: func(t *testing.T, c Config) {
			if c.Orphans.Period != 0 {
				t.Fatalf("orphans %+v", c.Orphans)
			}
		}},
		{name: "zero orphan grace", args: []string{"--node-id=n", "--pool=d=/x", "--orphan-grace=0s"}, wantErr: "--orphan-grace must be positive"},
		{name: "negative orphan period", args: []string{"--node-id=n", "--pool=d=/x", "--orphan-check-period=-1s"}, wantErr: "--orphan-check-period must not be negative"},
		{name: "klog flags accepted", args: []string{"--node-id=n", "--pool=d=/x", "--v=4"}, check: func(*testing.T, Config) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.args, io.Discard, env(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Fatalf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}
