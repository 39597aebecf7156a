package app

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// TestRunWithoutKubernetes: outside a cluster and without --kubeconfig the
// driver runs (as in unit tests and the README demo): CSI, the probes and
// one /metrics with dhpp's and csi-lib-utils' series.
func TestRunWithoutKubernetes(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	// Production settings: the first probe runs at start.
	hc := health.DefaultConfig()
	d := startDriverKube(t, false, "solo", hc, node.PoolConfig{Name: "default", Path: t.TempDir(), Backend: node.BackendDir})
	if _, err := d.create("pvc-1"); err != nil {
		t.Fatal(err)
	}
	if c := d.capacity(); c <= 0 {
		t.Fatalf("GetCapacity = %d", c)
	}
	// Probes run: the histogram counts them.
	testdisk.WaitFor(t, "a few probes", func() bool {
		resp, err := http.Get(d.metrics)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `dhpp_health_probe_duration_seconds_count{pool="default"} `) &&
			!strings.Contains(string(b), `dhpp_health_probe_duration_seconds_count{pool="default"} 0`)
	})
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"dhpp_pool_volumes", map[string]string{"pool": "default"}, 1},
		{"dhpp_pool_fenced", map[string]string{"pool": "default"}, 0},
		{"dhpp_pool_health_state", map[string]string{"pool": "default", "state": "Healthy"}, 1},
		{"dhpp_volume_capacity_bytes", map[string]string{"pool": "default", "volume": "pvc-1"}, 32 << 20},
		{"dhpp_metrics_collect_errors", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if v, ok := d.gauge(tt.name, tt.labels); !ok || v != tt.want {
				t.Fatalf("%s%v = %v (present %v), want %v", tt.name, tt.labels, v, ok, tt.want)
			}
		})
	}
	// csi-lib-utils' operation histogram is on the same endpoint.
	resp, err := http.Get(d.metrics)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `csi_plugin_operations_seconds_count{driver_name="hostpath.dhpp.io",grpc_status_code="OK",method_name="/csi.v1.Controller/CreateVolume"} 1`) {
		t.Errorf("/metrics lacks the CSI operation series:\n%s", b)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(strings.TrimSuffix(d.metrics, "/metrics") + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s = %d", path, resp.StatusCode)
		}
	}
	// No Kubernetes: the Node side is simply absent, nothing else changes.
	if _, err := d.ctl.ControllerGetVolume(context.Background(), &csi.ControllerGetVolumeRequest{VolumeId: "solo/default/pvc-1"}); err != nil {
		t.Fatal(err)
	}
}
