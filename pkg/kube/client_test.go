package kube_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dhpp-io/dhpp/pkg/kube"
)

func TestConnect(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "kubeconfig")
	// A kubeconfig pointing at loopback; Connect only builds the client
	// and sends nothing.
	if err := os.WriteFile(good, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		kubeconfig string
		wantClient bool
		wantErr    string
	}{
		{name: "no cluster, no kubeconfig: run without", wantClient: false},
		{name: "kubeconfig", kubeconfig: good, wantClient: true},
		{name: "missing kubeconfig is an error", kubeconfig: filepath.Join(dir, "nope"), wantErr: "load --kubeconfig"},
	}
	// Not in a cluster, whatever machine runs the test.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := kube.Connect(tt.kubeconfig)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (c != nil) != tt.wantClient {
				t.Fatalf("client = %v, want one: %v", c, tt.wantClient)
			}
		})
	}
}
