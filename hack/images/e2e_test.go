package main

import (
	"os/exec"
	"testing"
)

func TestE2ERecipeChoosesStandInByRepository(t *testing.T) {
	tests := []struct {
		ref  string
		want bool
	}{
		{"registry.k8s.io/e2e-test-images/busybox:1.37.0-2", true},
		{"registry.k8s.io/e2e-test-images/agnhost:2.66.1", true},
		{"registry.k8s.io/e2e-test-images/nginx:1.14-4", true},
		{"registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7", true},
		{"registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1", true},
		{"registry.k8s.io/e2e-test-images/httpd:2.4.39-4", false},
		{"docker.io/library/busybox:1.36", false}, // not the suite's registry
		{"registry.k8s.io/e2e-test-images/busybox", false},
	}
	for _, tc := range tests {
		if got := e2eRecipe(tc.ref) != nil; got != tc.want {
			t.Errorf("e2eRecipe(%q) found = %v, want %v", tc.ref, got, tc.want)
		}
	}
	if a, b := e2eImageFile("registry.k8s.io/e2e-test-images/agnhost:2.55"), e2eImageFile("registry.k8s.io/e2e-test-images/agnhost:2.66.1"); a == b {
		t.Errorf("two tags share the file %s", a)
	}
}

// The multiVolume specs run `dd oflag=nocache` through /bin/sh: the stand-in
// must give GNU dd, and a /bin/sh that is not busybox (whose ash would run
// its own dd applet).
func TestGNUStandInHasGNUddAndShell(t *testing.T) {
	if _, err := exec.LookPath("dash"); err != nil {
		t.Skip("dash not installed")
	}
	img, err := e2eGNU(options{}, "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1")
	if err != nil {
		t.Fatal(err)
	}
	var dd, sh string
	for _, e := range img.Entries {
		if e.Link == "/bin/busybox" && (e.Path == "/bin/sh" || e.Path == "/bin/dd" || e.Path == "/usr/bin/dd") {
			t.Errorf("%s is the busybox applet", e.Path)
		}
		if e.Path == "/bin/sh" {
			sh = e.Link
		}
		if e.Source != "" && (e.Path == "/usr/bin/dd" || e.Path == "/bin/dd") {
			dd = e.Source
		}
	}
	if sh == "" || dd == "" {
		t.Fatalf("/bin/sh -> %q, dd from %q: want dash and GNU dd", sh, dd)
	}
	out, err := exec.Command(dd, "--version").CombinedOutput()
	if err != nil || len(out) == 0 {
		t.Errorf("%s --version: %v %s (want GNU coreutils)", dd, err, out)
	}
}
