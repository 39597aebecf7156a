package crash

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

// The CI run is bounded to a few minutes; -crash.kills (or DHPP_CRASH_KILLS)
// runs longer, e.g. `go test ./test/crash/ -crash.kills=1000 -timeout 3h`.
var (
	flagKills    = flag.Int("crash.kills", envInt("DHPP_CRASH_KILLS", 100), "how many times the driver is SIGKILLed (env DHPP_CRASH_KILLS)")
	flagWorkers  = flag.Int("crash.workers", 4, "concurrent CSI clients")
	flagSeed     = flag.Uint64("crash.seed", 0, "random seed (0: from the clock; the seed is logged)")
	flagMaxDelay = flag.Duration("crash.max-delay", 1500*time.Millisecond, "longest time the driver runs before a kill")
	// Raw block volumes on every pool (images on a loop device on the
	// btrfs pool); -crash.block=false leaves them out to tell a block
	// problem from another.
	flagBlock = flag.Bool("crash.block", true, "also make raw block volumes, on every pool")
)

// slowRestart is a restart-to-ready time worth a look in the log.
const slowRestart = 500 * time.Millisecond

// minDelay is the shortest run before a kill: kills right after start-up
// hit recovery racing the first calls.
const minDelay = 10 * time.Millisecond

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

const nodeID = "crash-node"

// TestKillLoop runs the driver as a subprocess on a btrfs pool and a loop
// pool on ext4, drives it with concurrent workers, SIGKILLs it at random
// moments and checks the invariants after every restart (check_test.go).
func TestKillLoop(t *testing.T) {
	testdisk.RequireRoot(t)
	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -crash.seed=%d)", seed, seed)

	// Disks first: their cleanup runs last, after the mounts on them are gone.
	btrfs := testdisk.New(t, "btrfs", 2<<30)
	ext4 := testdisk.New(t, "ext4", 2<<30)
	work := t.TempDir()
	pools := []pool{
		{name: "bt", path: filepath.Join(btrfs.Dir, "dhpp"), backend: "btrfs"},
		{name: "lo", path: filepath.Join(ext4.Dir, "dhpp"), backend: "loop"},
	}
	var flags []string
	for _, p := range pools {
		if err := os.Mkdir(p.path, 0o755); err != nil {
			t.Fatal(err)
		}
		flags = append(flags, p.name+"="+p.path+",backend="+p.backend)
	}
	online, err := hasCapSysResource()
	if err != nil {
		t.Fatal(err)
	}
	if !online {
		t.Log("no CAP_SYS_RESOURCE here: ext4 loop volumes cannot grow while mounted; their filesystem grows at the next stage")
	}
	bin := buildDriver(t, work)
	h := &harness{
		t: t, nodeID: nodeID, pools: pools, volsDir: filepath.Join(work, "vols"), onlineLoopGrow: online,
		gate: newGate(), stats: newStats(), aim: newAim(), begin: time.Now(),
		d: newDriverProc(t, bin, work, nodeID, flags),
	}
	// Cleanup nets, in reverse order of running: kill whatever driver still
	// runs, then unmount what is left on the kubelet's side.
	t.Cleanup(func() {
		um, errs := unmountAllBelow(h.volsDir)
		for _, mp := range um {
			t.Logf("cleanup: unmounted %s left by the test", mp)
		}
		for _, err := range errs {
			t.Errorf("cleanup: %v", err)
		}
	})
	t.Cleanup(h.d.abandon)

	took, err := h.d.start()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("driver ready in %s", took)

	rng := rand.New(rand.NewPCG(seed, 0))
	var wg sync.WaitGroup
	for i := range *flagWorkers {
		w := &worker{h: h, id: i, rng: rand.New(rand.NewPCG(seed, uint64(i+1)))}
		wg.Add(1)
		go func() { defer wg.Done(); w.run() }()
	}
	h.killLoop(rng, *flagKills)
	h.gate.finish()
	wg.Wait()

	if inc := h.d.current(); inc.running() {
		h.checking = true // the final release is counted with the checks
		h.releaseAll()
		if err := h.d.stop(inc); err != nil {
			t.Error(err)
		}
	}
	t.Log(h.stats.summary(int(h.kills.Load()), h.aim.hitCounts(), time.Since(h.begin)))
	t.Log(h.volumeCounts())
}

