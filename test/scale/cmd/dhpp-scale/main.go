// Command dhpp-scale measures dhpp's per-node cost at cluster scale on the
// local cluster: RSS and CPU of each node's dhpp-driver, csi-provisioner and
// csi-resizer, and the API requests and watch traffic they cause, with 0,
// 1,000 and 5,000 PVCs/PVs that are not dhpp's. It prints markdown tables.
//
//	go run ./test/scale/cmd/dhpp-scale --levels 0,1000,5000
//
// The logic lives in test/scale; this is flag parsing.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/dhpp-io/dhpp/test/scale"
)

func main() {
	klog.InitFlags(nil)
	var (
		levels   = flag.String("levels", "0,1000,5000", "comma-separated claim counts, ascending; about as many static PVs")
		pending  = flag.Int("pending-every", 10, "leave every n-th claim Pending (0: none)")
		settle   = flag.Duration("settle", 30*time.Second, "longest wait after the objects are bound, before sampling")
		quiet    = flag.Duration("quiet", 10*time.Second, "the wait ends once the PVC+PV watch streams had at most --quiet-events events in this long")
		quietN   = flag.Int64("quiet-events", 3, "see --quiet")
		window   = flag.Duration("window", 60*time.Second, "steady-state sampling time per level")
		parallel = flag.Int("parallel", 30, "create calls in flight")
		timeout  = flag.Duration("timeout", 5*time.Minute, "bound on binding and on cleanup")
		mdOut    = flag.String("markdown", "_output/scale/results.md", "markdown to write (empty: none; always printed)")
		jsonOut  = flag.String("json", "_output/scale/results.json", "raw results to write (empty: none)")
	)
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "dhpp-scale: must run as root (the cluster harness and /proc of the node processes need it)")
		os.Exit(2)
	}
	opt := scale.Options{PendingEvery: *pending, Settle: *settle, Quiet: *quiet, QuietEvents: *quietN, Window: *window, Parallel: *parallel, Timeout: *timeout, ProcRoot: "/proc"}
	prev := -1
	for _, s := range strings.Split(*levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 || n <= prev {
			fmt.Fprintf(os.Stderr, "dhpp-scale: bad --levels entry %q (ascending counts >= 0)\n", s)
			os.Exit(2)
		}
		opt.Levels, prev = append(opt.Levels, n), n
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	rep, err := scale.Run(ctx, opt, os.Stderr)
	if rep != nil {
		rep.Command, rep.Total = strings.Join(os.Args, " "), time.Since(start)
		var md strings.Builder
		scale.Markdown(&md, rep)
		fmt.Print(md.String())
		write(*mdOut, []byte(md.String()))
		if b, jerr := json.MarshalIndent(rep, "", "  "); jerr == nil {
			write(*jsonOut, b)
		}
	}
	if err != nil {
		klog.ErrorS(err, "scale benchmark failed")
		os.Exit(1)
	}
}

func write(path string, b []byte) {
	if path == "" {
		return
	}
	err := os.MkdirAll(filepath.Dir(path), 0o755)
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		klog.ErrorS(err, "write results", "path", path)
	}
}
