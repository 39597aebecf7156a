// Command dhpp-controller is dhpp's cluster-side half: it releases the
// claims of volumes whose node or disk is lost, when their policy says so,
// so StatefulSet replicas come back on healthy nodes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/dhpp-io/dhpp/pkg/controller"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"k8s.io/klog/v2"
)

func main() {
	cfg, err := controller.Parse(os.Args[1:], os.Stdout, os.Getenv)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintf(os.Stderr, "dhpp-controller: %v (see --help)\n", err)
		os.Exit(2)
	case cfg.ShowVersion:
		fmt.Println("dhpp-controller", dhpp.DriverName, dhpp.Version)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := controller.Run(ctx, cfg); err != nil {
		klog.ErrorS(err, "dhpp-controller failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