// killLoop kills and restarts the driver n times, at random moments or
// aimed into a kind of call, and checks the invariants after each restart
// with the workers paused.
func (h *harness) killLoop(rng *rand.Rand, n int) {
	for range n {
		if h.tooManyErrors() {
			h.t.Errorf("stopping after %d problems", h.errs.Load())
			return
		}
		inc := h.d.current()
		if rng.IntN(2) == 0 {
			// Aimed (target_test.go); if no such call starts in time,
			// the kill happens anyway, at that random moment.
			h.aim.wait(rng, pickKind(rng), 2*(*flagMaxDelay))
		} else {
			select {
			case <-time.After(killDelay(rng)):
			case <-inc.exited:
			}
		}
		// No step starts after the kill; those under way meet it, and
		// each ends with its call cut off (uncertain) or answered.
		h.gate.close()
		lingered, err := h.d.kill(inc)
		if err != nil {
			h.failf("%v", err)
			return
		}
		h.stats.lingered(lingered)
		h.kills.Add(1)
		h.gate.drain()
		inc.conn.Close()
		took, err := h.d.start()
		if err != nil {
			h.t.Fatalf("restart #%d: %v", h.kills.Load(), err)
		}
		h.stats.mu.Lock()
		h.stats.restarts = append(h.stats.restarts, took)
		h.stats.mu.Unlock()
		if took > slowRestart {
			inc := h.d.current()
			h.t.Logf("restart #%d took %s to be ready (exec at %s, socket accepting after %s, ready after %d Probe calls); its log so far:\n%s",
				h.kills.Load(), took.Round(time.Millisecond), inc.started.Format("15:04:05.000000"), inc.listening.Round(time.Millisecond), inc.probes, tail(inc.log, 20))
		}
		h.checkAfterRestart()
		h.gate.open()
	}
}

// killDelay is log-uniform between minDelay and -crash.max-delay: as many
// kills in the first tens of milliseconds after a start as in the last
// second.
func killDelay(rng *rand.Rand) time.Duration {
	lo, hi := math.Log(float64(minDelay)), math.Log(float64(*flagMaxDelay))
	return time.Duration(math.Exp(lo + rng.Float64()*(hi-lo)))
}

// releaseAll unpublishes and unstages every volume through the driver, as
// the kubelet does when the pods go, and then checks that nothing of the
// volumes is left mounted or attached.
func (h *harness) releaseAll() {
	for _, v := range h.allVols() {
		if !v.live() || v.broken {
			continue
		}
		if v.pub == yes {
			if o, err := h.unpublish(v); o != ok {
				h.fail(v, "final NodeUnpublishVolume: %v", err)
				continue
			}
			v.pub = no
		}
		if v.staged == yes {
			if o, err := h.unstage(v); o != ok {
				h.fail(v, "final NodeUnstageVolume: %v", err)
				continue
			}
			v.staged = no
		}
	}
	h.checkLoopDevices()
	h.checkMounts()
}

// volumeCounts says how many volumes of each kind the run asked for.
func (h *harness) volumeCounts() string {
	n := map[string]int{}
	for _, v := range h.allVols() {
		switch {
		case v.block && h.poolBackend(v) == "loop":
			n["loop block"]++
		case v.block:
			n["btrfs-pool block image"]++
		case h.isLoop(v):
			n["loop ext4"]++
		default:
			n["btrfs"]++
		}
	}
	return fmt.Sprintf("volumes asked for: %d btrfs, %d loop ext4, %d loop block, %d block images on the btrfs pool",
		n["btrfs"], n["loop ext4"], n["loop block"], n["btrfs-pool block image"])
}
