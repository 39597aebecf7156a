package loopdev

import osexec "os/exec"

// exec runs a tool the test needs for setup (mkfs), returning its output.
func exec(name string, args ...string) ([]byte, error) {
	return osexec.Command(name, args...).CombinedOutput()
}
