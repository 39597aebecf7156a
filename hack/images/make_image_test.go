package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMakeImage runs `make image` as the README's "Install on your cluster"
// does, with the project's own builder (the one that works without a
// container engine), and reads the archive as `docker load` would: the
// manifest names the requested image, its config starts /dhpp-driver, and
// its layer holds /dhpp-driver and /dhpp-controller (deploy/ runs both).
func TestMakeImage(t *testing.T) {
	for _, need := range []string{"make", "/bin/busybox"} {
		if _, err := exec.LookPath(need); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s missing (make deps installs busybox-static); CI=true, so this fails", need)
			}
			t.Skipf("%s missing: %v", need, err)
		}
	}
	const image = "registry.example.test/team/dhpp-driver:v9.9.9-test"
	archive := filepath.Join(t.TempDir(), "dhpp-image.tar")
	start := time.Now()
	cmd := exec.Command("make", "-C", "../..", "image", "IMAGE="+image, "IMAGE_TAR="+archive, "IMAGE_BUILDER=hack")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Logf("make image took %v:\n%s", time.Since(start).Round(time.Millisecond), out)

	files := readTar(t, archive, 0)
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{image}) || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest = %+v, want one image tagged %s with one layer", manifest, image)
	}
	var config struct {
		Config struct{ Entrypoint []string }
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(files[manifest[0].Config], &config); err != nil {
		t.Fatalf("config %s: %v", manifest[0].Config, err)
	}
	if !slices.Equal(config.Config.Entrypoint, []string{"/dhpp-driver"}) {
		t.Errorf("entrypoint = %q, want [/dhpp-driver]", config.Config.Entrypoint)
	}
	layer, ok := files[manifest[0].Layers[0]]
	if !ok {
		t.Fatalf("layer %s named by the manifest is not in the archive", manifest[0].Layers[0])
	}
	inner := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(inner, layer, 0o644); err != nil {
		t.Fatal(err)
	}
	modes := readTarModes(t, inner)
	for _, p := range []string{"dhpp-driver", "dhpp-controller", "usr/sbin/mkfs.xfs"} {
		if m, ok := modes[p]; !ok || m&0o111 == 0 {
			t.Errorf("layer: %s missing or not executable (mode %o, present %v)", p, m, ok)
		}
	}
}

// readTar returns the regular files of a tar archive by name; files larger
// than limit (if not 0) are left out.
func readTar(t *testing.T, file string, limit int64) map[string][]byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		if h.Typeflag != tar.TypeReg || (limit > 0 && h.Size > limit) {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s in %s: %v", h.Name, file, err)
		}
		out[h.Name] = b
	}
}

// readTarModes returns the permission bits of a tar's regular files by
// name, without the leading "./" or "/".
func readTarModes(t *testing.T, file string) map[string]int64 {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int64{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		if h.Typeflag == tar.TypeReg {
			out[strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/")] = h.Mode
		}
	}
}
