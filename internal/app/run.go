package app

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/driver"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/kube"
	dhppmetrics "github.com/dhpp-io/dhpp/pkg/metrics"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/raid"
	"github.com/dhpp-io/dhpp/pkg/registration"
	"github.com/kubernetes-csi/csi-lib-utils/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"
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
	// dynamicClient, with kubeClient, publishes the DhppPool objects to a
	// fake; without it a kubeClient hook runs no publisher.
	dynamicClient dynamic.Interface
	// poolStatusPeriod replaces poolstatus.DefaultPeriod.
	poolStatusPeriod time.Duration
	// httpListening is told the metrics endpoint's address once it listens.
	httpListening func(addr string)
}

// Run opens the pools, probes their disks, serves CSI, registers with the
// kubelet, mirrors fencing onto the Node, purges the trash and serves HTTP
// until ctx is done or a component fails.
func Run(ctx context.Context, c Config) error {
	return run(ctx, c, hooks{})
}

// run sets everything up in the order the driver's promises need (the
// socket claimed before the pools open, fencing restored before CSI is
// served), then runs the long-running parts together (runAll).
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
	mgr, err := openPools(c)
	if err != nil {
		return err
	}
	defer mgr.Close()

	mon, err := newMonitor(c.Health, mgr.Pools())
	if err != nil {
		return err
	}
	// RAID degradation under the pools: reported, never fenced. Read once
	// before CSI is served, so the first health RPC already knows.
	arrays := raid.NewWatcher(raidPools(mgr.Pools()), c.Health.Period, raid.Finder{}.Arrays)
	arrays.Check()
	cmm, err := newMetrics(mgr, mon, arrays)
	if err != nil {
		return err
	}
	drv, err := driver.New(driver.Config{Manager: mgr, Health: mon, Degradation: arrays, MaxVolumesPerNode: c.MaxVolumesPerNode, Metrics: cmm})
	if err != nil {
		return err
	}
	parts := []runnable{
		{"trash purger", func(ctx context.Context) error { mgr.RunTrashPurger(ctx, c.TrashRetention); return nil }},
		{"health monitor", mon.Run},
		{"RAID watcher", arrays.Run},
	}

	side, err := connectNode(c, hk, mgr, mon, arrays)
	if err != nil {
		return err
	}
	fencer, events := side.fencer, side.events
	// A pool whose directory is missing is fenced before CSI is served,
	// once the Fencer listens, so the Node says why.
	fenceMissingPools(mon, mgr.Pools())
	if fencer != nil {
		restoreFencing(ctx, fencer, events, mgr)
		parts = append(parts, runnable{"node fencing", fencer.Run}, runnable{"node events", events.Run})
		if chk := newOrphanChecker(c, side.client, events, mgr); chk != nil {
			cmm.WithAdditionalRegistry(chk.registry)
			parts = append(parts, runnable{"orphan check", chk.Run})
		}
	}
	if side.dynamic != nil {
		pub, err := newPublisher(c, side, hk.poolStatusPeriod, mgr, mon, arrays)
		if err != nil {
			return err
		}
		parts = append(parts, runnable{"pool status", pub.Run})
	}

	l, err := sockLock.Listen()
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	parts = append(parts, runnable{"CSI server", func(ctx context.Context) error { return drv.Serve(ctx, l) }})
	outside, err := outsideParts(c, hk, cmm, drv)
	if err != nil {
		l.Close()
		return err
	}
	parts = append(parts, outside...)
	if err := runAll(ctx, parts); err != nil {
		return err
	}
	klog.InfoS("dhpp-driver stopped")
	return nil
}

// outsideParts are the parts that face the kubelet and the cluster's
// probes and scrapers: the kubelet registration and the HTTP server, each
// if configured. The HTTP server listens at once (its address goes to
// hk.httpListening), after the CSI socket, so whoever sees it sees CSI.
func outsideParts(c Config, hk hooks, cmm metrics.CSIMetricsManager, drv *driver.Driver) ([]runnable, error) {
	var (
		parts []runnable
		reg   *registration.Server
		err   error
	)
	if c.KubeletRegistration {
		reg, err = registration.New(registration.Config{
			DriverName: dhpp.DriverName, Endpoint: c.KubeletRegistrationPath, RegistrationDir: c.PluginRegistrationDir,
		})
		if err != nil {
			return nil, err
		}
		parts = append(parts, runnable{"kubelet registration", reg.Run})
	}
	if c.MetricsAddress != "" {
		srv, err := listenHTTP(c.MetricsAddress, cmm, drv.Serving, reg)
		if err != nil {
			return nil, fmt.Errorf("metrics endpoint: %w", err)
		}
		parts = append(parts, runnable{"metrics endpoint", srv.Run})
		if hk.httpListening != nil {
			hk.httpListening(srv.Addr())
		}
	}
	return parts, nil
}

