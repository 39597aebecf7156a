package health

import (
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

// BenchmarkProbe measures one probe (1 MiB O_DIRECT|O_DSYNC write, 1 MiB
// O_DIRECT read, compare) on a loop disk per filesystem. Besides ns/op it
// reports the process CPU time per probe (user+sys, from getrusage) and
// the bytes written and read, so the cost of one pool per minute at the
// default 5 s period is 12× these figures.
func BenchmarkProbe(b *testing.B) {
	for _, fstype := range []string{"ext4", "xfs", "btrfs"} {
		b.Run(fstype, func(b *testing.B) {
			d := testdisk.New(b, fstype, testdisk.MinSize[fstype]+64<<20)
			for _, buffered := range []bool{false, true} {
				name := "direct"
				if buffered {
					name = "fdatasync"
				}
				b.Run(name, func(b *testing.B) {
					p, err := newFileProber(filepath.Join(d.Dir, name, ".dhpp", "health"), DefaultConfig().ProbeBytes)
					if err != nil {
						b.Fatal(err)
					}
					p.forceBuffered = buffered
					if err := unix.Mkdir(filepath.Join(d.Dir, name), 0o755); err != nil {
						b.Fatal(err)
					}
					if err := p.probe(); err != nil { // prepare outside the timing
						b.Fatal(err)
					}
					cpu0 := cpuTime(b)
					b.ResetTimer()
					for b.Loop() {
						if err := p.probe(); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					n := float64(b.N)
					b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/n, "cpu-ns/op")
					b.ReportMetric(float64(p.size), "written-B/op")
					b.ReportMetric(float64(p.size), "read-B/op")
				})
			}
		})
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
