package cluster

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNodeExec checks that NodeExec refuses what it cannot reach (no state,
// a node the state does not name, a dead holder) and, as root, runs a
// command in a live holder's namespaces (here: a sleep in the host's own).
func TestNodeExec(t *testing.T) {
	sleeper, err := startDaemon("holder", filepath.Join(t.TempDir(), "holder.log"), []string{"sleep", "300"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Stop(time.Second) })
	dead := Proc{Name: "gone", PID: sleeper.PID, StartTime: sleeper.StartTime + 1}

	tests := []struct {
		name     string
		state    *State // nil: no state file
		node     string
		argv     []string
		wantErr  string
		wantOut  string
		needRoot bool
	}{
		{name: "no state", node: "n1", argv: []string{"true"}, wantErr: "no cluster state"},
		{name: "no command", node: "n1", state: &State{}, wantErr: "no command"},
		{name: "unknown node", node: "n9", argv: []string{"true"},
			state: &State{Nodes: []NodeState{{Spec: NodeSpec{Name: "n1"}, Holder: sleeper}}}, wantErr: "not in the cluster state"},
		{name: "dead holder", node: "n1", argv: []string{"true"},
			state: &State{Nodes: []NodeState{{Spec: NodeSpec{Name: "n1"}, Holder: dead}}}, wantErr: "not running"},
		{name: "live holder", node: "n1", argv: []string{"echo", "inside"}, needRoot: true,
			state: &State{Nodes: []NodeState{{Spec: NodeSpec{Name: "n1"}, Holder: sleeper}}}, wantOut: "inside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.needRoot {
				requireRoot(t)
			}
			cfg := Config{OutputDir: t.TempDir()}
			if tt.state != nil {
				tt.state.path = cfg.statePath()
				if err := tt.state.save(); err != nil {
					t.Fatal(err)
				}
			}
			out, err := NodeExec(context.Background(), cfg, tt.node, tt.argv...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out != tt.wantOut {
				t.Errorf("out = %q, want %q", out, tt.wantOut)
			}
		})
	}
}
