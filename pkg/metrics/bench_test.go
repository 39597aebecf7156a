package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// BenchmarkScrape1000Volumes measures one full /metrics scrape (gather and
// text encoding through promhttp) of a node with 1,000 volumes, per backend,
// with the pool health series registered as in the driver. Target: < 50 ms.
//
//	go test -run '^$' -bench Scrape1000 ./pkg/metrics/
func BenchmarkScrape1000Volumes(b *testing.B) {
	const volumes = 1000
	cases := []struct {
		fs      string
		backend node.BackendKind
		access  node.AccessType
	}{
		{"btrfs", node.BackendBtrfs, node.AccessMount},
		{"ext4", node.BackendLoop, node.AccessBlock},
		{"ext4", node.BackendDir, node.AccessMount},
	}
	for _, c := range cases {
		b.Run(string(c.backend), func(b *testing.B) {
			disk := testdisk.New(b, c.fs, 2<<30)
			m := newManager(b, node.PoolConfig{Name: "default", Path: disk.Dir, Backend: c.backend})
			start := time.Now()
			for i := range volumes {
				create(b, m, "default", fmt.Sprintf("pvc-%04d", i), mib, c.access)
			}
			b.Logf("created %d %s volumes in %s", volumes, c.backend, time.Since(start).Round(time.Millisecond))

			mon, err := health.NewMonitor(health.DefaultConfig())
			if err != nil {
				b.Fatal(err)
			}
			if err := mon.AddPool("default", filepath.Join(disk.Dir, node.HealthFile)); err != nil {
				b.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			if err := mon.Register(reg); err != nil {
				b.Fatal(err)
			}
			reg.MustRegister(NewCollector(m))
			srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
			defer srv.Close()

			var size int64
			for b.Loop() {
				resp, err := http.Get(srv.URL)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatalf("scrape: %d %v", resp.StatusCode, err)
				}
				size = n
			}
			b.ReportMetric(float64(size), "bytes/scrape")
		})
	}
}
