package vmtest

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// guestMarker exists only in the initramfs: together with guestEnv it tells
// the guest from the host, so an exported variable alone cannot make a host
// test believe it is in the VM.
const guestMarker = "etc/dhpp-vmtest"

// guestEnv is set by the guest's run script.
const guestEnv = "DHPP_VMTEST_GUEST"

// ranFile is written by Run inside the guest; the host checks it so that a
// -test.run pattern matching nothing (exit 0, no test run) is not a pass.
const ranFile = "/work/vmtest-ran"

// The unprivileged user and group present in the guest's /etc/passwd.
const (
	NobodyUID = 65534
	NobodyGID = 65534
)

// InVM reports whether this process runs inside a vmtest guest.
func InVM() bool {
	if os.Getenv(guestEnv) != "1" {
		return false
	}
	_, err := os.Stat("/" + guestMarker)
	return err == nil
}

func markRan(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(ranFile, []byte(t.Name()), 0o644); err != nil {
		t.Fatalf("vmtest: record that %s ran: %v", t.Name(), err)
	}
}

// RunAs runs a program inside the guest as uid:gid with no supplementary
// groups and returns its combined output. Tests use it to act as an
// unprivileged user, e.g. because ext4 lets root (CAP_SYS_RESOURCE) write
// past a quota. It refuses to run on the host, where changing uid would act
// on the real machine.
func RunAs(uid, gid int, name string, args ...string) ([]byte, error) {
	if !InVM() {
		return nil, fmt.Errorf("vmtest.RunAs(%d, %d, %s): only inside the VM", uid, gid, name)
	}
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s as %d:%d: %w", name, uid, gid, err)
	}
	return out, nil
}
