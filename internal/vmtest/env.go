package vmtest

import (
	"fmt"
	"os"
	"testing"
)

// inCI reports whether this is a CI run. CI runs as root with every package
// reachable, so a VM test that cannot run there is a failure, never a skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// skipOrFail applies the project's rule for tests that need the machine's
// privileges: locally, without root, a missing prerequisite (qemu, the
// kernel, apt) is a skip with the reason; under CI=true, or as root where the
// harness could have installed everything itself, it is a failure. A VM
// test therefore never passes silently without having run its body.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	switch missingPrerequisite(inCI(), os.Geteuid() == 0) {
	case failCI:
		t.Fatalf("%s (CI=true: VM tests must run here)", msg)
	case skipNotRoot:
		t.Skipf("%s (not root: run as root, or with CI=true, to make this a failure)", msg)
	default:
		t.Fatal(msg)
	}
}

type verdict int

const (
	failCI verdict = iota
	skipNotRoot
	failRoot
)

// missingPrerequisite decides what a missing VM prerequisite means.
func missingPrerequisite(ci, root bool) verdict {
	switch {
	case ci:
		return failCI
	case !root:
		return skipNotRoot
	default:
		return failRoot
	}
}
