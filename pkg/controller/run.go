package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/dhpp-io/dhpp/internal/cli"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// LeaseName is the Lease the replicas compete for.
const LeaseName = "dhpp-controller"

// Config is everything dhpp-controller runs with.
type Config struct {
	Options
	Kubeconfig     string
	MetricsAddress string
	Workers        int
	KubeAPIQPS     float64
	KubeAPIBurst   int

	// Leader election, with the flag names of the kubernetes-csi sidecars.
	LeaderElection          bool
	LeaderElectionNamespace string
	LeaseDuration           time.Duration
	RenewDeadline           time.Duration
	RetryPeriod             time.Duration

	ShowVersion bool
}

// Parse parses dhpp-controller's command line. Errors are one line, for
// stderr before exiting with status 2; --help output goes to out.
func Parse(args []string, out io.Writer, getenv func(string) string) (Config, error) {
	c := Config{Options: DefaultOptions()}
	fs := flag.NewFlagSet("dhpp-controller", flag.ContinueOnError)
	fs.DurationVar(&c.Grace, "grace-period", c.Grace, "how long a node must be gone (Node deleted, or tainted "+TaintOutOfService+") before the claims of its dhpp volumes are released under policy recreate")
	fs.DurationVar(&c.FenceLimit, "fenced-pool-limit", c.FenceLimit, "how long a pool must be fenced before the claims of its volumes are released under policy recreate (0 = never)")
	fs.BoolVar(&c.DryRun, "dry-run", false, "log what would be done; write nothing (no deletions, evictions, annotations or Events)")
	fs.DurationVar(&c.Retry, "retry-period", c.Retry, "wait before re-checking a release that waits on others (an eviction a PodDisruptionBudget refused, a claim still in use)")
	fs.DurationVar(&c.Resync, "resync-period", c.Resync, "how often every volume is looked at again, events or not")
	fs.IntVar(&c.Workers, "workers", 4, "volumes handled in parallel")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&c.MetricsAddress, "metrics-address", ":9808", "address of the HTTP endpoint with /metrics and /healthz (empty = off)")
	fs.Float64Var(&c.KubeAPIQPS, "kube-api-qps", 20, "API requests per second")
	fs.IntVar(&c.KubeAPIBurst, "kube-api-burst", 40, "API request burst")
	fs.BoolVar(&c.LeaderElection, "leader-election", false, "run several replicas of which only the holder of the Lease "+LeaseName+" acts")
	fs.StringVar(&c.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the Lease (default: this pod's namespace)")
	fs.DurationVar(&c.LeaseDuration, "leader-election-lease-duration", 15*time.Second, "how long a non-leader waits after the last renewal before taking over")
	fs.DurationVar(&c.RenewDeadline, "leader-election-renew-deadline", 10*time.Second, "how long the leader retries renewing before it gives up leading (and exits)")
	fs.DurationVar(&c.RetryPeriod, "leader-election-retry-period", 5*time.Second, "time between attempts to acquire or renew the Lease")
	fs.BoolVar(&c.ShowVersion, "version", false, "print the version and exit")
	if err := cli.Parse(fs, args, out, "dhpp-controller [flags]"); err != nil {
		return c, err
	}
	if c.ShowVersion {
		return c, nil
	}
	if c.LeaderElectionNamespace == "" {
		c.LeaderElectionNamespace = getenv("POD_NAMESPACE")
	}
	return c, c.Validate()
}

// Validate checks what flags alone cannot.
func (c Config) Validate() error {
	if err := c.Options.Validate(); err != nil {
		return err
	}
	if c.Workers < 1 {
		return fmt.Errorf("--workers must be at least 1 (got %d)", c.Workers)
	}
	if c.LeaderElection {
		if c.LeaderElectionNamespace == "" {
			return errors.New("--leader-election needs --leader-election-namespace or $POD_NAMESPACE")
		}
		if !(c.LeaseDuration > c.RenewDeadline && c.RenewDeadline > c.RetryPeriod && c.RetryPeriod > 0) {
			return fmt.Errorf("leader election needs lease duration (%s) > renew deadline (%s) > retry period (%s) > 0", c.LeaseDuration, c.RenewDeadline, c.RetryPeriod)
		}
	}
	return nil
}

// Run connects to the API server, serves /metrics and /healthz, and runs
// the controller: right away, or whenever this replica leads. It returns
// when ctx is done, or with an error when leadership is lost (the process
// then exits and restarts clean, as the kubernetes-csi sidecars do).
func Run(ctx context.Context, c Config) error {
	restCfg, err := restConfig(c.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "dhpp-controller/" + dhpp.Version
	restCfg.QPS, restCfg.Burst = float32(c.KubeAPIQPS), c.KubeAPIBurst
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := NewMetrics(reg)
	snaps, err := snapclient.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("snapshot client: %w", err)
	}
	ctrl, err := New(client, snaps, c.Options, metrics)
	if err != nil {
		return err
	}
	// The watchdog makes /healthz fail when this replica leads but has not
	// renewed its Lease in time, so the kubelet restarts a stuck leader.
	watchdog := leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	if c.MetricsAddress != "" {
		srv, err := serveHTTP(c.MetricsAddress, reg, watchdog)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	run := func(ctx context.Context) {
		metrics.SetLeader(true)
		defer metrics.SetLeader(false)
		if err := ctrl.Run(ctx, c.Workers); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Controller stopped")
		}
	}
	if !c.LeaderElection {
		run(ctx)
		return nil
	}
	return lead(ctx, client, c, watchdog, run)
}

// lead runs run while this replica holds the Lease.
func lead(ctx context.Context, client kubernetes.Interface, c Config, watchdog *leaderelection.HealthzAdaptor, run func(context.Context)) error {
	host, _ := os.Hostname()
	id := host + "_" + rand.Text()[:8] // unique even if two replicas share a hostname
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: LeaseName, Namespace: c.LeaderElectionNamespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:          lock,
		LeaseDuration: c.LeaseDuration,
		RenewDeadline: c.RenewDeadline,
		RetryPeriod:   c.RetryPeriod,
		// A replica shutting down hands over at once instead of making
		// the other wait a lease duration.
		ReleaseOnCancel: true,
		WatchDog:        watchdog,
		Name:            LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				klog.InfoS("Became leader", "lease", c.LeaderElectionNamespace+"/"+LeaseName, "identity", id)
				run(ctx)
			},
			OnStoppedLeading: func() { klog.InfoS("Stopped leading", "identity", id) },
			OnNewLeader: func(leader string) {
				if leader != id {
					klog.InfoS("Standing by; another replica leads", "leader", leader)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	watchdog.SetLeaderElection(le)
	klog.InfoS("Waiting for the leader Lease", "lease", c.LeaderElectionNamespace+"/"+LeaseName, "identity", id)
	le.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("lost the leader Lease; exiting so that a clean process competes again")
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load --kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster Kubernetes config (or pass --kubeconfig): %w", err)
	}
	return cfg, nil
}

// serveHTTP serves /metrics and /healthz on addr.
func serveHTTP(addr string, reg *prometheus.Registry, watchdog *leaderelection.HealthzAdaptor) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := watchdog.Check(r); err != nil {
			http.Error(w, "leader election: "+err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-address %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "HTTP endpoint failed", "address", addr)
		}
	}()
	klog.InfoS("Serving /metrics and /healthz", "address", strings.TrimSpace(addr))
	return srv, nil
}
