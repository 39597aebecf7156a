package benchio

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhpp-io/dhpp/internal/vmtest"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// The host kernel has no XFS or ext4 quota, so the project-quota backends
// are measured in the internal/vmtest VM (the stock Debian kernel under
// TCG): TestIOVM is the VM half of `make bench-io`, TestSmokeVM keeps it
// from rotting in `go test`.

var flagVM = flag.Bool("benchio.vm", false, "run TestIOVM: the xfs and ext4 project-quota backends in the vmtest VM (make bench-io)")

// vmRun is what the host tells the guest about the run (through the
// environment: the guest's test binary gets no flags).
type vmRun struct {
	Params    Params
	Rounds    int
	Workloads []string
	// Out is the host directory for the report, shared at the same path.
	Out string
}

const vmRunEnv = "DHPP_BENCHIO_VM"

// vmDisks are the sizes of the guest's /dev/vda (xfs, at least 300 MiB)
// and /dev/vdb (ext4) for a run with volumes of volSize. qemu opens them
// with cache=none: O_DIRECT on sparse files on the host's disk, and a
// guest flush is an fdatasync of the image.
func vmDisks(volSize int64) []int64 {
	size := max(2*volSize, 320<<20)
	return []int64{size, size}
}

// vmBench boots the VM (on the host; returns false there) or, in the
// guest, reads r from the host, runs its workloads and returns the report.
func vmBench(t *testing.T, r *vmRun, timeout time.Duration) (report, bool) {
	t.Helper()
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !vmtest.InVM() {
		requireFio(t) // the guest runs the host's fio
	}
	if !vmtest.Run(t, vmtest.Config{
		Disks: vmDisks(4 * r.Params.FileSize), MemoryMiB: 768, Timeout: timeout,
		Tools: []string{"fio"}, DiskCache: "none", OutDir: r.Out,
		Env: map[string]string{vmRunEnv: string(js)},
	}) {
		return report{}, false
	}
	if err := json.Unmarshal([]byte(os.Getenv(vmRunEnv)), r); err != nil {
		t.Fatalf("%s: %v", vmRunEnv, err)
	}
	var wls []Workload
	for _, n := range r.Workloads {
		w, ok := WorkloadByName(n)
		if !ok {
			t.Fatalf("no workload %q", n)
		}
		wls = append(wls, w)
	}
	bn := setupVM(t, 4*r.Params.FileSize)
	return run(t, bn, wls, r.Params, r.Rounds), true
}

// TestIOVM runs every workload on the plain directory and the project-quota
// volume of an xfs and an ext4 disk in the VM, paired rounds as on the
// host, and writes benchmarks-io-vm.{md,json,png} to -benchio.out. It is
// a benchmark: it runs only with -benchio.vm.
func TestIOVM(t *testing.T) {
	if !vmtest.InVM() && !*flagVM {
		t.Skip("the VM data-path benchmark runs with -benchio.vm (make bench-io)")
	}
	r := vmRun{
		Params: Params{FileSize: *flagVMSize, Runtime: *flagVMRuntime, Ramp: *flagRamp},
		Rounds: *flagRounds, Out: *flagOut,
	}
	for _, w := range Workloads {
		r.Workloads = append(r.Workloads, w.Name)
	}
	rep, inVM := vmBench(t, &r, 40*time.Minute)
	if !inVM {
		return
	}
	t.Logf("\n%s", rep.markdown)
	writeReport(t, r.Out, "benchmarks-io-vm", rep)
}

var (
	flagVMSize    = flag.Int64("benchio.vm.size", 64<<20, "data file size in bytes in the VM")
	flagVMRuntime = flag.Duration("benchio.vm.runtime", time.Second, "measured time of each time-based fio job in the VM")
)

// TestSmokeVM runs one short workload on both project-quota backends in
// the VM and checks that every figure is real (the VM half of TestSmoke).
func TestSmokeVM(t *testing.T) {
	if testing.Short() {
		t.Skip("needs root, qemu and fio")
	}
	r := vmRun{Params: Params{FileSize: 8 << 20, Runtime: 300 * time.Millisecond}, Rounds: 1, Workloads: []string{"rand-write-qd1"}}
	rep, inVM := vmBench(t, &r, 4*time.Minute)
	if !inVM {
		return
	}
	if len(rep.rows) != 3 {
		t.Fatalf("%d rows, want xfs and ext4 project quota and the dir control:\n%s", len(rep.rows), rep.markdown)
	}
	for _, r := range rep.rows {
		if r.Cand.IOPS <= 0 || r.Base.IOPS <= 0 || r.Cand.P50 <= 0 || r.IOPS <= 0 || r.P99 <= 0 {
			t.Errorf("%s: figures not measured: %+v", r.Target, r)
		}
	}
}

// Target names of the VM run.
const (
	vmXFSPlain  = "vm xfs plain dir"
	vmExt4Plain = "vm ext4 plain dir"
)

// setupVM makes, in the guest, an xfs on /dev/vda and an ext4 with the
// quota and project features on /dev/vdb, both mounted with prjquota, and
// on each a plain directory and a project-quota volume made through the
// Manager, both on the same disk; on the xfs also a dir-backend volume,
// the control.
func setupVM(tb testing.TB, volSize int64) *bench {
	tb.Helper()
	b := newBench(tb)
	for _, d := range []struct {
		dev, fs, plain string
		kind           node.BackendKind
		mkfs           []string
	}{
		{"/dev/vda", "xfs", vmXFSPlain, node.BackendXFS, []string{"mkfs.xfs", "-q", "-f"}},
		{"/dev/vdb", "ext4", vmExt4Plain, node.BackendExt4, []string{"mkfs.ext4", "-q", "-F", "-O", "quota,project"}},
	} {
		if out, err := exec.Command(d.mkfs[0], append(d.mkfs[1:], d.dev)...).CombinedOutput(); err != nil {
			tb.Fatalf("%s %s: %v: %s", d.mkfs[0], d.dev, err, out)
		}
		mnt, err := os.MkdirTemp("/mnt", d.fs)
		if err != nil {
			tb.Fatal(err)
		}
		if err := unix.Mount(d.dev, mnt, d.fs, 0, "prjquota"); err != nil {
			tb.Fatalf("mount %s at %s: %v", d.dev, mnt, err)
		}
		tb.Cleanup(func() {
			if err := unix.Unmount(mnt, 0); err != nil {
				tb.Errorf("unmount %s: %v", mnt, err)
			}
		})
		b.notes = append(b.notes, fmt.Sprintf("%s: %s on the VM's virtio disk %s (qemu cache=none on a sparse file on the host's disk), mounted prjquota", d.plain, d.fs, strings.TrimPrefix(d.dev, "/dev/")))
		b.add(Spec{Name: d.plain}, Target{Path: mkdir(tb, mnt, "plain")})
		m := manager(tb, mnt, d.kind, node.BackendDir)
		b.add(Spec{Name: "vm " + d.fs + " project quota", Baseline: d.plain, Tolerance: TolQuota},
			b.volume(tb, m, d.fs+"-projquota", node.CreateRequest{Pool: string(d.kind), RequiredBytes: volSize}))
		if d.fs == "xfs" {
			// The control, as on the host: the dir backend's path is
			// the plain directory's, so its ratios are the VM's noise.
			b.add(Spec{Name: "vm dir (control)", Baseline: d.plain, Tolerance: TolQuota, Control: true},
				b.volume(tb, m, "dir", node.CreateRequest{Pool: string(node.BackendDir), RequiredBytes: volSize}))
		}
	}
	return b
}
