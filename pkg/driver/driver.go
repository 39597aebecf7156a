// Package driver implements the CSI Identity, Controller and Node services of
// dhpp. It is a translation layer: it validates requests, turns them into
// pkg/node calls and maps the results and errors back to CSI. No disk
// knowledge lives here.
//
// dhpp runs the controller side on every node (csi-provisioner in
// --node-deployment mode), so the Controller service only ever creates
// volumes on its own node; topology pins each volume there.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/kubernetes-csi/csi-lib-utils/connection"
	"github.com/kubernetes-csi/csi-lib-utils/metrics"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// PoolHealth tells whether a pool is fenced (its disk failed its health
// probe); *health.Monitor implements it.
type PoolHealth interface {
	PoolFenced(pool string) (fenced bool, reason string)
}

// PoolDegradation tells whether a pool's storage runs with reduced
// redundancy (a degraded RAID array) while still serving I/O; *raid.Watcher
// implements it. A degraded pool is reported, never refused.
type PoolDegradation interface {
	PoolDegraded(pool string) (degraded bool, reason string)
}

// Config configures a Driver.
type Config struct {
	// Manager owns the node's pools and volumes.
	Manager *node.Manager
	// Health reports fenced pools; nil means none is.
	Health PoolHealth
	// Degradation reports pools on degraded RAID arrays; nil means none is.
	Degradation PoolDegradation
	// MaxVolumesPerNode is reported by NodeGetInfo; 0 means no limit.
	MaxVolumesPerNode int64
	// Metrics records CSI operation counts and latencies; may be nil.
	Metrics metrics.CSIMetricsManager
}

// Driver serves the three CSI services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	nodes       *node.Manager
	nodeID      string
	health      PoolHealth
	degradation PoolDegradation
	maxVolumes  int64
	metrics     metrics.CSIMetricsManager
	server      *grpc.Server
	// serving is true while the gRPC server accepts connections on its
	// listener (Serving).
	serving atomic.Bool
}

// New makes a Driver.
func New(cfg Config) (*Driver, error) {
	if cfg.Manager == nil {
		return nil, errors.New("driver: no node manager")
	}
	if cfg.MaxVolumesPerNode < 0 {
		return nil, fmt.Errorf("driver: max volumes per node is negative (%d)", cfg.MaxVolumesPerNode)
	}
	return &Driver{
		nodes: cfg.Manager, nodeID: cfg.Manager.NodeID(), health: cfg.Health, degradation: cfg.Degradation,
		maxVolumes: cfg.MaxVolumesPerNode, metrics: cfg.Metrics,
	}, nil
}

// topology is the single segment of every volume and of this node.
func (d *Driver) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{dhpp.TopologyKey: d.nodeID}}
}

func (d *Driver) fenced(pool string) (bool, string) {
	if d.health == nil {
		return false, ""
	}
	return d.health.PoolFenced(pool)
}

func (d *Driver) degraded(pool string) (bool, string) {
	if d.degradation == nil {
		return false, ""
	}
	return d.degradation.PoolDegraded(pool)
}

// ParseEndpoint accepts "unix:///path", "unix:/path" or a plain absolute path.
func ParseEndpoint(ep string) (string, error) {
	if strings.HasPrefix(ep, "/") {
		return filepath.Clean(ep), nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %w", ep, err)
	}
	if u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: only unix sockets are supported (unix:///path)", ep)
	}
	p := u.Path
	if p == "" {
		p = u.Opaque
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: socket path must be absolute", ep)
	}
	return filepath.Clean(p), nil
}

// Serve serves CSI on l until ctx is done, then stops gracefully.
func (d *Driver) Serve(ctx context.Context, l net.Listener) error {
	interceptors := []grpc.UnaryServerInterceptor{logCalls}
	if d.metrics != nil {
		interceptors = append(interceptors, connection.ExtendedCSIMetricsManager{CSIMetricsManager: d.metrics}.RecordMetricsServerInterceptor)
	}
	d.server = grpc.NewServer(grpc.ChainUnaryInterceptor(interceptors...))
	csi.RegisterIdentityServer(d.server, d)
	csi.RegisterControllerServer(d.server, d)
	csi.RegisterNodeServer(d.server, d)
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			graceful := make(chan struct{})
			go func() { d.server.GracefulStop(); close(graceful) }()
			select {
			case <-graceful:
			case <-time.After(10 * time.Second):
				d.server.Stop()
			}
		case <-stopped:
		}
	}()
	klog.InfoS("Serving CSI", "address", l.Addr().String(), "driver", dhpp.DriverName, "node", d.nodeID)
	err := d.server.Serve(servingListener{l, &d.serving})
	d.serving.Store(false)
	close(stopped)
	return err
}

// Serving reports whether the CSI server is serving: its accept loop has
// started on the listener and Serve has not returned. It is the driver's
// liveness.
func (d *Driver) Serving() bool { return d.serving.Load() }

// servingListener marks the server as serving once its accept loop asks
// for the first connection: from then on a client is answered.
type servingListener struct {
	net.Listener
	serving *atomic.Bool
}

func (l servingListener) Accept() (net.Conn, error) {
	l.serving.Store(true)
	return l.Listener.Accept()
}

// logCalls logs every call with secrets stripped (protosanitizer), and every
// failure with its status, so `kubectl logs` shows what the sidecars asked.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	klog.V(4).InfoS("CSI call", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	resp, err := handler(ctx, req)
	if err != nil {
		klog.ErrorS(err, "CSI call failed", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req), "duration", time.Since(start))
	} else {
		klog.V(4).InfoS("CSI call done", "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp), "duration", time.Since(start))
	}
	return resp, err
}
