//go:build e2e

package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/test/e2e/cluster"
)

// TestExternalStorage runs the External Storage specs of the upstream
// Kubernetes e2e suite for hostpath.dhpp.io on the local cluster of
// $DHPP_K8S_VERSION (default: the newest supported), and judges the result
// against the skip list (skips.go). It brings the cluster up (or reuses a
// running one of that version) and takes it down again if it brought it up,
// unless DHPP_E2E_KEEP=1.
//
// Environment: DHPP_CONFORMANCE_PROCS (ginkgo parallel processes, default
// 3), DHPP_CONFORMANCE_RECHECK=1 (run the listed specs too and report those
// that pass), DHPP_CONFORMANCE_FOCUS and DHPP_CONFORMANCE_SKIP (regular
// expressions that narrow the run further, for debugging: the specs
// DHPP_CONFORMANCE_SKIP matches are not run, and a narrowed run does not
// check the skip list for stale entries).
func TestExternalStorage(t *testing.T) {
	testdisk.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Minute)
	defer cancel()
	cfg, err := cluster.DefaultConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.InstallDHPP = true
	out := filepath.Join(cfg.RepoRoot, "_output", "conformance", cfg.KubernetesVersion)
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}

	step(t, "build e2e.test, ginkgo, agnhost "+cfg.KubernetesVersion+" (cached)", func() error { return cluster.BuildE2ETool(ctx, cfg) })
	step(t, "cluster up with dhpp", func() error { return up(ctx, t, cfg) })
	step(t, "test images on every node", func() error {
		refs, err := cluster.E2EImageRefs(ctx, cfg)
		if err != nil {
			return err
		}
		files, err := cluster.BuildE2EImages(ctx, cfg, refs)
		if err != nil {
			return err
		}
		if len(files) < 3 {
			return fmt.Errorf("only %d stand-in images built from %d references: %v", len(files), len(refs), files)
		}
		return cluster.ImportImages(ctx, cfg, files)
	})

	recheck := os.Getenv("DHPP_CONFORMANCE_RECHECK") == "1"
	skips := For(Skips, cfg.KubernetesVersion)
	focus := Focus
	narrowed := os.Getenv("DHPP_CONFORMANCE_FOCUS")
	if narrowed != "" {
		focus += ".*(?:" + narrowed + ")"
	}
	extraSkip := os.Getenv("DHPP_CONFORMANCE_SKIP")
	if extraSkip != "" {
		narrowed += " (skip " + extraSkip + ")"
		skips = append(skips, Skip{Pattern: extraSkip, Reason: "DHPP_CONFORMANCE_SKIP"})
	}
	junit := filepath.Join(out, "junit.xml")
	os.Remove(junit)
	var runErr error
	step(t, "ginkgo (log: "+filepath.Join(out, "ginkgo.log")+")", func() error {
		runErr = runSuite(ctx, cfg, out, focus, skips, recheck)
		return nil
	})
	specs, err := ReadJUnit(junit)
	if err != nil {
		t.Fatalf("no report (ginkgo: %v): %v", runErr, err)
	}
	v := Judge(specs, regexp.MustCompile(focus), skips)
	if narrowed != "" {
		v.Stale = nil
	}
	report(t, cfg.KubernetesVersion, v, skips, recheck)
	if runErr != nil && v.OK() && len(v.ListedFailures) == 0 {
		t.Errorf("ginkgo failed but the report shows no failure: %v", runErr)
	}
}

