package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/dhpp-io/dhpp/hack/images/imagetar"
	"k8s.io/klog/v2"
)

// Image tags. The pause tag must equal containerd's sandbox_image so that
// containerd never tries to pull it; the others are what deploy/'s local
// overlay references with imagePullPolicy: Never.
const (
	PauseTag       = "registry.k8s.io/pause:3.10"
	BusyboxTag     = "dhpp.local/busybox:latest"
	ProvisionerTag = "dhpp.local/csi-provisioner:v6.3.0"
	ResizerTag     = "dhpp.local/csi-resizer:v2.3.0"
	// Both from external-snapshotter v8.7.0 (hack/tools/sidecars).
	SnapshotterTag        = "dhpp.local/csi-snapshotter:v8.7.0"
	SnapshotControllerTag = "dhpp.local/snapshot-controller:v8.7.0"
	DriverTag             = "dhpp.local/dhpp-driver:dev"
	// LocalPathTag is rancher/local-path-provisioner for the cluster
	// benchmark (deploy/bench/local-path references it).
	LocalPathTag = "dhpp.local/local-path-provisioner:v0.0.30"
)

var imageNames = []string{"pause", "busybox", "csi-provisioner", "csi-resizer", "csi-snapshotter", "snapshot-controller", "dhpp-driver", "local-path-provisioner"}

var recipes = map[string]func(o options, work string) (*imagetar.Image, error){
	"pause":           pauseImage,
	"busybox":         busyboxImage,
	"csi-provisioner": func(o options, _ string) (*imagetar.Image, error) { return sidecar(o.provisioner, ProvisionerTag) },
	"csi-resizer":     func(o options, _ string) (*imagetar.Image, error) { return sidecar(o.resizer, ResizerTag) },
	"csi-snapshotter": func(o options, _ string) (*imagetar.Image, error) { return sidecar(o.snapshotter, SnapshotterTag) },
	"snapshot-controller": func(o options, _ string) (*imagetar.Image, error) {
		return sidecar(o.snapshotController, SnapshotControllerTag)
	},
	"dhpp-driver": driverImage,
	// The binary comes from the tool cache (test/e2e/cluster builds it);
	// the image is skipped while it is not built.
	"local-path-provisioner": func(_ options, _ string) (*imagetar.Image, error) {
		return sidecar(localPathBin(), LocalPathTag)
	},
}

// localPathBin is $DHPP_LOCAL_PATH_BIN, or where test/e2e/cluster caches the
// local-path-provisioner build; "" when neither exists.
func localPathBin() string {
	if b := os.Getenv("DHPP_LOCAL_PATH_BIN"); b != "" {
		return b
	}
	cache := os.Getenv("DHPP_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		cache = filepath.Join(home, ".cache", "dhpp")
	}
	b := filepath.Join(cache, "bin", "local-path-provisioner-v0.0.30", "local-path-provisioner")
	if _, err := os.Stat(b); err != nil {
		return ""
	}
	return b
}

// pauseSource is the whole pause container: it holds the pod's namespaces,
// reaps orphans (it is PID 1 of the pod) and exits on SIGINT/SIGTERM.
const pauseSource = `#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
	struct sigaction q = {0}, r = {0};
	q.sa_handler = quit;
	r.sa_handler = reap;
	r.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	if (sigaction(SIGINT, &q, NULL) < 0 || sigaction(SIGTERM, &q, NULL) < 0 || sigaction(SIGCHLD, &r, NULL) < 0)
		return 1;
	for (;;)
		pause();
}
`

func pauseImage(_ options, work string) (*imagetar.Image, error) {
	src := filepath.Join(work, "pause.c")
	bin := filepath.Join(work, "pause")
	if err := os.WriteFile(src, []byte(pauseSource), 0o644); err != nil {
		return nil, fmt.Errorf("write pause.c: %w", err)
	}
	// Static, so the image needs nothing but this one file.
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gcc -static pause.c (apt-get install gcc libc6-dev): %w: %s", err, out)
	}
	img := &imagetar.Image{Tag: PauseTag, Entrypoint: []string{"/pause"}}
	return img.Add(imagetar.Entry{Path: "/pause", Source: bin, Mode: 0o755}), nil
}

