package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/internal/vmtest"
	utilexec "k8s.io/utils/exec"
)

// overcommitCases are the backends whose admission is checked on a real
// disk of this host. The loop case uses Block volumes: admission is the
// same for both access types, and skipping 200 mkfs runs keeps it fast.
// The project-quota backends run the same checks in the VM
// (TestOvercommitProjQuotaVM).
var overcommitCases = []struct {
	fs     string
	kind   BackendKind
	access AccessType
}{
	{"btrfs", BackendBtrfs, AccessMount},
	{"ext4", BackendLoop, AccessBlock},
	{"xfs", BackendLoop, AccessMount},
	{"ext4", BackendDir, AccessMount},
}

// TestConcurrentCreateOvercommit fires 200 CreateVolume calls at once on a
// 2 GiB pool where only about three quarters of them fit. Each call checks
// and reserves capacity atomically, so exactly the ones that fit succeed,
// the others get ErrNoSpace, and the pool's figures match its volumes.
// (Before reservations all 200 succeeded: each saw the same free space.)
func TestConcurrentCreateOvercommit(t *testing.T) {
	testdisk.RequireRoot(t)
	for _, tc := range overcommitCases {
		t.Run(tc.fs+"/"+string(tc.kind), func(t *testing.T) {
			m := openManager(t, newPoolOnDisk(t, tc.fs, 2<<30), tc.kind, &fakeClock{t: time.Now()})
			defer m.Close()
			checkConcurrentCreates(t, m, 200, tc.access)
			checkCapacityMatchesVolumes(t, m)
		})
	}
}

// TestConcurrentExpandOvercommit grows volumes concurrently by more than
// the pool can give all of them: the expansions that fit succeed, the rest
// get ErrNoSpace and keep their old size.
func TestConcurrentExpandOvercommit(t *testing.T) {
	testdisk.RequireRoot(t)
	for _, tc := range overcommitCases {
		t.Run(tc.fs+"/"+string(tc.kind), func(t *testing.T) {
			m := openManager(t, newPoolOnDisk(t, tc.fs, 2<<30), tc.kind, &fakeClock{t: time.Now()})
			defer m.Close()
			checkConcurrentExpands(t, m, 12, tc.access)
			checkCapacityMatchesVolumes(t, m)
		})
	}
}

// TestOvercommitProjQuotaVM runs the concurrent create and expand checks
// on the xfs and ext4 project-quota backends, in the VM: this host's kernel
// has neither XFS nor ext4 quota. The disks are small (TCG is slow), so
// the bursts are too.
func TestOvercommitProjQuotaVM(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: projQuotaDisks}) {
		return
	}
	checks := []struct {
		name  string
		check func(*testing.T, *Manager)
	}{
		{"create", func(t *testing.T, m *Manager) { checkConcurrentCreates(t, m, 60, AccessMount) }},
		{"expand", func(t *testing.T, m *Manager) { checkConcurrentExpands(t, m, 12, AccessMount) }},
	}
	for _, c := range projQuotaCases {
		for _, ck := range checks {
			t.Run(string(c.kind)+"/"+ck.name, func(t *testing.T) {
				vmMkfs(t, c.dev, c.mkfs)
				poolPath := filepath.Join(vmMount(t, c.dev, string(c.kind), "prjquota"), "dhpp")
				if err := os.Mkdir(poolPath, 0o755); err != nil {
					t.Fatal(err)
				}
				m := openManager(t, poolPath, c.kind, &fakeClock{t: time.Now()})
				defer m.Close()
				ck.check(t, m)
				checkCapacityMatchesVolumes(t, m)
			})
		}
	}
}

// startTogether runs fn(i) for i in [0, n) in n goroutines released at
// once, and waits for them.
func startTogether(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(i)
		}()
	}
	close(start)
	wg.Wait()
}

