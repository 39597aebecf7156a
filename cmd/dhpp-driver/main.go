// Command dhpp-driver is the dhpp CSI driver: one process per node serving
// the CSI Identity, Controller and Node services over a unix socket.
package main

import (
	"context"
	"os"

	"github.com/dhpp-io/dhpp/internal/app"
	"github.com/dhpp-io/dhpp/internal/cli"
)

func main() {
	cfg, err := app.Parse(os.Args[1:], os.Stdout, os.Getenv)
	cli.Main("dhpp-driver", err, cfg.ShowVersion, func(ctx context.Context) error { return app.Run(ctx, cfg) })
}
