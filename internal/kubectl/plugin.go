// Package kubectl is `kubectl dhpp`, the kubectl plugin for dhpp: pools,
// volumes, the trash and restoring from it, fencing for maintenance and an
// installation doctor, all through the API server (DhppPool objects, PVs,
// claims, the DaemonSet), so no operator needs SSH for the everyday
// questions.
//
// It follows kubectl's conventions: --kubeconfig, --context, -n/-A,
// -o wide|json|yaml, tables with upper-case headers, exit code 0 on
// success and 1 on any error (or, for doctor, any failed check).
package kubectl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Env is what a command runs against; Main builds it from the flags, tests
// from fake clients.
type Env struct {
	Kube kubernetes.Interface
	Dyn  dynamic.Interface
	// Namespace is -n or the context's namespace; AllNamespaces is -A.
	Namespace     string
	AllNamespaces bool
	// Usage returns the used bytes of the claims mounted on a node, by
	// "namespace/claim" (the kubelet's stats summary; kubeletUsage).
	Usage func(ctx context.Context, node string) (map[string]int64, error)
	Now   func() time.Time
	Out   io.Writer
}

// Options are the flags of every command.
type Options struct {
	Output  string
	Node    string
	SortBy  string
	Reason  string
	Timeout time.Duration
	// To and StorageClass are restore's target claim and its class.
	To           string
	StorageClass string
}

const usage = `kubectl dhpp: the dhpp CSI driver's view of the cluster.

Commands:
  pools                  every node's pools: space, volumes, health, trash
  volumes                claims and their volumes: node, pool, backend, size, used, health
  trash [NODE]           deleted volumes still recoverable, with their claim and purge time
  restore ENTRY --to NAMESPACE/CLAIM   bring a trashed volume back as a PV bound to that claim
  doctor                 check the installation; prints what is wrong and how to fix it
  fence NODE POOL --reason TEXT   stop new volumes on a pool (planned maintenance)
  unfence NODE POOL      let a fenced pool take new volumes again

Flags:
`

// Main runs the plugin with args (without the program name) and returns
// the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("kubectl-dhpp", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		kubeconfig, kctx string
		env              = Env{Out: stdout, Now: time.Now}
		opts             Options
	)
	fs.StringVar(&kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&kctx, "context", "", "the kubeconfig context to use")
	fs.StringVarP(&env.Namespace, "namespace", "n", "", "namespace of the claims (volumes); default: the context's")
	fs.BoolVarP(&env.AllNamespaces, "all-namespaces", "A", false, "claims of every namespace (volumes)")
	fs.StringVarP(&opts.Output, "output", "o", "", "output format: wide, json or yaml")
	fs.StringVar(&opts.Node, "node", "", "only this node (pools, volumes)")
	fs.StringVar(&opts.SortBy, "sort-by", "", "volumes: sort by namespace (default), node, size or used")
	fs.StringVar(&opts.Reason, "reason", "", "fence: why the pool is fenced (required)")
	fs.DurationVar(&opts.Timeout, "timeout", time.Minute, "fence, unfence, restore: how long to wait for the node's driver (and, restore, the binding) to act (0: do not wait)")
	fs.StringVar(&opts.To, "to", "", "restore: the claim to restore into, NAMESPACE/CLAIM (created if missing)")
	fs.StringVar(&opts.StorageClass, "storage-class", "", "restore: the restored claim's StorageClass (default: the claim's, or dhpp's class for the pool)")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "error: %v\nSee 'kubectl dhpp --help'.\n", err)
		return 1
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 1
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kctx})
	err := func() error {
		cfg, err := cc.ClientConfig()
		if err != nil {
			return fmt.Errorf("kubeconfig: %w", err)
		}
		cfg.UserAgent = "kubectl-dhpp"
		if env.Namespace == "" {
			if env.Namespace, _, err = cc.Namespace(); err != nil {
				return fmt.Errorf("kubeconfig namespace: %w", err)
			}
		}
		if env.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return err
		}
		if env.Dyn, err = dynamic.NewForConfig(cfg); err != nil {
			return err
		}
		env.Usage = kubeletUsage(env.Kube)
		return Run(context.Background(), env, fs.Args(), opts)
	}()
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// errChecksFailed is doctor's result when a check failed; its report is
// already printed.
var errChecksFailed = errors.New("some checks failed (see above)")

// Run runs one command.
func Run(ctx context.Context, env Env, args []string, o Options) error {
	switch o.Output {
	case "", "wide", "json", "yaml":
	default:
		return fmt.Errorf("unknown output format %q: use wide, json or yaml", o.Output)
	}
	cmd, rest := args[0], args[1:]
	want := func(n int, form string) error {
		if len(rest) != n {
			return fmt.Errorf("usage: kubectl dhpp %s", form)
		}
		return nil
	}
	switch cmd {
	case "pools":
		if err := want(0, "pools [--node NODE] [-o wide|json|yaml]"); err != nil {
			return err
		}
		return pools(ctx, env, o)
	case "volumes":
		if err := want(0, "volumes [-n NS | -A] [--node NODE] [--sort-by namespace|node|size|used] [-o wide|json|yaml]"); err != nil {
			return err
		}
		return volumes(ctx, env, o)
	case "trash":
		if len(rest) > 1 {
			return errors.New("usage: kubectl dhpp trash [NODE] [-o wide|json|yaml]")
		}
		if len(rest) == 1 {
			o.Node = rest[0]
		}
		return trash(ctx, env, o)
	case "restore":
		if err := want(1, "restore ENTRY --to NAMESPACE/CLAIM [--node NODE] [--storage-class CLASS] [--timeout 1m]"); err != nil {
			return err
		}
		return restore(ctx, env, rest[0], o.To, o)
	case "doctor":
		if err := want(0, "doctor [-o json|yaml]"); err != nil {
			return err
		}
		return doctor(ctx, env, o)
	case "fence":
		if err := want(2, "fence NODE POOL --reason TEXT"); err != nil {
			return err
		}
		return fence(ctx, env, rest[0], rest[1], o)
	case "unfence":
		if err := want(2, "unfence NODE POOL"); err != nil {
			return err
		}
		return unfence(ctx, env, rest[0], rest[1], o)
	}
	return fmt.Errorf("unknown command %q (commands: %s)", cmd, strings.Join([]string{"pools", "volumes", "trash", "restore", "doctor", "fence", "unfence"}, ", "))
}