// checkConcurrentCreates creates n volumes concurrently, sized so that
// about three quarters of them fit into what the pool has available.
func checkConcurrentCreates(t *testing.T, m *Manager, n int, access AccessType) {
	t.Helper()
	p := m.Pools()[0]
	before := mustCapacity(t, p)
	// At least the backend's minimum (16 MiB for an ext4 loop volume), so
	// no size is raised behind the test's back.
	size := max(roundUp(before.Available/int64(n*3/4), mib), minSizeOf(p, access))
	fit := int(before.Available / size) // what one-at-a-time admission would allow at most
	errs := make([]error, n)
	began := time.Now()
	startTogether(n, func(i int) {
		_, errs[i] = m.CreateVolume(context.Background(), CreateRequest{
			Name: fmt.Sprintf("burst-%03d", i), RequiredBytes: size, AccessType: access, Mode: 0o777,
		})
	})
	ok := countOutcomes(t, errs)
	after := mustCapacity(t, p)
	t.Logf("%d concurrent creates of %d MiB on %d MiB available: %d OK, %d ErrNoSpace (%d fit one at a time at most), %v; free on disk %d → %d MiB",
		n, size/mib, before.Available/mib, ok, n-ok, fit, time.Since(began).Round(time.Millisecond), before.Free/mib, after.Free/mib)
	if ok > fit || int64(ok)*size > before.Available {
		t.Fatalf("over-commit: %d volumes of %d bytes admitted (%d bytes), only %d fit into the %d bytes available",
			ok, size, int64(ok)*size, fit, before.Available)
	}
	// Admission must not be stricter than the space it protects. Metadata
	// written by the burst (mkfs, subvolumes) lowers free space as it goes,
	// so a few fewer than the ideal count may fit.
	if ok < fit*9/10 {
		t.Fatalf("only %d of the %d volumes that fit were admitted", ok, fit)
	}
	if got := len(m.ListVolumes()); got != ok {
		t.Fatalf("%d volumes listed after %d successful creates", got, ok)
	}
}

// checkConcurrentExpands creates n small volumes, then grows all of them
// at once by an amount of which only about a third fits.
func checkConcurrentExpands(t *testing.T, m *Manager, n int, access AccessType) {
	t.Helper()
	ctx := context.Background()
	p := m.Pools()[0]
	small := max(roundUp(mustCapacity(t, p).Available/int64(4*n), mib), minSizeOf(p, access))
	ids := make([]string, n)
	for i := range ids {
		v, err := m.CreateVolume(ctx, CreateRequest{Name: fmt.Sprintf("grow-%02d", i), RequiredBytes: small, AccessType: access, Mode: 0o777})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = v.ID
	}
	before := mustCapacity(t, p)
	extra := roundUp(before.Available/int64(n/3), mib)
	fit := int(before.Available / extra)
	errs := make([]error, n)
	startTogether(n, func(i int) {
		_, errs[i] = m.ExpandVolume(ctx, ExpandRequest{VolumeID: ids[i], RequiredBytes: small + extra})
	})
	ok := countOutcomes(t, errs)
	t.Logf("%d concurrent expands by %d MiB on %d MiB available: %d OK, %d ErrNoSpace (%d fit)", n, extra/mib, before.Available/mib, ok, n-ok, fit)
	if ok > fit || int64(ok)*extra > before.Available {
		t.Fatalf("over-commit: %d expansions of %d bytes admitted, only %d fit into the %d bytes available", ok, extra, fit, before.Available)
	}
	if ok == 0 {
		t.Fatalf("no expansion admitted, %d fit", fit)
	}
	for i, id := range ids {
		v, err := m.GetVolume(id)
		if err != nil {
			t.Fatal(err)
		}
		want := small
		if errs[i] == nil {
			want = small + extra
		}
		if v.CapacityBytes != want || v.Phase != PhaseReady || v.TargetBytes != 0 {
			t.Errorf("volume %s after its expand (%v): %d bytes, phase %s, target %d; want %d, Ready", id, errs[i], v.CapacityBytes, v.Phase, v.TargetBytes, want)
		}
	}
}

// minSizeOf is the smallest volume the pool's backend makes (for a loop
// Filesystem volume: its default filesystem's minimum).
func minSizeOf(p *Pool, access AccessType) int64 {
	if p.Backend() == BackendLoop && access == AccessMount {
		return loopFsTypes[defaultLoopFsType].minSize
	}
	_, minSize, _ := p.backend.Resolve(access, "")
	return minSize
}

// countOutcomes returns how many calls succeeded and fails on any error
// other than ErrNoSpace.
func countOutcomes(t *testing.T, errs []error) int {
	t.Helper()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrNoSpace):
			t.Errorf("unexpected error: %v (want success or ErrNoSpace)", err)
		}
	}
	return ok
}