// step runs f as a named phase and fails the test on its error.
func step(t *testing.T, name string, f func() error) {
	t.Helper()
	start := time.Now()
	err := f()
	t.Logf("%-60s %s", name, time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// up brings the cluster up with dhpp, or reuses a running one of the same
// version; it registers the teardown when it brought the cluster up.
func up(ctx context.Context, t *testing.T, cfg cluster.Config) error {
	err := cluster.Up(ctx, cfg, testWriter{t})
	switch {
	case errors.Is(err, cluster.ErrAlreadyRunning):
		return cluster.InstallDHPP(ctx, cfg, testWriter{t})
	case err != nil:
		return errors.Join(err, cluster.Down(context.Background(), cfg, testWriter{t}))
	}
	if os.Getenv("DHPP_E2E_KEEP") != "1" {
		t.Cleanup(func() {
			start := time.Now()
			if err := cluster.Down(context.Background(), cfg, testWriter{t}); err != nil {
				t.Errorf("down: %v", err)
			}
			t.Logf("cluster down in %s", time.Since(start).Round(time.Second))
		})
	}
	return nil
}

// runSuite runs e2e.test under the ginkgo CLI, in parallel, writing the
// JUnit report and the full log to out.
func runSuite(ctx context.Context, cfg cluster.Config, out, focus string, skips []Skip, recheck bool) error {
	procs := 3
	if p, err := strconv.Atoi(os.Getenv("DHPP_CONFORMANCE_PROCS")); err == nil && p > 0 {
		procs = p
	}
	args := []string{
		"--procs=" + strconv.Itoa(procs), "--timeout=90m", "--no-color",
		// Serial specs run after the parallel ones, on process 1.
		"--junit-report=junit.xml", "--output-dir=" + out,
		"--poll-progress-after=5m",
		"--focus=" + focus,
	}
	if !recheck {
		skip, err := Compile(skips)
		if err != nil {
			return err
		}
		args = append(args, "--skip="+skip.String())
	}
	args = append(args, cfg.E2EBin("e2e.test"), "--",
		"--kubeconfig="+cfg.KubeconfigPath(),
		"--kubectl-path="+cfg.KubeBin("kubectl"),
		"--storage.testdriver="+filepath.Join(cfg.RepoRoot, "test/e2e/conformance/testdriver.yaml"),
		"--provider=skeleton",
		"--report-dir="+out,
		// Nothing can be pulled: every image is imported on the nodes.
		"--allowed-not-ready-nodes=0",
	)
	log, err := os.Create(filepath.Join(out, "ginkgo.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	fmt.Fprintf(log, "%s %s\n", cfg.E2EBin("ginkgo"), strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, cfg.E2EBin("ginkgo"), args...)
	cmd.Dir = out
	cmd.Stdout, cmd.Stderr = log, log
	// KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false: the suite's `kubectl exec`
	// calls use SPDY. Over WebSockets (kubectl's default since 1.31),
	// through the apiserver's translation to the kubelet and containerd
	// 1.6's stream server, a command that exits at once sometimes loses its
	// output ("Unknown stream id 1, discarding message ... closed all
	// streams"; seen on `cat` in "volumes should store data", v1.33.13).
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cfg.KubeconfigPath(), "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false")
	return cmd.Run()
}

// report logs the counts, the failures and the state of the skip list, and
// fails the test on an unexpected failure or a stale entry.
func report(t *testing.T, version string, v Verdict, skips []Skip, recheck bool) {
	t.Logf("Kubernetes %s, External Storage for hostpath.dhpp.io: Passed %d, Failed %d, Skipped %d (%d by the skip list, the rest by the suite: patterns and capabilities dhpp does not declare)",
		version, v.Passed, v.Failed, v.Skipped, v.SkipListed)
	for _, sp := range v.ListedFailures {
		s, _ := Match(skips, sp.Name)
		t.Logf("failed as listed (%s): %s", s.Reason, sp.Name)
	}
	for _, sp := range v.NowPassing {
		s, _ := Match(skips, sp.Name)
		t.Logf("LISTED BUT PASSES (consider removing the entry %q): %s", s.Pattern, sp.Name)
	}
	if recheck && len(v.NowPassing) == 0 {
		t.Logf("recheck: every listed spec that ran still fails")
	}
	for _, s := range v.Stale {
		t.Errorf("stale skip-list entry, it matches no spec of %s: %q (%s)", version, s.Pattern, s.Reason)
	}
	for _, sp := range v.Unexpected {
		t.Errorf("FAILED (not in the skip list): %s\n    %s", sp.Name, firstLines(sp.Message, 6))
	}
	// A run in which nothing passed tested nothing (a test driver file the
	// suite no longer matches, a focus that selects no spec): not a pass.
	if v.Passed == 0 {
		t.Errorf("no External Storage spec of hostpath.dhpp.io passed: the run tested nothing")
	}
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n    ")
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
