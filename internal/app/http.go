package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/dhpp-io/dhpp/pkg/registration"
	"github.com/kubernetes-csi/csi-lib-utils/metrics"
	"k8s.io/klog/v2"
)

// httpServer serves the driver's HTTP endpoint:
//   - /metrics: csi-lib-utils' CSI operation series and dhpp's own;
//   - /healthz (liveness): the CSI server is serving. A fenced disk does
//     not make the driver unhealthy: restarting it would not repair the
//     disk;
//   - /readyz: additionally, the kubelet accepted the registration (when
//     the driver registers itself).
type httpServer struct {
	l   net.Listener
	srv *http.Server
}

// listenHTTP listens on addr. serving tells whether the CSI server serves;
// reg is nil when the driver does not register with the kubelet.
func listenHTTP(addr string, cmm metrics.CSIMetricsManager, serving func() bool, reg *registration.Server) (*httpServer, error) {
	mux := http.NewServeMux()
	metricsMux := http.NewServeMux()
	cmm.RegisterToServer(metricsMux, "/metrics")
	mux.Handle("/metrics", releaseMemoryAfter(metricsMux))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !serving() {
			http.Error(w, "CSI server stopped", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if reg != nil {
			if ok, err := reg.Status(); !ok {
				http.Error(w, fmt.Sprintf("not registered with the kubelet: %v", err), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &httpServer{l: l, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// Addr is the address it listens on (with the port chosen for ":0").
func (s *httpServer) Addr() string { return s.l.Addr().String() }

// Run serves until ctx is done.
func (s *httpServer) Run(ctx context.Context) error {
	go func() { <-ctx.Done(); _ = s.srv.Close() }()
	klog.InfoS("Serving HTTP", "address", s.Addr(), "paths", "/metrics /healthz /readyz")
	if err := s.srv.Serve(s.l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// releaseMemoryAfter returns a scrape's garbage to the OS once the response
// is written. A scrape of 1,000 volumes allocates megabytes (series, their
// protobuf form, text encoding, gzip) that the Go runtime would otherwise
// keep resident between scrapes: measured 9 MiB of the driver's RSS. The
// forced GC costs a few milliseconds of CPU per scrape, off the request path;
// scrapes arrive every 15-60 s.
func releaseMemoryAfter(h http.Handler) http.Handler {
	var running atomic.Bool
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if running.CompareAndSwap(false, true) {
			go func() {
				defer running.Store(false)
				debug.FreeOSMemory()
			}()
		}
	})
}
