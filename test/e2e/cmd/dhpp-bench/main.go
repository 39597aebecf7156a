// Command dhpp-bench measures provisioning at scale on the local e2e cluster:
// for each provisioner (dhpp, then local-path-provisioner) and each N, N
// claims each consumed by one busybox pod, then deletion. It prints a
// markdown report and writes a PNG chart and the raw results.
//
//	go run ./test/e2e/cmd/dhpp-bench --n 10,100,300 --provisioners dhpp,local-path
//
// The program lives in test/e2e/bench; this is flag parsing and wiring.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/dhpp-io/dhpp/test/e2e/bench"
)

func main() {
	klog.InitFlags(nil)
	var (
		ns       = flag.String("n", "10,100,300", "comma-separated claim counts, one round each")
		provs    = flag.String("provisioners", "dhpp,local-path", "comma-separated provisioners, run one after the other: dhpp, local-path")
		size     = flag.String("size", "16Mi", "size of each claim")
		timeout  = flag.Duration("timeout", 10*time.Minute, "bound on each phase of each round (up, pod teardown, PV deletion)")
		parallel = flag.Int("parallel", 20, "create/delete calls in flight")
		settle   = flag.Duration("settle", 15*time.Second, "pause between rounds")
		chart    = flag.String("chart", "docs/benchmarks-cluster.png", "PNG chart to write (empty: none)")
		jsonOut  = flag.String("json", "_output/bench/results.json", "raw results to write (empty: none)")
		mdOut    = flag.String("markdown", "_output/bench/results.md", "markdown tables to write (empty: none; always printed)")
		keep     = flag.Bool("keep-local-path", false, "leave local-path-provisioner installed afterwards")
		prepare  = flag.Bool("prepare", false, "only build local-path-provisioner and its image (no cluster changes), then exit")
		force    = flag.Bool("ignore-running-e2e", false, "run even while an e2e test binary is using the shared cluster")
	)
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "dhpp-bench: must run as root (the cluster harness and /proc of the node processes need it)")
		os.Exit(2)
	}
	opt := bench.Options{Size: *size, Timeout: *timeout, Parallel: *parallel, Settle: *settle,
		ChartPath: *chart, JSONPath: *jsonOut, KeepLocalPath: *keep}
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "dhpp-bench: bad --n entry %q\n", s)
			os.Exit(2)
		}
		opt.Ns = append(opt.Ns, n)
	}
	for _, p := range strings.Split(*provs, ",") {
		opt.Provisioners = append(opt.Provisioners, strings.TrimSpace(p))
	}
	if *prepare {
		img, err := bench.Prepare(context.Background())
		if err != nil {
			klog.ErrorS(err, "prepare failed")
			os.Exit(1)
		}
		fmt.Println(img)
		return
	}
	if pids := bench.RunningE2E("/proc"); len(pids) > 0 && !*force {
		fmt.Fprintf(os.Stderr, "dhpp-bench: e2e tests are running on the shared cluster (pids %v); try later or pass --ignore-running-e2e\n", pids)
		os.Exit(3)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, opt, os.Stderr)
	if rep != nil {
		rep.Command = strings.Join(os.Args, " ")
		var md strings.Builder
		bench.Markdown(&md, rep)
		fmt.Print(md.String())
		if *mdOut != "" {
			if werr := bench.WriteFile(*mdOut, []byte(md.String())); werr != nil {
				klog.ErrorS(werr, "write markdown")
			}
		}
		if *jsonOut != "" {
			if werr := bench.WriteJSON(*jsonOut, rep); werr != nil {
				klog.ErrorS(werr, "write results")
			}
		}
		if *chart != "" && len(rep.Results) > 0 {
			if werr := bench.WriteChart(*chart, rep.Results); werr != nil {
				klog.ErrorS(werr, "write chart")
			} else {
				fmt.Fprintf(os.Stderr, "chart: %s\n", *chart)
			}
		}
		fmt.Fprintf(os.Stderr, "machine: %s; took %s\n", rep.Machine, rep.Duration.Round(time.Second))
	}
	if err != nil {
		klog.ErrorS(err, "benchmark failed")
		os.Exit(1)
	}
}