// baseEntries are the files every shell-capable image gets: busybox with its
// applet links, minimal account files, and a sticky /tmp.
func baseEntries(skip map[string]bool) ([]imagetar.Entry, error) {
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		return nil, fmt.Errorf("%s (apt-get install busybox-static): %w", busybox, err)
	}
	if libs, err := imagetar.SharedLibraries(busybox); err != nil || len(libs) > 0 {
		return nil, fmt.Errorf("%s must be the static busybox (busybox-static), ldd says %v %v", busybox, libs, err)
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list-full: %w", err)
	}
	entries := []imagetar.Entry{
		{Path: busybox, Source: busybox, Mode: 0o755},
		{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Data: []byte("root:x:0:\nnobody:x:65534:\n")},
		{Path: "/tmp", Dir: true, Mode: os.ModeSticky | 0o777},
		{Path: "/root", Dir: true, Mode: 0o700},
	}
	for _, applet := range strings.Fields(string(out)) {
		p := "/" + applet
		if p == busybox || skip[filepath.Base(p)] {
			continue
		}
		entries = append(entries, imagetar.Entry{Path: p, Link: busybox})
	}
	return entries, nil
}

func busyboxImage(_ options, _ string) (*imagetar.Image, error) {
	base, err := baseEntries(nil)
	if err != nil {
		return nil, err
	}
	img := &imagetar.Image{Tag: BusyboxTag, Cmd: []string{"sh"}}
	return img.Add(base...), nil
}

func sidecar(bin, tag string) (*imagetar.Image, error) {
	if bin == "" {
		klog.InfoS("skipping image: no binary given", "tag", tag)
		return nil, nil
	}
	if libs, err := imagetar.SharedLibraries(bin); err != nil {
		return nil, err
	} else if len(libs) > 0 {
		return nil, fmt.Errorf("%s is dynamically linked (build it with CGO_ENABLED=0)", bin)
	}
	name := "/" + filepath.Base(bin)
	img := &imagetar.Image{Tag: tag, Entrypoint: []string{name}}
	return img.Add(imagetar.Entry{Path: name, Source: bin, Mode: 0o755}), nil
}

// driverTools are the host programs dhpp-driver shells out to: mounting and
// loop devices (util-linux), and creating and growing ext4, XFS and btrfs
// filesystems. They are copied with their shared libraries.
var driverTools = []string{
	"mount", "umount", "losetup", "blkid", "findmnt",
	"mkfs.ext4", "resize2fs", "e2fsck",
	"mkfs.xfs", "xfs_growfs",
	"mkfs.btrfs", "btrfs",
}

// goBuildStatic builds a Go package into a static binary.
func goBuildStatic(pkg, out, ldflags string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, b)
	}
	return nil
}

func driverImage(o options, work string) (*imagetar.Image, error) {
	bin := o.driverBin
	if bin == "" {
		if st, err := os.Stat(o.driverPkg); err != nil || !st.IsDir() {
			klog.InfoS("skipping image: driver source not present yet", "tag", DriverTag, "package", o.driverPkg)
			return nil, nil
		}
		bin = filepath.Join(work, "dhpp-driver")
		if err := goBuildStatic(o.driverPkg, bin, o.ldflags); err != nil {
			return nil, err
		}
	}
	ctrl := o.controllerBin
	if ctrl == "" && o.controllerPkg != "" {
		if st, err := os.Stat(o.controllerPkg); err == nil && st.IsDir() {
			ctrl = filepath.Join(work, "dhpp-controller")
			if err := goBuildStatic(o.controllerPkg, ctrl, o.ldflags); err != nil {
				return nil, err
			}
		} else {
			klog.InfoS("driver image without dhpp-controller: its source is not present", "package", o.controllerPkg)
		}
	}
	skip := map[string]bool{}
	for _, t := range driverTools {
		skip[t] = true
	}
	base, err := baseEntries(skip)
	if err != nil {
		return nil, err
	}
	tag := o.driverTag
	if tag == "" {
		tag = DriverTag
	}
	img := &imagetar.Image{Tag: tag, Entrypoint: []string{"/dhpp-driver"}}
	img.Add(base...)
	img.Add(imagetar.Entry{Path: "/dhpp-driver", Source: bin, Mode: 0o755})
	if ctrl != "" {
		img.Add(imagetar.Entry{Path: "/dhpp-controller", Source: ctrl, Mode: 0o755})
	}
	for _, t := range driverTools {
		p, err := imagetar.HostPath(t)
		if err != nil {
			return nil, err
		}
		if err := img.AddBinary(p); err != nil {
			return nil, err
		}
	}
	// mke2fs reads its defaults (ext4 features, inode size) from here.
	img.Add(imagetar.Entry{Path: "/etc/mke2fs.conf", Source: "/etc/mke2fs.conf"})
	return img, nil
}
