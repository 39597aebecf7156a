//go:build e2e

package e2e

import (
	"os"
	"testing"
)

// requireRoot skips a test that needs root when run unprivileged on a
// developer machine, but fails it under CI=true: CI runs as root, so a skip
// there would hide a test that never ran.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root (namespaces, mounts, loop devices, iptables) and CI=true: refusing to skip")
	}
	t.Skip("needs root: namespaces, mounts, loop devices, iptables")
}
