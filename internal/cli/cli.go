// Package cli is what dhpp's commands share: the command-line conventions
// of the kubernetes-csi components. klog's flags sit beside the command's
// own, --help goes to stdout, a bad flag is one line on stderr and exit
// status 2, a failure exit status 1, and SIGINT/SIGTERM stop gracefully.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"k8s.io/klog/v2"
)

// Parse adds klog's flags to fs and parses args. --help prints usage and
// the flags to out and returns flag.ErrHelp; a positional argument is an
// error, since every option of a dhpp command is a --flag.
func Parse(fs *flag.FlagSet, args []string, out io.Writer, usage string) error {
	fs.SetOutput(io.Discard)
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	klogFlags.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			fmt.Fprintln(out, "Usage:", usage)
			fs.PrintDefaults()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (all options are --flags)", fs.Arg(0))
	}
	return nil
}

// Main finishes a command's main: parseErr and showVersion are what its
// Parse returned; run is the program, stopped by SIGINT or SIGTERM.
func Main(name string, parseErr error, showVersion bool, run func(context.Context) error) {
	switch {
	case errors.Is(parseErr, flag.ErrHelp):
		os.Exit(0)
	case parseErr != nil:
		fmt.Fprintf(os.Stderr, "%s: %v (see --help)\n", name, parseErr)
		os.Exit(2)
	case showVersion:
		fmt.Println(name, dhpp.DriverName, dhpp.Version)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		klog.ErrorS(err, name+" failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}
