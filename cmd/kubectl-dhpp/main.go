// Command kubectl-dhpp is the `kubectl dhpp` plugin: put it on PATH and
// run `kubectl dhpp pools`. Everything is in internal/kubectl.
package main

import (
	"os"

	"github.com/dhpp-io/dhpp/internal/kubectl"
)

func main() {
	os.Exit(kubectl.Main(os.Args[1:], os.Stdout, os.Stderr))
}
