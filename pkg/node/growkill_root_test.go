package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

// TestOfflineGrowKillLoop proves that the offline grow of an ext4 loop
// volume (e2fsck -p, then resize2fs, at the NodeStage after an expansion
// while unstaged) survives SIGKILL at any moment. Each round makes a volume
// with known data, expands it while unstaged, then starts stages whose
// e2fsck or resize2fs gets a real SIGKILL after a random delay, until one
// stage gets through. Some kills also tear the primary superblock: the tool
// is stopped, the superblock's checksum corrupted on the device (what a
// kill between the few writes that rewrite it leaves) and the tool killed;
// the next stage must repair it from a backup superblock. A last stage
// without kills must succeed and leave the full new size, an
// `e2fsck -fn`-clean filesystem and the data intact.
//
// DHPP_GROW_KILL_ROUNDS sets the number of rounds (default 8, about a second
// each); DHPP_GROW_KILL_SEED replays a run.
func TestOfflineGrowKillLoop(t *testing.T) {
	testdisk.RequireRoot(t)
	rounds := envInt(t, "DHPP_GROW_KILL_ROUNDS", 8)
	seed := uint64(envInt(t, "DHPP_GROW_KILL_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("%d rounds, DHPP_GROW_KILL_SEED=%d", rounds, seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	forceOfflineGrow(t)
	var fromBackup atomic.Int32
	fsRepairedFromBackup = func(string) { fromBackup.Add(1) }
	t.Cleanup(func() { fsRepairedFromBackup = nil })
	m := openManager(t, newPoolOnDisk(t, "ext4", 8<<30), BackendLoop, &fakeClock{t: time.Now()})
	defer m.Close()

	kills := map[string]int{}
	interrupted := 0 // stages that left the grow record behind
	for round := range rounds {
		k, i := growKillRound(t, m, rng, fmt.Sprintf("grow-%02d", round), firstVictims[round%len(firstVictims)])
		for tool, n := range k {
			kills[tool] += n
		}
		interrupted += i
	}
	t.Logf("SIGKILLs: %v; %d killed stages left an interrupted grow that the next stage repaired, %d repairs from a backup superblock", kills, interrupted, fromBackup.Load())
	// The loop must have done what it claims, or it proves nothing.
	preen, resize := kills["e2fsck -p"]+kills["tear e2fsck -p"], kills["resize2fs"]+kills["tear resize2fs"]
	if rounds >= len(firstVictims) && (preen == 0 || resize == 0 || kills["torn superblocks"] == 0 || interrupted == 0 || fromBackup.Load() == 0) {
		t.Fatalf("kills %v, interrupted %d, %d repairs from a backup superblock: the delays miss the tools", kills, interrupted, fromBackup.Load())
	}
}

// firstVictims is what the first stage of each round disrupts, in turn, so
// that a default run covers each: the preen pass exists only in a stage
// that finds no grow record. Later stages of a round pick from
// laterVictims, the repair pass included.
var (
	firstVictims = []string{"e2fsck -p", "tear e2fsck -p", "resize2fs", "tear resize2fs"}
	laterVictims = []string{"resize2fs", "tear resize2fs", "e2fsck -y"}
)

// growKillRound runs one volume through an expansion and killed stages; it
// returns the kills by victim and how many stages left the grow record.
func growKillRound(t *testing.T, m *Manager, rng *rand.Rand, name, first string) (map[string]int, int) {
	t.Helper()
	ctx := context.Background()
	v, err := m.CreateVolume(ctx, CreateRequest{Name: name, RequiredBytes: 64 * mib, FsType: "ext4", Mode: 0o777})
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(t.TempDir(), "staging")
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatal(err)
	}
	sums := writeKnownFiles(t, staging, rng)
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatal(err)
	}
	newSize := (256 + rng.Int64N(1792)) * mib
	if _, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: newSize}); err != nil {
		t.Fatal(err)
	}
	dir := volumeDir{st: m.Pools()[0].st, rel: "volumes/" + v.Name}
	b := &loopBackend{st: dir.st}

	kills := map[string]int{}
	interrupted := 0
	misses := 0 // times the first victim finished before its kill
	for attempt := 0; attempt < 8; attempt++ {
		victim := first
		if attempt > 0 {
			victim = laterVictims[rng.IntN(len(laterVictims))]
		}
		// Here resize2fs runs for about 70 ms on these sizes and e2fsck
		// for about 25 (preen, before the grow) to 50: most delays land
		// inside the tool, some after it.
		tool, tear := strings.CutPrefix(victim, "tear ")
		limit := 60 * time.Millisecond
		if strings.HasPrefix(tool, "e2fsck") {
			limit = 12 * time.Millisecond
		}
		if attempt == 0 {
			limit >>= misses // a faster machine: aim earlier
		}
		delay := time.Duration(rng.Int64N(int64(limit) + 1))
		// done closes once the disruption ran: a stage fails with the kill
		// before the timer's function has recorded it.
		var hit atomic.Bool
		var tears atomic.Int32
		done := make(chan struct{})
		fsToolStarted = func(name string, args []string, p *os.Process) {
			if key := name; name == "e2fsck" && key+" "+args[1] != tool || name != "e2fsck" && key != tool {
				return
			}
			time.AfterFunc(delay, func() {
				defer close(done)
				if !tear {
					hit.Store(p.Kill() == nil)
					return
				}
				killed, torn := tearSuperblock(t, p, args[len(args)-1])
				hit.Store(killed)
				if torn {
					tears.Add(1)
				}
			})
		}
		err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType})
		fsToolStarted = nil
		if err == nil && attempt == 0 && misses < 6 {
			// The tool finished before its kill (the tools run faster on
			// a quiet machine): grow once more while unstaged and aim
			// earlier, so that every round disrupts its first victim.
			misses++
			if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
				t.Fatal(err)
			}
			newSize += 64 * mib
			if _, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: newSize}); err != nil {
				t.Fatal(err)
			}
			attempt = -1
			continue
		}
		if err == nil {
			break // the tools finished before the kill: the grow is done
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		if !strings.Contains(err.Error(), "signal: killed") || !hit.Load() {
			t.Fatalf("stage with %s disrupted after %v: %v; want the kill, nothing else", victim, delay, err)
		}
		kills[victim]++
		kills["torn superblocks"] += int(tears.Load())
		intent, err := b.hasGrowIntent(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !intent {
			// Every tool a stage runs may write to the device: killed, it
			// must leave the record that makes the next stage repair.
			t.Fatalf("stage with %s killed after %v left no grow record", victim, delay)
		}
		interrupted++
	}
	// Stage for real (a no-op if the last attempt got through).
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("stage after the kills: %v", err)
	}
	checkKnownFiles(t, staging, sums)
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatal(err)
	}
	if intent, err := b.hasGrowIntent(dir); err != nil || intent {
		t.Fatalf("grow record still there after a successful stage (%v)", err)
	}
	img := dir.abs(imageName)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	fsBytes, err := filesystemBytes(f, "ext4")
	f.Close()
	if err != nil || fsBytes != newSize {
		t.Fatalf("ext4 is %d bytes (%v) after the grow, want %d", fsBytes, err, newSize)
	}
	if out, err := exec.Command("e2fsck", "-f", "-n", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s after the grow: %v\n%s", img, err, out)
	}
	if err := m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: 64 MiB → %d MiB, kills %v, %d interrupted grows repaired", name, newSize/mib, kills, interrupted)
	return kills, interrupted
}

