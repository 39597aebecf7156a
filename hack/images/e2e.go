package main

import (
	"fmt"
	"path"
	"strings"

	"github.com/dhpp-io/dhpp/hack/images/imagetar"
)

// The upstream Kubernetes e2e suite (test/e2e/conformance) runs its pods from
// registry.k8s.io/e2e-test-images/*. There is no registry here, so local
// stand-ins are tagged with the exact references the suite's version uses
// (e2e.test --list-images; test pods pull IfNotPresent, so nothing is
// pulled). Only the images the External Storage specs start are built.

// e2eRecipes maps an e2e image's repository name to its stand-in.
var e2eRecipes = map[string]func(o options, tag string) (*imagetar.Image, error){
	// Most storage pods: a shell and coreutils.
	"busybox": func(_ options, tag string) (*imagetar.Image, error) {
		return withBase(&imagetar.Image{Tag: tag, Cmd: []string{"sh"}}, nil)
	},
	// subPath's mounttest pods and the hostexec pod.
	"agnhost": e2eAgnhost,
	// Run only with a command override; by default it serves HTTP on :80
	// as nginx would.
	"nginx": func(_ options, tag string) (*imagetar.Image, error) {
		img := &imagetar.Image{Tag: tag, Cmd: []string{"httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"}}
		img.Add(imagetar.Entry{Path: "/usr/share/nginx/html/index.html", Data: []byte("dhpp nginx stand-in\n")})
		return withBase(img, nil)
	},
	// multiVolume writes and reads with `dd oflag=nocache` / `iflag=direct`:
	// GNU dd (busybox's rejects nocache) under a non-busybox /bin/sh (a
	// busybox ash would run its own dd applet). v1.33 names the image
	// jessie-dnsutils, later releases glibc-dns-testing.
	"jessie-dnsutils":   e2eGNU,
	"glibc-dns-testing": e2eGNU,
}

// e2eImageFile is the tarball name of an e2e stand-in, unique per reference.
func e2eImageFile(ref string) string {
	r := strings.NewReplacer("/", "_", ":", "_")
	return "e2e-" + r.Replace(path.Base(ref)) + ".tar"
}

// e2eRecipe finds the stand-in for an image reference, or nil if there is
// none (images of specs the External Storage run never starts).
func e2eRecipe(ref string) func(options, string) (*imagetar.Image, error) {
	name, _, ok := strings.Cut(path.Base(ref), ":")
	if !ok || !strings.HasPrefix(ref, "registry.k8s.io/e2e-test-images/") {
		return nil
	}
	return e2eRecipes[name]
}

func withBase(img *imagetar.Image, skip map[string]bool) (*imagetar.Image, error) {
	base, err := baseEntries(skip)
	if err != nil {
		return nil, err
	}
	return img.Add(base...), nil
}

func e2eAgnhost(o options, tag string) (*imagetar.Image, error) {
	if o.agnhost == "" {
		return nil, fmt.Errorf("%s needs -agnhost (the static agnhost binary)", tag)
	}
	if libs, err := imagetar.SharedLibraries(o.agnhost); err != nil {
		return nil, err
	} else if len(libs) > 0 {
		return nil, fmt.Errorf("%s is dynamically linked (build it with CGO_ENABLED=0)", o.agnhost)
	}
	// As upstream's: agnhost is the entrypoint, `pause` its default verb.
	img := &imagetar.Image{Tag: tag, Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}}
	img.Add(imagetar.Entry{Path: "/agnhost", Source: o.agnhost, Mode: 0o755})
	return withBase(img, nil)
}

func e2eGNU(_ options, tag string) (*imagetar.Image, error) {
	img, err := withBase(&imagetar.Image{Tag: tag, Cmd: []string{"sh"}}, map[string]bool{"dd": true, "sh": true})
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"dash", "dd"} {
		p, err := imagetar.HostPath(name)
		if err != nil {
			return nil, err
		}
		if err := img.AddBinary(p); err != nil {
			return nil, err
		}
		if name == "dash" {
			img.Add(imagetar.Entry{Path: "/bin/sh", Link: p})
		}
	}
	return img, nil
}

// buildE2E writes the stand-ins of the wanted references and returns
// "name<TAB>tag<TAB>file" lines; references without a stand-in are skipped.
func buildE2E(o options) ([]string, error) {
	var built []string
	for _, ref := range strings.Split(o.e2eImages, ",") {
		ref = strings.TrimSpace(ref)
		recipe := e2eRecipe(ref)
		if recipe == nil {
			continue
		}
		img, err := recipe(o, ref)
		if err != nil {
			return built, fmt.Errorf("image %s: %w", ref, err)
		}
		file := path.Join(o.out, e2eImageFile(ref))
		if err := img.WriteFile(file); err != nil {
			return built, fmt.Errorf("image %s: %w", ref, err)
		}
		built = append(built, "e2e\t"+ref+"\t"+file)
	}
	return built, nil
}
