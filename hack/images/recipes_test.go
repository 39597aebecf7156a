package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/hack/images/imagetar"
)

// paths returns the image's entries by path.
func paths(img *imagetar.Image) map[string]imagetar.Entry {
	m := map[string]imagetar.Entry{}
	for _, e := range img.Entries {
		m[e.Path] = e
	}
	return m
}

func TestPauseBinaryIsStaticAndStopsOnSIGTERM(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed")
	}
	work := t.TempDir()
	img, err := pauseImage(options{}, work)
	if err != nil {
		t.Fatalf("pauseImage: %v", err)
	}
	if img.Tag != PauseTag {
		t.Errorf("tag = %s, want %s", img.Tag, PauseTag)
	}
	bin := paths(img)["/pause"].Source
	if libs, err := imagetar.SharedLibraries(bin); err != nil || len(libs) != 0 {
		t.Fatalf("pause is not static: %v %v", libs, err)
	}
	cmd := exec.Command(bin)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let it install its handlers
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("pause exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("pause did not exit on SIGTERM")
	}
}

func TestImageContents(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static not installed")
	}
	for _, tool := range driverTools {
		if _, err := imagetar.HostPath(tool); err != nil {
			t.Skipf("driver tool missing on this host: %v", err)
		}
	}
	// Any static executable stands in for the driver and the sidecars.
	static := "/bin/busybox"
	tests := []struct {
		name      string
		opts      options
		tag       string
		wantPaths []string
		wantLinks map[string]string
		absent    []string
	}{
		{
			name:      "busybox",
			tag:       BusyboxTag,
			wantPaths: []string{"/bin/busybox", "/etc/passwd", "/tmp"},
			wantLinks: map[string]string{"/bin/sh": "/bin/busybox", "/bin/mount": "/bin/busybox"},
		},
		{name: "csi-provisioner", opts: options{provisioner: static}, tag: ProvisionerTag, wantPaths: []string{"/busybox"}},
		{name: "csi-resizer", opts: options{resizer: static}, tag: ResizerTag, wantPaths: []string{"/busybox"}},
		{name: "csi-snapshotter", opts: options{snapshotter: static}, tag: SnapshotterTag, wantPaths: []string{"/busybox"}},
		{name: "snapshot-controller", opts: options{snapshotController: static}, tag: SnapshotControllerTag, wantPaths: []string{"/busybox"}},
		{
			name: "dhpp-driver",
			opts: options{driverBin: static, controllerBin: static},
			tag:  DriverTag,
			wantPaths: []string{"/dhpp-driver", "/dhpp-controller", "/bin/busybox", "/etc/mke2fs.conf",
				"/usr/sbin/mkfs.ext4", "/usr/sbin/mkfs.xfs", "/usr/sbin/mkfs.btrfs", "/usr/bin/btrfs",
				"/usr/sbin/losetup", "/usr/bin/mount", "/usr/sbin/xfs_growfs", "/usr/sbin/resize2fs"},
			wantLinks: map[string]string{"/bin/sh": "/bin/busybox"},
			// util-linux's mount must not be shadowed by the busybox applet
			absent: []string{"/bin/mount", "/sbin/losetup"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := recipes[tt.name](tt.opts, t.TempDir())
			if err != nil {
				t.Fatalf("recipe: %v", err)
			}
			if img.Tag != tt.tag {
				t.Errorf("tag = %s, want %s", img.Tag, tt.tag)
			}
			got := paths(img)
			for _, p := range tt.wantPaths {
				if _, ok := got[p]; !ok {
					t.Errorf("image lacks %s", p)
				}
			}
			for p, target := range tt.wantLinks {
				if got[p].Link != target {
					t.Errorf("%s links to %q, want %q", p, got[p].Link, target)
				}
			}
			for _, p := range tt.absent {
				if _, ok := got[p]; ok {
					t.Errorf("image has %s, want it absent", p)
				}
			}
			var libc bool
			for p := range got {
				libc = libc || strings.Contains(p, "/libc.so")
			}
			if want := tt.name == "dhpp-driver"; libc != want {
				t.Errorf("image has libc = %v, want %v", libc, want)
			}
			if err := img.WriteFile(filepath.Join(t.TempDir(), "img.tar")); err != nil {
				t.Errorf("WriteFile: %v", err)
			}
		})
	}
}

func TestSkippedImages(t *testing.T) {
	tests := []struct {
		name string
		opts options
	}{
		{name: "csi-provisioner", opts: options{}},
		{name: "csi-resizer", opts: options{}},
		{name: "csi-snapshotter", opts: options{}},
		{name: "snapshot-controller", opts: options{}},
		{name: "dhpp-driver", opts: options{driverPkg: filepath.Join(t.TempDir(), "no-such-cmd")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := recipes[tt.name](tt.opts, t.TempDir())
			if err != nil || img != nil {
				t.Errorf("recipe = %v, %v; want skipped (nil, nil)", img, err)
			}
		})
	}
}

func TestSidecarRejectsDynamicBinary(t *testing.T) {
	ls, err := imagetar.HostPath("ls")
	if err != nil {
		t.Skip(err)
	}
	if _, err := sidecar(ls, ProvisionerTag); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("sidecar(%s) error = %v, want dynamically linked", ls, err)
	}
}
