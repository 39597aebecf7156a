package imagetar

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseLdd(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want []string
	}{
		{
			name: "dynamic binary",
			out: "\tlinux-vdso.so.1 (0x00007ffd)\n" +
				"\tlibblkid.so.1 => /lib/x86_64-linux-gnu/libblkid.so.1 (0x00007f1)\n" +
				"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n" +
				"\t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n",
			want: []string{"/lib/x86_64-linux-gnu/libblkid.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"},
		},
		{
			name: "duplicates are listed once",
			out:  "libc.so.6 => /lib/libc.so.6 (0x1)\nlibc.so.6 => /lib/libc.so.6 (0x1)\n",
			want: []string{"/lib/libc.so.6"},
		},
		{
			name: "unresolved library is skipped",
			out:  "libmissing.so => not found\n",
			want: nil,
		},
		{name: "empty", out: "", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseLdd(tt.out); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseLdd() = %q, want %q", got, tt.want)
			}
		})
	}
}

// readTar returns name → header and name → content of a tar stream.
func readTar(t *testing.T, r io.Reader) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}
		hdrs[h.Name], data[h.Name] = h, b
	}
}

func TestWriteProducesLoadableImage(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := &Image{Tag: "dhpp.local/test:v1", Entrypoint: []string{"/usr/bin/tool"}}
	img.Add(
		Entry{Path: "/usr/bin/tool", Source: src},
		Entry{Path: "/etc/passwd", Data: []byte("root:x:0:0::/:/bin/sh\n")},
		Entry{Path: "/bin/sh", Link: "/bin/busybox"},
		Entry{Path: "/tmp", Dir: true, Mode: os.ModeSticky | 0o777},
		// a later entry for the same path wins
		Entry{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
	)
	var buf bytes.Buffer
	if err := img.Write(&buf); err != nil {
		t.Fatalf("Write: %v", err)
	}
	hdrs, data := readTar(t, &buf)

	var manifest []manifestEntry
	if err := json.Unmarshal(data["manifest.json"], &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || !reflect.DeepEqual(manifest[0].RepoTags, []string{"dhpp.local/test:v1"}) || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest = %+v", manifest)
	}
	cfgBytes, ok := data[manifest[0].Config]
	if !ok {
		t.Fatalf("config %s missing", manifest[0].Config)
	}
	if sum := sha256.Sum256(cfgBytes); hex.EncodeToString(sum[:])+".json" != manifest[0].Config {
		t.Errorf("config name %s is not its digest", manifest[0].Config)
	}
	var cfg imageConfig
	if err := json.Unmarshal(cfgBytes, &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	layer := data[manifest[0].Layers[0]]
	lsum := sha256.Sum256(layer)
	if want := "sha256:" + hex.EncodeToString(lsum[:]); !reflect.DeepEqual(cfg.RootFS.DiffIDs, []string{want}) {
		t.Errorf("diff_ids = %v, want [%s]", cfg.RootFS.DiffIDs, want)
	}
	if !reflect.DeepEqual(cfg.Config.Entrypoint, []string{"/usr/bin/tool"}) || cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("config = %+v", cfg)
	}
	if hdrs["manifest.json"] == nil {
		t.Fatal("no manifest.json")
	}

	lh, ld := readTar(t, bytes.NewReader(layer))
	tests := []struct {
		name     string
		typeflag byte
		mode     int64
		content  string
		link     string
	}{
		{name: "usr/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "bin/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "etc/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/tool", typeflag: tar.TypeReg, mode: 0o755, content: "#!/bin/sh\necho hi\n"},
		{name: "etc/passwd", typeflag: tar.TypeReg, mode: 0o644, content: "root:x:0:0:root:/root:/bin/sh\n"},
		{name: "bin/sh", typeflag: tar.TypeSymlink, mode: 0o777, link: "/bin/busybox"},
		{name: "tmp/", typeflag: tar.TypeDir, mode: 0o1777},
	}
	for _, tt := range tests {
		h := lh[tt.name]
		if h == nil {
			t.Errorf("layer lacks %s (has %v)", tt.name, keys(lh))
			continue
		}
		if h.Typeflag != tt.typeflag || h.Mode != tt.mode || h.Linkname != tt.link || string(ld[tt.name]) != tt.content {
			t.Errorf("%s: type %c mode %o link %q content %q; want %c %o %q %q",
				tt.name, h.Typeflag, h.Mode, h.Linkname, ld[tt.name], tt.typeflag, tt.mode, tt.link, tt.content)
		}
	}
	if len(lh) != len(tests) {
		t.Errorf("layer has %d entries %v, want %d", len(lh), keys(lh), len(tests))
	}

	// Same inputs, same bytes: re-importing an unchanged image is a no-op.
	var first, second bytes.Buffer
	if err := img.Write(&first); err != nil {
		t.Fatal(err)
	}
	if err := img.Write(&second); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Error("two writes of the same image differ")
	}
}

func TestWriteRejects(t *testing.T) {
	tests := []struct {
		name    string
		img     Image
		wantErr string
	}{
		{name: "tag without version", img: Image{Tag: "busybox"}, wantErr: "name:tag"},
		{name: "file used as directory", img: Image{Tag: "a:b", Entries: []Entry{
			{Path: "/bin", Data: []byte("x")}, {Path: "/bin/sh", Data: []byte("y")},
		}}, wantErr: "both a directory"},
		{name: "missing source", img: Image{Tag: "a:b", Entries: []Entry{
			{Path: "/x", Source: "/nonexistent/dhpp-test"},
		}}, wantErr: "/nonexistent/dhpp-test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.img.Write(io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Write() error = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestAddBinaryIncludesLibraries(t *testing.T) {
	bin, err := HostPath("ls")
	if err != nil {
		t.Skipf("no ls on this host: %v", err)
	}
	img := &Image{Tag: "t:t"}
	if err := img.AddBinary(bin); err != nil {
		t.Fatalf("AddBinary(%s): %v", bin, err)
	}
	var hasLibc bool
	for _, e := range img.Entries {
		if strings.Contains(e.Path, "libc.so") {
			hasLibc = true
		}
	}
	if !hasLibc {
		t.Errorf("entries for dynamic %s lack libc: %+v", bin, img.Entries)
	}
}

func keys[M ~map[string]V, V any](m M) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	return k
}
