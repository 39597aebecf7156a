package cluster

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	utilversion "k8s.io/apimachinery/pkg/util/version"
)

// goMod is what these tests read from a go.mod: required versions, tool
// directives, and replace targets (module path => version).
type goMod struct {
	require, replace map[string]string
	tools            []string
}

// readGoMod parses the require, tool and replace directives of a go.mod,
// block or single-line form. It is no general parser: enough for the
// machine-written files under hack/tools and the root.
func readGoMod(t *testing.T, path string) goMod {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := goMod{require: map[string]string{}, replace: map[string]string{}}
	block := "" // the directive of the ( ) block we are in
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "//")
		fields := strings.Fields(line)
		switch {
		case len(fields) == 0:
			continue
		case fields[0] == ")":
			block = ""
			continue
		case len(fields) == 2 && fields[1] == "(":
			block = fields[0]
			continue
		}
		directive, args := block, fields
		if block == "" {
			directive, args = fields[0], fields[1:]
		}
		switch {
		case directive == "require" && len(args) >= 2:
			m.require[args[0]] = args[1]
		case directive == "tool" && len(args) == 1:
			m.tools = append(m.tools, args[0])
		case directive == "replace" && len(args) == 4 && args[1] == "=>":
			// "old => new version"; a local directory has no version.
			m.replace[args[0]] = args[3]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// Every sidecar is built from its upstream tag, stamped with it, and put
// where the cluster runs it from; all but csi-provisioner come from the one
// sidecars module.
func TestSidecarsBuildTheirUpstreamTag(t *testing.T) {
	root, err := FindRepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	upstream := map[string]struct{ module, buildModule string }{ // by Tool name
		"csi-provisioner":      {"github.com/kubernetes-csi/external-provisioner/v6", "hack/tools/csi-provisioner"},
		"csi-resizer":          {"github.com/kubernetes-csi/external-resizer/v2", sidecarsModule},
		"external-snapshotter": {"github.com/kubernetes-csi/external-snapshotter/v8", sidecarsModule},
	}
	cfg := Config{CacheDir: t.TempDir()}
	paths := map[string]string{ // where the cluster looks for each binary
		"csi-provisioner": cfg.provisionerBin(), "csi-resizer": cfg.resizerBin(),
		"csi-snapshotter": cfg.snapshotterBin("csi-snapshotter"), "snapshot-controller": cfg.snapshotterBin("snapshot-controller"),
	}
	seen := 0
	for _, tl := range Tools(KubernetesVersions[0]) {
		up, ok := upstream[tl.Name]
		if !ok {
			continue
		}
		seen++
		if tl.Module != up.buildModule {
			t.Errorf("%s is built in %s, want %s", tl.Name, tl.Module, up.buildModule)
		}
		mod := readGoMod(t, filepath.Join(root, tl.Module, "go.mod"))
		if got := mod.require[up.module]; got != tl.Version {
			t.Errorf("%s: %s/go.mod requires %s %q, the tool is version %s", tl.Name, tl.Module, up.module, got, tl.Version)
		}
		if !strings.HasSuffix(tl.Ldflags, "-X main.version="+tl.Version) {
			t.Errorf("%s: ldflags %q do not stamp %s", tl.Name, tl.Ldflags, tl.Version)
		}
		for _, p := range tl.Packages {
			if !strings.HasPrefix(p, up.module+"/cmd/") || !slices.Contains(mod.tools, p) {
				t.Errorf("%s: package %s is not a tool directive of %s/go.mod under %s/cmd", tl.Name, p, tl.Module, up.module)
			}
		}
		for _, b := range tl.Binaries {
			if want := filepath.Join(cfg.binDir(), tl.Name+"-"+tl.Version, b); paths[b] != want {
				t.Errorf("the cluster runs %s from %q, the build puts it at %q", b, paths[b], want)
			}
		}
	}
	if seen != len(upstream) {
		t.Errorf("Tools builds %d of the %d sidecars", seen, len(upstream))
	}
}

// raisedBySidecars lists the modules the sidecars module may require above
// the root's version: a sidecar's own go.mod requires more, and MVS cannot
// select less. Each such module, and every package that imports it, is a
// compile the driver's tests do not share, so the list must stay short and
// every entry must still be needed (the test fails on a stale entry).
var raisedBySidecars = map[string]string{
	"github.com/fxamacker/cbor/v2":                                                snapshotterRequires,
	"github.com/go-openapi/jsonpointer":                                           snapshotterRequires,
	"github.com/go-openapi/jsonreference":                                         snapshotterRequires,
	"github.com/go-openapi/swag":                                                  snapshotterRequires,
	"github.com/go-openapi/swag/cmdutils":                                         snapshotterRequires,
	"github.com/go-openapi/swag/conv":                                             snapshotterRequires,
	"github.com/go-openapi/swag/fileutils":                                        snapshotterRequires,
	"github.com/go-openapi/swag/jsonutils":                                        snapshotterRequires,
	"github.com/go-openapi/swag/loading":                                          snapshotterRequires,
	"github.com/go-openapi/swag/mangling":                                         snapshotterRequires,
	"github.com/go-openapi/swag/netutils":                                         snapshotterRequires,
	"github.com/go-openapi/swag/pools":                                            snapshotterRequires,
	"github.com/go-openapi/swag/stringutils":                                      snapshotterRequires,
	"github.com/go-openapi/swag/typeutils":                                        snapshotterRequires,
	"github.com/go-openapi/swag/yamlutils":                                        snapshotterRequires,
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc": snapshotterRequires,
	"go.opentelemetry.io/otel":                                                    snapshotterRequires,
	"go.opentelemetry.io/otel/metric":                                             snapshotterRequires,
	"go.opentelemetry.io/otel/trace":                                              snapshotterRequires,
	"golang.org/x/time":                                                           snapshotterRequires,
	"google.golang.org/genproto/googleapis/rpc":                                   snapshotterRequires,
}

// snapshotterRequires: external-snapshotter v8.7.0's go.mod requires a newer
// version than the root's. Raising the root to it would make ~490 more of the
// sidecars' packages (client-go and up, which import cbor and go-openapi)
// the same cache entries as the tests'.
const snapshotterRequires = "external-snapshotter v8.7.0 requires more"

// The sidecars share the driver's build cache only if they link the same
// module versions: every module both go.mod files require must be at the
// root's version, and every k8s.io staging module replaced to the root's
// k8s.io version. Bumping a dependency of the root without the sidecars (or
// the reverse) fails here instead of silently doubling the cold build.
func TestSidecarModuleSharesRootVersions(t *testing.T) {
	root, err := FindRepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	rootMod := readGoMod(t, filepath.Join(root, "go.mod"))
	side := readGoMod(t, filepath.Join(root, sidecarsModule, "go.mod"))
	shared := 0
	for path, want := range rootMod.require {
		got, ok := side.require[path]
		if !ok {
			continue
		}
		shared++
		why, raised := raisedBySidecars[path]
		switch {
		case got == want && raised:
			t.Errorf("%s: at the root's %s again; remove it from raisedBySidecars (%s)", path, want, why)
		case got != want && !raised:
			t.Errorf("%s: sidecars module requires %s, root %s; align them (or list it in raisedBySidecars with the sidecar that forces it)", path, got, want)
		case got != want && !newer(t, got, want):
			t.Errorf("%s: sidecars module requires %s, older than the root's %s", path, got, want)
		}
	}
	if shared < 40 {
		t.Errorf("only %d modules required by both go.mod files; the parser or the module is off", shared)
	}
	k8s := rootMod.require["k8s.io/api"]
	staging := regexp.MustCompile(`^k8s\.io/[a-z-]+$`)
	for _, p := range []string{"k8s.io/api", "k8s.io/apimachinery", "k8s.io/client-go", "k8s.io/apiserver", "k8s.io/component-base", "k8s.io/csi-translation-lib"} {
		if side.replace[p] != k8s {
			t.Errorf("%s replaced to %q, want the root's k8s.io version %s", p, side.replace[p], k8s)
		}
	}
	for p, v := range side.replace {
		if staging.MatchString(p) && v != k8s {
			t.Errorf("%s replaced to %s, want the root's k8s.io version %s", p, v, k8s)
		}
	}
}

// newer reports whether module version a is above b.
func newer(t *testing.T, a, b string) bool {
	t.Helper()
	va, err := utilversion.ParseSemantic(a)
	if err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	vb, err := utilversion.ParseSemantic(b)
	if err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return va.GreaterThan(vb)
}
