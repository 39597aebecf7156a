package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/driver"
	"github.com/dhpp-io/dhpp/pkg/kube"
	dhppmetrics "github.com/dhpp-io/dhpp/pkg/metrics"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/raid"
	"github.com/dhpp-io/dhpp/pkg/registration"
	"github.com/kubernetes-csi/csi-lib-utils/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// restoreTimeout bounds reading the Node's fencing labels at start-up. CSI
// is not served meanwhile (no provisioning into a pool that should be
// fenced), so it is short: if the API server stays unreachable that long the
// driver starts anyway, loudly, and a pool whose disk is still broken is
// fenced again by its probes within period x failureThreshold + timeout.
const restoreTimeout = 10 * time.Second

// hooks are test seams that no flag sets.
type hooks struct {
	// kubeClient replaces Connect (e.g. a fake clientset).
	kubeClient kube.API
	// httpListening is told the metrics endpoint's address once it listens.
	httpListening func(addr string)
}

// Run opens the pools, probes their disks, serves CSI, registers with the
// kubelet, mirrors fencing onto the Node, purges the trash and serves HTTP
// until ctx is done or a component fails.
func Run(ctx context.Context, c Config) error {
	return run(ctx, c, hooks{})
}

func run(ctx context.Context, c Config, hk hooks) error {
	if err := c.Validate(); err != nil {
		return err
	}
	klog.InfoS("Starting dhpp-driver", "version", dhpp.Version, "node", c.NodeID, "pools", len(c.Pools))
	// Claim the CSI socket before anything else: a second instance must
	// fail before it opens the pools (whose recovery would move the
	// running instance's half-made volumes to the trash).
	sock, err := driver.ParseEndpoint(c.Endpoint)
	if err != nil {
		return err
	}
	sockLock, err := driver.LockSocket(sock)
	if err != nil {
		return err
	}
	defer sockLock.Release()
	start := time.Now()
	mgr, err := node.New(node.Config{NodeID: c.NodeID, Pools: c.Pools, DefaultSize: c.DefaultVolumeSize})
	if err != nil {
		return err
	}
	defer mgr.Close()
	klog.InfoS("Pools opened", "duration", time.Since(start))
	// Reading thousands of volume records leaves megabytes of garbage; give
	// it back now rather than carrying it as resident memory for the
	// driver's whole life (measured: docs/benchmarks-health.md).
	debug.FreeOSMemory()

	mon, err := newMonitor(c.Health, mgr.Pools())
	if err != nil {
		return err
	}
	// dhpp's own series (pools, volumes, health) live in their own registry,
	// served on the same /metrics as csi-lib-utils' CSI operation metrics.
	promReg := prometheus.NewRegistry()
	if err := mon.Register(promReg); err != nil {
		return err
	}
	if err := promReg.Register(dhppmetrics.NewCollector(mgr)); err != nil {
		return fmt.Errorf("register pool metrics: %w", err)
	}
	// RAID degradation under the pools: reported, never fenced. Read once
	// before CSI is served, so the first health RPC already knows.
	arrays := raid.NewWatcher(raidPools(mgr.Pools()), c.Health.Period, raid.Finder{}.Arrays)
	arrays.Check()
	if err := promReg.Register(raid.NewCollector(arrays)); err != nil {
		return fmt.Errorf("register RAID metrics: %w", err)
	}
	cmm := metrics.NewCSIMetricsManagerForPlugin(dhpp.DriverName)
	cmm.WithAdditionalRegistry(promReg)
	drv, err := driver.New(driver.Config{Manager: mgr, Health: mon, Degradation: arrays, MaxVolumesPerNode: c.MaxVolumesPerNode, Metrics: cmm})
	if err != nil {
		return err
	}

	client := hk.kubeClient
	if client == nil {
		if client, err = kube.Connect(c.Kubeconfig); err != nil {
			return err
		}
	}
	var (
		fencer *kube.Fencer
		events *kube.NodeEvents
	)
	if client != nil {
		paths := map[string]string{}
		for _, p := range mgr.Pools() {
			paths[p.Name] = p.Path
		}
		events = kube.NewNodeEvents(client, c.NodeID, paths)
		fencer, err = kube.NewFencer(kube.Config{Client: client, NodeName: c.NodeID, Monitor: mon, PoolPaths: paths, Events: events})
		if err != nil {
			return err
		}
		// A degraded RAID array under a pool is a Node Event, not fencing.
		arrays.OnDegradation(events.PoolDegradationChanged)
	}
	// A pool whose directory is missing is fenced before CSI is served,
	// once the Fencer listens, so the Node says why.
	fenceMissingPools(mon, mgr.Pools())
	if fencer != nil {
		// Before the probes and CSI start: a restart must not reopen a pool
		// an operator has not unfenced.
		rctx, rcancel := context.WithTimeout(ctx, restoreTimeout)
		err := fencer.Restore(rctx)
		rcancel()
		if err != nil {
			klog.ErrorS(err, "Could not restore fenced pools from the Node; pools with a still-broken disk are fenced again by their probes")
		}
		reportQuarantined(events, mgr.Pools()...)
		mgr.OnPoolOpened(func(p *node.Pool) { reportQuarantined(events, p) })
	}
	l, err := sockLock.Listen()
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
		serving atomic.Bool
	)
	fail := func(name string, err error) {
		if err != nil && ctx.Err() == nil {
			errOnce.Do(func() { first = fmt.Errorf("%s: %w", name, err) })
			cancel()
		}
	}
	goRun := func(name string, f func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); fail(name, f()) }()
	}

	serving.Store(true)
	goRun("CSI server", func() error { return drv.Serve(ctx, l) })
	goRun("trash purger", func() error { mgr.RunTrashPurger(ctx, c.TrashRetention); return nil })
	goRun("health monitor", func() error { mon.Run(ctx); return nil })
	goRun("RAID watcher", func() error { return arrays.Run(ctx) })
	if fencer != nil {
		goRun("node fencing", func() error { return fencer.Run(ctx) })
		goRun("node events", func() error { return events.Run(ctx) })
	}

	var reg *registration.Server
	if c.KubeletRegistration {
		reg, err = registration.New(registration.Config{
			DriverName: dhpp.DriverName, Endpoint: c.KubeletRegistrationPath, RegistrationDir: c.PluginRegistrationDir,
		})
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		goRun("kubelet registration", func() error { return reg.Run(ctx) })
	}
	if c.MetricsAddress != "" {
		mux := http.NewServeMux()
		metricsMux := http.NewServeMux()
		cmm.RegisterToServer(metricsMux, "/metrics")
		mux.Handle("/metrics", releaseMemoryAfter(metricsMux))
		// Liveness: the process serves CSI. A fenced disk does not make the
		// driver unhealthy — restarting it would not repair the disk.
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if !serving.Load() {
				http.Error(w, "CSI server stopped", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		// Readiness additionally needs the kubelet to have accepted us.
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if reg != nil {
				if ok, err := reg.Status(); !ok {
					http.Error(w, fmt.Sprintf("not registered with the kubelet: %v", err), http.StatusServiceUnavailable)
					return
				}
			}
			fmt.Fprintln(w, "ok")
		})
		hl, err := net.Listen("tcp", c.MetricsAddress)
		if err != nil {
			fail("metrics endpoint", err)
		} else {
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			goRun("metrics endpoint", func() error {
				go func() { <-ctx.Done(); _ = srv.Close() }()
				if err := srv.Serve(hl); !errors.Is(err, http.ErrServerClosed) {
					return err
				}
				return nil
			})
			klog.InfoS("Serving HTTP", "address", hl.Addr().String(), "paths", "/metrics /healthz /readyz")
			if hk.httpListening != nil {
				hk.httpListening(hl.Addr().String())
			}
		}
	}
	<-ctx.Done()
	serving.Store(false)
	wg.Wait()
	if first != nil {
		return first
	}
	klog.InfoS("dhpp-driver stopped")
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
