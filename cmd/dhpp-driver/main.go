// Command dhpp-driver is the dhpp CSI driver: one process per node serving
// the CSI Identity, Controller and Node services over a unix socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/dhpp-io/dhpp/internal/app"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"k8s.io/klog/v2"
)

func main() {
	cfg, err := app.Parse(os.Args[1:], os.Stdout, os.Getenv)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintf(os.Stderr, "dhpp-driver: %v (see --help)\n", err)
		os.Exit(2)
	case cfg.ShowVersion:
		fmt.Println(dhpp.DriverName, dhpp.Version)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, cfg); err != nil {
		klog.ErrorS(err, "dhpp-driver failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
