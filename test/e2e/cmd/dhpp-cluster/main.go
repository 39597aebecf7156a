// Command dhpp-cluster brings dhpp's local three-node Kubernetes cluster up
// and down. The logic lives in test/e2e/cluster; this file parses flags.
//
//	go run ./test/e2e/cmd/dhpp-cluster up [--install-dhpp]
//	go run ./test/e2e/cmd/dhpp-cluster status
//	go run ./test/e2e/cmd/dhpp-cluster down
//	go run ./test/e2e/cmd/dhpp-cluster tools    # only build the cached tools
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/dhpp-io/dhpp/test/e2e/cluster"
	"k8s.io/klog/v2"
)

func main() {
	klog.InitFlags(nil)
	install := flag.Bool("install-dhpp", false, "up: apply "+cluster.LocalOverlay+" and wait for its DaemonSets")
	skipPkgs := flag.Bool("skip-packages", false, "up: do not check/install the Debian packages")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: dhpp-cluster [flags] up|down|status|tools\n")
		flag.PrintDefaults()
	}
	// Flags may follow the verb: `up --install-dhpp`.
	args := os.Args[1:]
	var verb string
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		verb, args = args[0], args[1:]
	}
	if err := flag.CommandLine.Parse(args); err != nil {
		os.Exit(2)
	}
	if verb == "" && flag.NArg() == 1 {
		verb = flag.Arg(0)
	}
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		klog.ErrorS(err, "configuration")
		os.Exit(1)
	}
	cfg.InstallDHPP, cfg.SkipPackages = *install, *skipPkgs

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch verb {
	case "up":
		err = cluster.Up(ctx, cfg, os.Stdout)
		if errors.Is(err, cluster.ErrAlreadyRunning) {
			err = nil
		}
	case "down":
		err = cluster.Down(ctx, cfg, os.Stdout)
	case "status":
		err = cluster.Status(ctx, cfg, os.Stdout)
	case "tools":
		err = cluster.BuildTools(ctx, cfg)
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "dhpp-cluster %s: %v\n", verb, err)
		os.Exit(1)
	}
}