// tearSuperblock stops a filesystem tool, corrupts the checksum of the
// primary ext4 superblock on dev as a kill between the tool's writes of it
// leaves it, and kills the tool. It tears nothing if the tool had exited
// already (its work is complete: a stage that goes on to mount must find a
// sound filesystem), and only kills it if it does not stop in time.
func tearSuperblock(t *testing.T, p *os.Process, dev string) (killed, torn bool) {
	if p.Signal(syscall.SIGSTOP) != nil {
		return false, false
	}
	switch waitStopped(p.Pid) {
	case 'Z':
		return false, false
	case 'R':
		return p.Kill() == nil, false // a stop that comes later is ended too
	}
	defer func() { _ = p.Kill() }()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Error(err)
		return true, false
	}
	defer f.Close()
	const csumAt = 1024 + 1020 // s_checksum, the superblock's last 4 bytes
	sum := make([]byte, 4)
	if _, err := f.ReadAt(sum, csumAt); err != nil {
		t.Error(err)
		return true, false
	}
	for i := range sum {
		sum[i] ^= 0xff
	}
	if _, err := f.WriteAt(sum, csumAt); err != nil {
		t.Error(err)
		return true, false
	}
	if err := f.Sync(); err != nil {
		t.Error(err)
		return true, false
	}
	return true, true
}

