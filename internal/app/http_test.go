package app

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/kubernetes-csi/csi-lib-utils/metrics"
)

// TestHealthzFollowsServing: /healthz answers 200 only while the CSI server
// says it serves; /readyz without kubelet registration needs nothing more.
func TestHealthzFollowsServing(t *testing.T) {
	var serving atomic.Bool
	srv, err := listenHTTP("127.0.0.1:0", metrics.NewCSIMetricsManagerForPlugin(dhpp.DriverName), serving.Load, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	tests := []struct {
		serving bool
		path    string
		want    int
	}{
		{false, "/healthz", http.StatusServiceUnavailable},
		{true, "/healthz", http.StatusOK},
		{false, "/healthz", http.StatusServiceUnavailable},
		{false, "/readyz", http.StatusOK},
		{true, "/metrics", http.StatusOK},
	}
	for _, tt := range tests {
		serving.Store(tt.serving)
		resp, err := http.Get("http://" + srv.Addr() + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s while serving=%v: %d, want %d", tt.path, tt.serving, resp.StatusCode, tt.want)
		}
	}
}
