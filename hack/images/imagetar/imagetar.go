// Package imagetar writes single-layer container images in the `docker save`
// tarball format (manifest.json + config JSON + one layer tar), which
// `ctr images import` and `docker load` both read. The e2e cluster has no
// registry to pull from, so every image it runs is assembled from files on
// the host and imported into each node's containerd.
package imagetar

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Entry is one path in the image's root filesystem. Exactly one of Source,
// Data, Link or Dir describes its content.
type Entry struct {
	// Path inside the image, absolute ("/bin/sh").
	Path string
	// Source is a host file whose content (symlinks followed) is copied.
	Source string
	// Data is literal file content.
	Data []byte
	// Link makes the entry a symlink pointing at Link.
	Link string
	// Dir makes the entry a directory.
	Dir bool
	// Mode is the permission bits; 0 means 0755 for dirs and sources that
	// are executable on the host, 0644 otherwise.
	Mode os.FileMode
}

// Image is what Write turns into a tarball.
type Image struct {
	// Tag is the repo tag the runtime will know the image by, e.g.
	// "dhpp.local/busybox:latest".
	Tag        string
	Entrypoint []string
	Cmd        []string
	Env        []string
	Entries    []Entry
}

// Add appends entries and returns the image for chaining.
func (img *Image) Add(e ...Entry) *Image {
	img.Entries = append(img.Entries, e...)
	return img
}

// AddBinary adds a host binary at the same path inside the image together
// with every shared library `ldd` names for it (copied to the same paths,
// symlinks resolved), so the binary runs in an image with no distribution.
func (img *Image) AddBinary(hostPath string) error {
	img.Add(Entry{Path: hostPath, Source: hostPath})
	libs, err := SharedLibraries(hostPath)
	if err != nil {
		return err
	}
	for _, l := range libs {
		img.Add(Entry{Path: l, Source: l})
	}
	return nil
}

// SharedLibraries returns the absolute paths of the libraries the dynamic
// loader would map for bin, as reported by ldd; nil for a static binary.
func SharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	text := string(out)
	if err != nil {
		// ldd exits non-zero for static executables; that is not an error here.
		if strings.Contains(text, "not a dynamic executable") || strings.Contains(text, "statically linked") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", bin, err, strings.TrimSpace(text))
	}
	return ParseLdd(text), nil
}

// ParseLdd extracts absolute library paths from ldd output. Lines look like
// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", or
// "/lib64/ld-linux-x86-64.so.2 (0x...)" for the loader, or
// "linux-vdso.so.1 (0x...)" for the kernel-provided vDSO (skipped).
func ParseLdd(out string) []string {
	seen := map[string]bool{}
	var libs []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		var p string
		if _, after, ok := strings.Cut(line, "=>"); ok {
			p = strings.TrimSpace(after)
		} else {
			p = line
		}
		if i := strings.Index(p, " ("); i >= 0 {
			p = p[:i]
		}
		if !strings.HasPrefix(p, "/") || seen[p] {
			continue
		}
		seen[p] = true
		libs = append(libs, p)
	}
	return libs
}

// WriteFile writes the image tarball to file atomically (temp + rename), so a
// failed build never leaves a truncated tarball for the importer.
func (img *Image) WriteFile(file string) error {
	tmp := file + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := img.Write(bw); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write image %s: %w", img.Tag, err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("flush %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	return os.Rename(tmp, file)
}

// fixed timestamp so that the same inputs give byte-identical layers.
var epoch = time.Unix(0, 0).UTC()

