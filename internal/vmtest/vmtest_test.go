package vmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const mib = 1 << 20

// sh runs a command in the guest and fails the test with its output if it
// fails.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func hostRelease() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return ""
	}
	return utsString(u.Release[:])
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// TestVMKernelAndDisks proves the guest runs the Debian kernel, not the
// host's, and sees each configured disk with its exact size.
func TestVMKernelAndDisks(t *testing.T) {
	t.Parallel()
	disks := []int64{64 * mib, 96 * mib, 1 << 30}
	if !Run(t, Config{Disks: disks, Env: map[string]string{"VMTEST_HOST_RELEASE": hostRelease()}}) {
		return
	}
	guest, host := hostRelease(), os.Getenv("VMTEST_HOST_RELEASE")
	if host == "" || guest == host {
		t.Fatalf("guest kernel %q must differ from the host's %q", guest, host)
	}
	if !strings.HasSuffix(guest, "-amd64") {
		t.Errorf("guest kernel %q is not a Debian amd64 kernel", guest)
	}
	t.Logf("host kernel %s, guest kernel %s", host, guest)
	for i, want := range disks {
		name := fmt.Sprintf("vd%c", 'a'+i)
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("/sys/block", name, "size"))
			if err != nil {
				t.Fatalf("disk %s: %v", name, err)
			}
			sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			if got := sectors * 512; got != want {
				t.Errorf("/dev/%s is %d bytes, want %d", name, got, want)
			}
			f, err := os.Open("/dev/" + name)
			if err != nil {
				t.Fatalf("open /dev/%s: %v", name, err)
			}
			defer f.Close()
			if end, err := f.Seek(0, 2); err != nil || end != want {
				t.Errorf("seek to the end of /dev/%s: %d, %v; want %d", name, end, err, want)
			}
		})
	}
	if _, err := os.Stat(fmt.Sprintf("/sys/block/vd%c", 'a'+len(disks))); err == nil {
		t.Errorf("the guest has more disks than configured")
	}
}
