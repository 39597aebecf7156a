package cluster

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

func TestPrebuildTools(t *testing.T) {
	dirs := func(ts []Tool) []string {
		var d []string
		for _, tl := range ts {
			d = append(d, tl.dirName())
		}
		return d
	}
	tests := []struct {
		name       string
		e2eVersion string
		versions   []string
		want       []string
	}{
		{
			name:       "make test: the older version's server binaries, every version's suite, no sidecar again",
			e2eVersion: "v1.37.2", versions: []string{"v1.33.13", "v1.37.2"},
			want: []string{"kubernetes-v1.33.13", "kubernetes-e2e-v1.33.13", "kubernetes-e2e-v1.37.2"},
		},
		{
			name:       "conformance on the e2e version only: its suite",
			e2eVersion: "v1.37.2", versions: []string{"v1.37.2"},
			want: []string{"kubernetes-e2e-v1.37.2"},
		},
		{
			name:       "e2e on the older version",
			e2eVersion: "v1.33.13", versions: []string{"v1.33.13", "v1.37.2"},
			want: []string{"kubernetes-e2e-v1.33.13", "kubernetes-v1.37.2", "kubernetes-e2e-v1.37.2"},
		},
		{
			name:       "no versions: nothing",
			e2eVersion: "v1.37.2", versions: nil,
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dirs(PrebuildTools(tt.e2eVersion, tt.versions)); !slices.Equal(got, tt.want) {
				t.Errorf("PrebuildTools(%s, %v) = %v, want %v", tt.e2eVersion, tt.versions, got, tt.want)
			}
		})
	}
	// Whatever the list, conformance on every version finds each tool it
	// needs either built by the e2e's own `tools` step or prebuilt.
	e2e := DefaultKubernetesVersion
	have := map[string]bool{}
	for _, tl := range append(Tools(e2e), PrebuildTools(e2e, KubernetesVersions)...) {
		have[tl.dirName()] = true
	}
	for _, v := range KubernetesVersions {
		for _, tl := range append(Tools(v), E2ETool(v)) {
			if !have[tl.dirName()] {
				t.Errorf("conformance on %s needs %s, which neither the e2e nor the prebuild builds", v, tl.dirName())
			}
		}
	}
}

func TestPrebuildRefusesAnUnsupportedVersion(t *testing.T) {
	cfg := Config{KubernetesVersion: DefaultKubernetesVersion, RepoRoot: t.TempDir(), CacheDir: t.TempDir()}
	if err := Prebuild(context.Background(), cfg, []string{"v1.20.0"}, os.Stderr); err == nil {
		t.Error("Prebuild of v1.20.0 succeeded, want an error naming the supported versions")
	}
}

// Two builds of one tool at once (make test's background prebuild and a
// foreground step): one builds, the other waits for it and finds the stamp.
// Without the lock both would build into the same temporary directory.
func TestConcurrentToolBuildsBuildOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program")
	}
	repo, tl := helloTool(t)
	bin := filepath.Join(t.TempDir(), "bin")
	const n = 3
	var wg sync.WaitGroup
	cached := make([]bool, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cached[i], errs[i] = tl.Build(context.Background(), repo, bin)
		}()
	}
	wg.Wait()
	built := 0
	for i := range n {
		if errs[i] != nil {
			t.Errorf("build %d: %v", i, errs[i])
		}
		if !cached[i] {
			built++
		}
	}
	if built != 1 {
		t.Errorf("%d of %d concurrent builds compiled the tool, want exactly 1 (the others wait and find its stamp)", built, n)
	}
	if _, err := os.Stat(filepath.Join(bin, "hello-v1", "hello")); err != nil {
		t.Errorf("built tool: %v", err)
	}
}

// A build that waits for the lock gives up when its context ends (make test
// killing the prebuild after a failed e2e, say).
func TestLockToolHonoursContext(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "x-v1")
	unlock, err := lockTool(context.Background(), dest)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := lockTool(ctx, dest); err == nil {
		t.Error("second lockTool with a cancelled context got the lock held by the first")
	}
}
