// Command images builds the container images the local e2e cluster runs,
// as `docker save`-style tarballs, because the cluster has no registry to
// pull from: each tarball is imported into every node's containerd.
//
//	go run ./hack/images -out _output/images \
//	    -provisioner ~/.cache/dhpp/bin/csi-provisioner-v6.3.0/csi-provisioner \
//	    -resizer ~/.cache/dhpp/bin/csi-resizer-v2.3.0/csi-resizer \
//	    -snapshotter ~/.cache/dhpp/bin/external-snapshotter-v8.7.0/csi-snapshotter \
//	    -snapshot-controller ~/.cache/dhpp/bin/external-snapshotter-v8.7.0/snapshot-controller
//
// Images whose inputs are not given (or, for the driver, whose source
// directory cmd/dhpp-driver does not exist yet) are skipped with a message.
// The driver's image also carries /dhpp-controller (cmd/dhpp-controller):
// dhpp ships one image, and the controller Deployment runs that binary.
//
// `make image` uses the driver's recipe alone to build the production image
// where no container engine is present:
//
//	go run ./hack/images -out DIR -only dhpp-driver -driver-tag REGISTRY/dhpp-driver:TAG -ldflags "-X ..."
//
// With -e2e-images it builds instead the stand-ins for the test images of
// the upstream Kubernetes e2e suite (e2e.go), tagged as the suite names them.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"
)

func main() {
	klog.InitFlags(nil)
	var o options
	flag.StringVar(&o.out, "out", "", "directory to write <image>.tar files into (required)")
	flag.StringVar(&o.provisioner, "provisioner", "", "static csi-provisioner binary; empty skips the image")
	flag.StringVar(&o.resizer, "resizer", "", "static csi-resizer binary; empty skips the image")
	flag.StringVar(&o.snapshotter, "snapshotter", "", "static csi-snapshotter binary; empty skips the image")
	flag.StringVar(&o.snapshotController, "snapshot-controller", "", "static snapshot-controller binary; empty skips the image")
	flag.StringVar(&o.driverPkg, "driver-pkg", "./cmd/dhpp-driver", "Go package of the driver, built static; skipped if its directory does not exist")
	flag.StringVar(&o.driverBin, "driver-bin", "", "use this prebuilt static driver binary instead of building -driver-pkg")
	flag.StringVar(&o.controllerPkg, "controller-pkg", "./cmd/dhpp-controller", "Go package of dhpp-controller, built static into the driver's image; left out if its directory does not exist")
	flag.StringVar(&o.controllerBin, "controller-bin", "", "use this prebuilt static dhpp-controller binary instead of building -controller-pkg")
	flag.StringVar(&o.driverTag, "driver-tag", DriverTag, "name:tag the driver's image is known by (its RepoTags)")
	flag.StringVar(&o.ldflags, "ldflags", "", "-ldflags for the driver's and dhpp-controller's go build (e.g. the version stamp)")
	flag.StringVar(&o.only, "only", "", "comma-separated image names to build (default: all): "+strings.Join(imageNames, ","))
	flag.StringVar(&o.e2eImages, "e2e-images", "", "comma-separated image references of the upstream e2e suite (e2e.test --list-images) to build stand-ins for, instead of the cluster's images")
	flag.StringVar(&o.agnhost, "agnhost", "", "static agnhost binary, for the e2e agnhost stand-in")
	flag.Parse()
	if o.out == "" {
		fmt.Fprintln(os.Stderr, "images: -out is required")
		os.Exit(2)
	}
	built, err := build(o)
	for _, b := range built {
		fmt.Println(b)
	}
	if err != nil {
		klog.ErrorS(err, "building images failed")
		os.Exit(1)
	}
}

type options struct {
	out, provisioner, resizer, driverPkg, driverBin, only string
	controllerPkg, controllerBin                          string
	snapshotter, snapshotController                       string
	driverTag, ldflags                                    string
	e2eImages, agnhost                                    string
}

func (o options) wanted(name string) bool {
	if o.only == "" {
		return true
	}
	for _, n := range strings.Split(o.only, ",") {
		if strings.TrimSpace(n) == name {
			return true
		}
	}
	return false
}

// build writes every wanted image and returns "name<TAB>tag<TAB>file" lines.
func build(o options) ([]string, error) {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", o.out, err)
	}
	work, err := os.MkdirTemp("", "dhpp-images-")
	if err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	defer os.RemoveAll(work)

	if o.e2eImages != "" {
		return buildE2E(o)
	}
	var built []string
	for _, name := range imageNames {
		if !o.wanted(name) {
			continue
		}
		img, err := recipes[name](o, work)
		if err != nil {
			return built, fmt.Errorf("image %s: %w", name, err)
		}
		if img == nil {
			continue // recipe said why it skipped
		}
		file := filepath.Join(o.out, name+".tar")
		if err := img.WriteFile(file); err != nil {
			return built, fmt.Errorf("image %s: %w", name, err)
		}
		built = append(built, name+"\t"+img.Tag+"\t"+file)
	}
	return built, nil
}