// Write streams the docker-save tarball to w. The layer is built in a
// temporary file first because its digest names it in the outer tar.
func (img *Image) Write(w io.Writer) error {
	if img.Tag == "" || !strings.Contains(img.Tag, ":") {
		return fmt.Errorf("image tag %q must be name:tag", img.Tag)
	}
	layer, err := os.CreateTemp("", "dhpp-layer-*.tar")
	if err != nil {
		return fmt.Errorf("layer temp file: %w", err)
	}
	defer os.Remove(layer.Name())
	defer layer.Close()

	h := sha256.New()
	if err := img.writeLayer(io.MultiWriter(layer, h)); err != nil {
		return err
	}
	diffID := "sha256:" + hex.EncodeToString(h.Sum(nil))
	size, err := layer.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("layer size: %w", err)
	}
	if _, err := layer.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewind layer: %w", err)
	}

	config, err := json.Marshal(imageConfig{
		Architecture: "amd64",
		OS:           "linux",
		Created:      epoch,
		Config: containerConfig{
			Entrypoint: img.Entrypoint,
			Cmd:        img.Cmd,
			Env:        append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, img.Env...),
		},
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{diffID}},
		History: []history{{Created: epoch, CreatedBy: "dhpp hack/images"}},
	})
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	cs := sha256.Sum256(config)
	configName := hex.EncodeToString(cs[:]) + ".json"
	layerName := strings.TrimPrefix(diffID, "sha256:") + "/layer.tar"
	manifest, err := json.Marshal([]manifestEntry{{
		Config:   configName,
		RepoTags: []string{img.Tag},
		Layers:   []string{layerName},
	}})
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}

	tw := tar.NewWriter(w)
	if err := writeBytes(tw, configName, config); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: path.Dir(layerName) + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}); err != nil {
		return fmt.Errorf("layer dir header: %w", err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: layerName, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
		return fmt.Errorf("layer header: %w", err)
	}
	if _, err := io.Copy(tw, layer); err != nil {
		return fmt.Errorf("copy layer: %w", err)
	}
	if err := writeBytes(tw, "manifest.json", manifest); err != nil {
		return err
	}
	return tw.Close()
}

func writeBytes(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
		return fmt.Errorf("header %s: %w", name, err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// writeLayer writes the root filesystem tar: parent directories first, then
// entries sorted by path; a later entry for the same path replaces an earlier
// one, so recipes can override files.
func (img *Image) writeLayer(w io.Writer) error {
	byPath := map[string]Entry{}
	dirs := map[string]bool{}
	for _, e := range img.Entries {
		p := path.Clean("/" + e.Path)
		if p == "/" {
			return fmt.Errorf("entry with empty path")
		}
		e.Path = p
		byPath[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		if e, ok := byPath[d]; ok && !e.Dir {
			return fmt.Errorf("%s is both a directory and a %s", d, kind(e))
		}
		if _, ok := byPath[d]; !ok {
			byPath[d] = Entry{Path: d, Dir: true}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	tw := tar.NewWriter(w)
	for _, p := range paths {
		if err := writeEntry(tw, byPath[p]); err != nil {
			return err
		}
	}
	return tw.Close()
}

func kind(e Entry) string {
	switch {
	case e.Link != "":
		return "symlink"
	case e.Dir:
		return "directory"
	default:
		return "file"
	}
}

func writeEntry(tw *tar.Writer, e Entry) error {
	name := strings.TrimPrefix(e.Path, "/")
	hdr := &tar.Header{Name: name, ModTime: epoch, Uname: "root", Gname: "root"}
	switch {
	case e.Dir:
		hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, name+"/", int64(orMode(e.Mode, 0o755))
		if e.Mode&os.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		return header(tw, hdr)
	case e.Link != "":
		hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, e.Link, 0o777
		return header(tw, hdr)
	case e.Source != "":
		f, err := os.Open(e.Source)
		if err != nil {
			return fmt.Errorf("open %s for %s: %w", e.Source, e.Path, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("stat %s: %w", e.Source, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", e.Source)
		}
		def := os.FileMode(0o644)
		if st.Mode()&0o111 != 0 {
			def = 0o755
		}
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, int64(orMode(e.Mode, def)), st.Size()
		if err := header(tw, hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, f); err != nil {
			return fmt.Errorf("copy %s: %w", e.Source, err)
		}
		return nil
	default:
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, int64(orMode(e.Mode, 0o644)), int64(len(e.Data))
		if err := header(tw, hdr); err != nil {
			return err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return fmt.Errorf("write %s: %w", e.Path, err)
		}
		return nil
	}
}

func header(tw *tar.Writer, hdr *tar.Header) error {
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar header %s: %w", hdr.Name, err)
	}
	return nil
}

func orMode(m, def os.FileMode) os.FileMode {
	if m.Perm() == 0 {
		return def
	}
	return m.Perm()
}

// HostPath resolves name against PATH and the sbin directories that a non-root
// PATH may lack, returning an absolute path.
func HostPath(name string) (string, error) {
	if filepath.IsAbs(name) {
		return name, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on the host (is its Debian package installed?)", name)
}

type imageConfig struct {
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Created      time.Time       `json:"created"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history"`
}

type containerConfig struct {
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	Env        []string `json:"Env,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type history struct {
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
}

type manifestEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}