func mustCapacity(t *testing.T, p *Pool) Capacity {
	t.Helper()
	c, err := p.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkCapacityMatchesVolumes checks, once every request has returned,
// that the pool's figures are those of the volumes on its disk: nothing
// is left reserved, the provisioned bytes are the sum of the records'
// sizes (as a restart would rebuild them), the cached promised bytes never
// undercount a fresh recount, and nothing is left in .dhpp/tmp.
func checkCapacityMatchesVolumes(t *testing.T, m *Manager) {
	t.Helper()
	p := m.Pools()[0]
	names, err := p.readDirNames(dirVolumes)
	if err != nil {
		t.Fatal(err)
	}
	var onDisk int64
	vols, quarantined := readRecords(p.root, p.env.nodeID, p.Name, p.Path, names)
	if len(quarantined) != 0 {
		t.Fatalf("records left untrustworthy: %+v", quarantined)
	}
	for _, v := range vols {
		onDisk += v.ReservedBytes()
	}
	var listed int64
	for _, v := range m.ListVolumes() {
		listed += v.ReservedBytes()
	}
	c := mustCapacity(t, p)
	if c.Reserved != 0 || c.Provisioned != onDisk || listed != onDisk || len(names) != len(m.ListVolumes()) {
		t.Fatalf("capacity %+v, %d bytes listed in %d volumes; the disk holds %d volumes of %d bytes and nothing should be reserved",
			c, listed, len(m.ListVolumes()), len(names), onDisk)
	}
	if tmp, err := p.readDirNames(dirTmp); err != nil || len(tmp) != 0 {
		t.Fatalf(".dhpp/tmp holds %v (%v); every create has finished", tmp, err)
	}
	p.mu.Lock()
	p.promisedAt = time.Time{} // force a recount
	p.mu.Unlock()
	if fresh := mustCapacity(t, p); fresh.Promised > c.Promised || fresh.Provisioned != c.Provisioned {
		t.Fatalf("cached capacity %+v undercounts a recount %+v", c, fresh)
	}
}

// gatedExec holds every mkfs until the test lets it go (nil: run it;
// an error: fail with it), so a create can be observed in flight.
type gatedExec struct {
	utilexec.Interface
	entered chan string
	proceed chan error
}

func (g gatedExec) CommandContext(ctx context.Context, name string, args ...string) utilexec.Cmd {
	c := g.Interface.CommandContext(ctx, name, args...)
	if strings.HasPrefix(name, "mkfs") {
		return gatedCmd{Cmd: c, g: g}
	}
	return c
}

type gatedCmd struct {
	utilexec.Cmd
	g gatedExec
}

func (c gatedCmd) CombinedOutput() ([]byte, error) {
	c.g.entered <- "mkfs"
	if err := <-c.g.proceed; err != nil {
		return nil, err
	}
	return c.Cmd.CombinedOutput()
}

// TestReservationInFlight watches a create while its mkfs runs: the
// reservation already counts in Capacity (so GetCapacity and a concurrent
// create see it), a failed create gives it back, and a finished one turns
// it into the volume's provisioned bytes.
func TestReservationInFlight(t *testing.T) {
	testdisk.RequireRoot(t)
	g := gatedExec{Interface: utilexec.New(), entered: make(chan string), proceed: make(chan error)}
	m, err := New(Config{NodeID: "node-a", Exec: g,
		Pools: []PoolConfig{{Name: "default", Path: newPoolOnDisk(t, "ext4", 4<<30), Backend: BackendLoop}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	p := m.Pools()[0]
	empty := mustCapacity(t, p)
	const size = 1 << 30

	for _, outcome := range []error{errors.New("mkfs failed on purpose"), nil} {
		done := make(chan error)
		go func() {
			_, err := m.CreateVolume(ctx, CreateRequest{Name: "in-flight", RequiredBytes: size})
			done <- err
		}()
		<-g.entered
		c := mustCapacity(t, p)
		if c.Reserved != size || c.Provisioned != size || c.Promised != size || c.Available > c.Free-size {
			t.Fatalf("capacity during the create %+v: want %d bytes reserved, provisioned and promised", c, size)
		}
		// This fits into the free space, but not next to the reservation.
		blk := roundUp(c.Available+size/2, mib)
		if _, err := m.CreateVolume(ctx, CreateRequest{Name: "beside", RequiredBytes: blk, AccessType: AccessBlock}); !errors.Is(err, ErrNoSpace) ||
			!strings.Contains(err.Error(), fmt.Sprintf("%d of them held by requests in flight", size)) {
			t.Fatalf("create of %d bytes beside a %d-byte reservation (free %d): %v, want ErrNoSpace naming the reservation", blk, size, c.Free, err)
		}
		g.proceed <- outcome
		err := <-done
		c = mustCapacity(t, p)
		switch {
		case outcome != nil && (!errors.Is(err, outcome) || c.Reserved != 0 || c.Provisioned != empty.Provisioned || len(m.ListVolumes()) != 0):
			t.Fatalf("failed create: %v, capacity %+v; want the error and the reservation released", err, c)
		case outcome == nil && (err != nil || c.Reserved != 0 || c.Provisioned != size || len(m.ListVolumes()) != 1):
			t.Fatalf("finished create: %v, capacity %+v; want the reservation converted into one %d-byte volume", err, c, size)
		}
	}
	checkCapacityMatchesVolumes(t, m)
}
