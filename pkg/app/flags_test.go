package app

import (
	"io"
	"strings"
	"testing"
	"time"

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
			args: []string{"--node-id=n2", "--pool=a=/x,backend=btrfs", "--pool=b=/y,backend=loop,fs=xfs", "--default-volume-size=2Gi", "--trash-retention=30s"},
			env:  map[string]string{"NODE_NAME": "ignored"},
			check: func(t *testing.T, c Config) {
				if c.NodeID != "n2" || len(c.Pools) != 2 || c.Pools[1].Backend != node.BackendLoop || c.Pools[1].FsType != "xfs" || c.DefaultVolumeSize != 2<<30 || c.TrashRetention != 30*time.Second {
					t.Fatalf("config %+v", c)
				}
			},
		},
		{name: "no pool", args: []string{"--node-id=n"}, wantErr: "no --pool given"},
		{name: "pool without path", args: []string{"--node-id=n", "--pool=default"}, wantErr: "want name=path"},
		{name: "relative pool path", args: []string{"--node-id=n", "--pool=d=data"}, wantErr: "must be absolute"},
		{name: "bad backend", args: []string{"--node-id=n", "--pool=d=/x,backend=zfs"}, wantErr: `unknown backend "zfs"`},
		{name: "bad pool option", args: []string{"--node-id=n", "--pool=d=/x,quota=1"}, wantErr: `unknown option "quota"`},
		{name: "bad loop fs", args: []string{"--node-id=n", "--pool=d=/x,fs=zfs"}, wantErr: `fsType "zfs" is not supported`},
		{name: "bad pool name", args: []string{"--node-id=n", "--pool=D_1=/x"}, wantErr: "DNS label"},
		{name: "zero retention", args: []string{"--node-id=n", "--pool=d=/x", "--trash-retention=0s"}, wantErr: "must be positive"},
		{name: "bad size", args: []string{"--node-id=n", "--pool=d=/x", "--default-volume-size=lots"}, wantErr: "is not a size"},
		{name: "bad node id", args: []string{"--node-id=no/de", "--pool=d=/x"}, wantErr: "--node-id"},
		{name: "unknown flag", args: []string{"--frobnicate"}, wantErr: "flag provided but not defined"},
		{name: "stray argument", args: []string{"--node-id=n", "--pool=d=/x", "extra"}, wantErr: `unexpected argument "extra"`},
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