// waitStopped waits until the process is stopped by SIGSTOP (which waits
// for an I/O in progress): 'T' once stopped, 'Z' if it had finished, 'R'
// if it is still not stopped after a second.
func waitStopped(pid int) byte {
	for range 1000 {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 'Z'
		}
		_, rest, _ := strings.Cut(string(stat), ") ")
		switch {
		case strings.HasPrefix(rest, "T"):
			return 'T'
		case strings.HasPrefix(rest, "Z"), strings.HasPrefix(rest, "X"):
			return 'Z'
		}
		time.Sleep(time.Millisecond)
	}
	return 'R'
}

// forceOfflineGrow makes ext4 loop volumes grow offline for the test, as
// they do in a driver without CAP_SYS_RESOURCE.
func forceOfflineGrow(t *testing.T) {
	saved := growsOnline
	growsOnline = func() bool { return false }
	t.Cleanup(func() { growsOnline = saved })
}

// writeKnownFiles writes a few files of random data, spread over the
// filesystem, syncs them and returns their checksums.
func writeKnownFiles(t *testing.T, dir string, rng *rand.Rand) map[string][32]byte {
	t.Helper()
	sums := map[string][32]byte{}
	for i := range 4 {
		data := make([]byte, (1+rng.IntN(6))*mib)
		for j := 0; j+8 <= len(data); j += 8 {
			v := rng.Uint64()
			for k := range 8 {
				data[j+k] = byte(v >> (8 * k))
			}
		}
		name := filepath.Join(dir, fmt.Sprintf("d%d", i), "file")
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[name] = sha256.Sum256(data)
	}
	syncFS(t, dir)
	return sums
}

func checkKnownFiles(t *testing.T, dir string, sums map[string][32]byte) {
	t.Helper()
	for name, want := range sums {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("after the grow: %v", err)
		}
		if got := sha256.Sum256(data); !bytes.Equal(got[:], want[:]) {
			t.Fatalf("after the grow: %s changed", name)
		}
	}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative integer", name, s)
	}
	return n
}

// TestRestageWhileGrowWaits: an ext4 loop volume expanded while staged, by
// a driver that cannot grow it mounted, stays usable. NodeExpandVolume says
// why it cannot grow now; repeating NodeStage (a second pod, a kubelet
// retry) succeeds with the filesystem as it is; the stage after an unstage
// grows it offline.
func TestRestageWhileGrowWaits(t *testing.T) {
	testdisk.RequireRoot(t)
	forceOfflineGrow(t)
	ctx := context.Background()
	m := openManager(t, newPoolOnDisk(t, "ext4", 2<<30), BackendLoop, &fakeClock{t: time.Now()})
	defer m.Close()
	v, err := m.CreateVolume(ctx, CreateRequest{Name: "restage", RequiredBytes: 64 * mib, FsType: "ext4", Mode: 0o777})
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(t.TempDir(), "staging")
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = m.UnstageVolume(ctx, v.ID, staging) }() // before m.Close
	sums := writeKnownFiles(t, staging, rand.New(rand.NewPCG(1, 2)))
	dir := volumeDir{st: m.Pools()[0].st, rel: "volumes/" + v.Name}
	fsSize := func() int64 {
		t.Helper()
		f, err := os.Open(dir.abs(imageName))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		n, err := filesystemBytes(f, "ext4")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	_, err = m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: 256 * mib})
	if !errors.Is(err, errNoOnlineGrow) || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") {
		t.Fatalf("ExpandVolume while staged without online growth: %v; want it to say why and when it grows", err)
	}
	for range 2 {
		if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
			t.Fatalf("repeated StageVolume while the grow waits: %v", err)
		}
	}
	if n := fsSize(); n != 64*mib {
		t.Fatalf("ext4 is %d bytes while staged, want 64 MiB until the offline grow", n)
	}
	checkKnownFiles(t, staging, sums)
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatal(err)
	}
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("stage after the unstage: %v", err)
	}
	if n := fsSize(); n != 256*mib {
		t.Fatalf("ext4 is %d bytes after unstage and stage, want 256 MiB", n)
	}
	checkKnownFiles(t, staging, sums)
}
