// Command dhpp-controller is dhpp's cluster-side half: it releases the
// claims of volumes whose node or disk is lost, when their policy says so,
// so StatefulSet replicas come back on healthy nodes.
package main

import (
	"context"
	"os"

	"github.com/dhpp-io/dhpp/internal/cli"
	"github.com/dhpp-io/dhpp/pkg/controller"
)

func main() {
	cfg, err := controller.Parse(os.Args[1:], os.Stdout, os.Getenv)
	cli.Main("dhpp-controller", err, cfg.ShowVersion, func(ctx context.Context) error { return controller.Run(ctx, cfg) })
}