// openPools opens the pools and recovers their volumes.
func openPools(c Config) (*node.Manager, error) {
	start := time.Now()
	mgr, err := node.New(node.Config{NodeID: c.NodeID, Pools: c.Pools, DefaultSize: c.DefaultVolumeSize})
	if err != nil {
		return nil, err
	}
	klog.InfoS("Pools opened", "duration", time.Since(start))
	// Reading thousands of volume records leaves megabytes of garbage; give
	// it back now rather than carrying it as resident memory for the
	// driver's whole life (the driver's RSS: docs/benchmarks.md).
	debug.FreeOSMemory()
	return mgr, nil
}

// newMetrics returns the CSI metrics manager whose /metrics also serves
// dhpp's own series (pools, volumes, health, RAID). Those live in their own
// registry, added to csi-lib-utils' for the one endpoint.
func newMetrics(mgr *node.Manager, mon *health.Monitor, arrays *raid.Watcher) (metrics.CSIMetricsManager, error) {
	promReg := prometheus.NewRegistry()
	if err := mon.Register(promReg); err != nil {
		return nil, err
	}
	if err := promReg.Register(dhppmetrics.NewCollector(mgr)); err != nil {
		return nil, fmt.Errorf("register pool metrics: %w", err)
	}
	if err := promReg.Register(raid.NewCollector(arrays)); err != nil {
		return nil, fmt.Errorf("register RAID metrics: %w", err)
	}
	cmm := metrics.NewCSIMetricsManagerForPlugin(dhpp.DriverName)
	cmm.WithAdditionalRegistry(promReg)
	return cmm, nil
}

// connectNode makes the Node side: the Fencer (label, condition, unfence
// annotation) and the Node Events, which also carry RAID degradation, and
// the dynamic client the DhppPool publisher uses. All are nil outside a
// cluster.
func connectNode(c Config, hk hooks, mgr *node.Manager, mon *health.Monitor, arrays *raid.Watcher) (nodeSide, error) {
	client, dyn := hk.kubeClient, hk.dynamicClient
	if client == nil {
		cfg, err := kube.RESTConfig(c.Kubeconfig)
		if err != nil || cfg == nil {
			return nodeSide{}, err
		}
		if client, err = kube.NewAPI(cfg); err != nil {
			return nodeSide{}, err
		}
		if dyn, err = dynamic.NewForConfig(cfg); err != nil {
			return nodeSide{}, fmt.Errorf("dynamic client for %s: %w", cfg.Host, err)
		}
	}
	paths := map[string]string{}
	for _, p := range mgr.Pools() {
		paths[p.Name] = p.Path
	}
	events := kube.NewNodeEvents(client, c.NodeID, paths)
	fencer, err := kube.NewFencer(kube.Config{Client: client, NodeName: c.NodeID, Monitor: mon, PoolPaths: paths, Events: events})
	if err != nil {
		return nodeSide{}, err
	}
	// A degraded RAID array under a pool is a Node Event, not fencing.
	arrays.OnDegradation(events.PoolDegradationChanged)
	return nodeSide{client: client, dynamic: dyn, fencer: fencer, events: events}, nil
}

// restoreFencing re-applies the fencing the Node's labels record, before
// the probes and CSI start: a restart must not reopen a pool an operator
// has not unfenced. It also reports the quarantined volumes, now and as
// missing pools open.
func restoreFencing(ctx context.Context, fencer *kube.Fencer, events *kube.NodeEvents, mgr *node.Manager) {
	rctx, rcancel := context.WithTimeout(ctx, restoreTimeout)
	err := fencer.Restore(rctx)
	rcancel()
	if err != nil {
		klog.ErrorS(err, "Could not restore fenced pools from the Node; pools with a still-broken disk are fenced again by their probes")
	}
	reportQuarantined(events, mgr.Pools()...)
	mgr.OnPoolOpened(func(p *node.Pool) { reportQuarantined(events, p) })
}
