// Command dhpp-cluster brings dhpp's local Kubernetes cluster (four nodes,
// or $DHPP_E2E_NODES; Kubernetes $DHPP_K8S_VERSION, default the newest
// supported) up and down. The logic lives in test/e2e/cluster; this file
// parses flags.
//
//	go run ./test/e2e/cmd/dhpp-cluster up [--install-dhpp] [--audit]
//	go run ./test/e2e/cmd/dhpp-cluster status
//	go run ./test/e2e/cmd/dhpp-cluster down
//	go run ./test/e2e/cmd/dhpp-cluster tools    # only build the cached tools
//	go run ./test/e2e/cmd/dhpp-cluster e2e-tools # only build the upstream e2e suite (test/e2e/conformance)
//	go run ./test/e2e/cmd/dhpp-cluster prebuild [VERSION...] # what conformance on VERSIONs (default: all) needs beyond `tools`
//	go run ./test/e2e/cmd/dhpp-cluster versions # the supported Kubernetes versions
//	go run ./test/e2e/cmd/dhpp-cluster version  # the one the cluster runs ($DHPP_K8S_VERSION or the default)
//	go run ./test/e2e/cmd/dhpp-cluster lose NODE     # kill its kubelet, containerd and pods (disk kept)
//	go run ./test/e2e/cmd/dhpp-cluster restore NODE  # start them again on the same disk
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/dhpp-io/dhpp/test/e2e/cluster"
	"k8s.io/klog/v2"
)

func main() {
	klog.InitFlags(nil)
	install := flag.Bool("install-dhpp", false, "up: apply "+cluster.LocalOverlay+" and wait for its DaemonSets")
	skipPkgs := flag.Bool("skip-packages", false, "up: do not check/install the Debian packages")
	audit := flag.Bool("audit", false, "up: write the apiserver audit log (Metadata level) to _output/cluster/logs/audit.log (also $DHPP_E2E_AUDIT=1)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: dhpp-cluster [flags] up|down|status|tools|e2e-tools|prebuild [VERSION...]|versions|version|lose NODE|restore NODE\n")
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
	if verb == "" && flag.NArg() >= 1 {
		verb = flag.Arg(0)
	}
	node := flag.Arg(flag.NArg() - 1)
	if verb == "versions" {
		fmt.Println(strings.Join(cluster.KubernetesVersions, " "))
		return
	}
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		klog.ErrorS(err, "configuration")
		os.Exit(1)
	}
	cfg.InstallDHPP, cfg.SkipPackages = *install, *skipPkgs
	cfg.Audit = cfg.Audit || *audit
	if verb == "version" {
		fmt.Println(cfg.KubernetesVersion)
		return
	}

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
	case "e2e-tools":
		err = cluster.BuildE2ETool(ctx, cfg)
	case "prebuild":
		// make test runs this in the background during the scenario e2e.
		versions := flag.Args()
		if len(versions) > 0 && versions[0] == verb {
			versions = versions[1:]
		}
		if len(versions) == 0 {
			versions = cluster.KubernetesVersions
		}
		err = cluster.Prebuild(ctx, cfg, versions, os.Stdout)
	case "lose", "restore":
		if flag.NArg() == 0 || node == verb {
			flag.Usage()
			os.Exit(2)
		}
		if verb == "lose" {
			err = cluster.LoseNode(ctx, cfg, node, os.Stdout)
		} else {
			err = cluster.RestoreNode(ctx, cfg, node, os.Stdout)
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "dhpp-cluster %s: %v\n", verb, err)
		os.Exit(1)
	}
}
