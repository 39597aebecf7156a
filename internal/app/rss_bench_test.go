package app

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// BenchmarkDriverRSS measures the resident memory of the real dhpp-driver
// binary serving a loop pool (on an ext4 loop disk) with 0 and 1,000
// volumes, after start-up (pool recovery), a few health probes and ten
// /metrics scrapes. Target: < 40 MiB with 1,000 volumes. The driver runs
// without a Kubernetes API (none here), so client-go's Node informer is not
// part of the figure.
//
//	go test -run '^$' -bench DriverRSS -benchtime 1x ./internal/app/
func BenchmarkDriverRSS(b *testing.B) {
	testdisk.RequireRoot(b)
	bin := filepath.Join(b.TempDir(), "dhpp-driver")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "github.com/dhpp-io/dhpp/cmd/dhpp-driver")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build dhpp-driver: %v\n%s", err, out)
	}
	for _, volumes := range []int{0, 1000} {
		b.Run(fmt.Sprintf("volumes=%d", volumes), func(b *testing.B) {
			disk := testdisk.New(b, "ext4", 2<<30)
			pool := node.PoolConfig{Name: "default", Path: disk.Dir, Backend: node.BackendLoop}
			m, err := node.New(node.Config{NodeID: "rss-node", Pools: []node.PoolConfig{pool}})
			if err != nil {
				b.Fatal(err)
			}
			for i := range volumes {
				// Block volumes: sparse images without mkfs, so 1,000 of
				// them are made in seconds; the driver holds the same
				// record per volume either way.
				if _, err := m.CreateVolume(context.Background(), node.CreateRequest{Name: fmt.Sprintf("pvc-%04d", i), RequiredBytes: 1 << 20, AccessType: node.AccessBlock}); err != nil {
					b.Fatal(err)
				}
			}
			m.Close()
			var mem map[string]float64
			for b.Loop() {
				mem = runAndMeasure(b, bin, disk.Dir, volumes)
			}
			// RssFile is the binary's own pages the process touched; RssAnon
			// its heap and stacks.
			b.ReportMetric(mem["VmRSS"], "MiB-RSS")
			b.ReportMetric(mem["RssAnon"], "MiB-anon")
			b.ReportMetric(mem["RssFile"], "MiB-file")
		})
	}
}

// runAndMeasure starts the driver, waits until it serves, scrapes /metrics
// ten times, lets three probes run and returns its memory figures in MiB.
func runAndMeasure(b *testing.B, bin, poolPath string, volumes int) map[string]float64 {
	b.Helper()
	addr := freeLoopbackAddr(b)
	work := b.TempDir()
	cmd := exec.Command(bin, "--node-id=rss-node", "--pool=default="+poolPath+",backend=loop",
		"--endpoint=unix://"+filepath.Join(work, "csi.sock"), "--kubelet-registration=false",
		"--metrics-address="+addr, "--health-period=200ms", "--health-timeout=100ms")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no KUBERNETES_* variables: no API
	logf, err := os.Create(filepath.Join(work, "driver.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			b.Fatalf("driver not serving after 30 s: %v\n%s", err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for range 10 {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("dhpp_pool_volumes{pool=\"default\"} %d", volumes); !strings.Contains(string(body), want) {
			b.Fatalf("/metrics lacks %q", want)
		}
	}
	time.Sleep(600 * time.Millisecond) // three probes
	return procMemory(b, cmd.Process.Pid)
}

// procMemory reads VmRSS, RssAnon and RssFile from /proc/PID/status, in MiB.
func procMemory(b *testing.B, pid int) map[string]float64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	out := map[string]float64{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok || (k != "VmRSS" && k != "RssAnon" && k != "RssFile") {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			b.Fatal(err)
		}
		out[k] = kb / 1024
	}
	if len(out) != 3 {
		b.Fatalf("memory figures missing in /proc/%d/status: %v", pid, out)
	}
	return out
}

func freeLoopbackAddr(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
