package node

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node/loopdev"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

// fakeClock lets tests age the trash without sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newPoolOnDisk makes a real filesystem and a pool directory on it.
func newPoolOnDisk(t *testing.T, fsType string, size int64) string {
	t.Helper()
	d := testdisk.New(t, fsType, size)
	p := filepath.Join(d.Dir, "dhpp")
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func openManager(t *testing.T, poolPath string, kind BackendKind, clock *fakeClock) *Manager {
	t.Helper()
	m, err := New(Config{NodeID: "node-a", Pools: []PoolConfig{{Name: "default", Path: poolPath, Backend: kind}}, Now: clock.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m
}

// writeUntilError writes 1 MiB chunks (with an fsync every 4 MiB, so btrfs
// qgroup accounting keeps up) until a write fails or max bytes are written.
func writeUntilError(t *testing.T, path string, max int64) (int64, error) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xa5}, mib)
	var n int64
	for n < max {
		w, err := f.Write(buf)
		n += int64(w)
		if err == nil && n%(4*mib) == 0 {
			err = f.Sync()
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func isQuotaErr(err error) bool {
	return errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.ENOSPC)
}

// TestVolumeLifecycle runs a volume through its whole life on each backend
// and filesystem: create, size enforcement, publish (rw and ro), stats,
// expand, driver restart, delete-while-mounted refusal, unpublish, delete,
// trash and purge.
func TestVolumeLifecycle(t *testing.T) {
	testdisk.RequireRoot(t)
	cases := []struct {
		fs      string
		backend BackendKind
		size    int64
		fsType  string // for loop
	}{
		{"btrfs", BackendBtrfs, 32 * mib, ""},
		{"ext4", BackendLoop, 32 * mib, "ext4"},
		{"xfs", BackendLoop, 320 * mib, "xfs"},
		{"btrfs", BackendLoop, 32 * mib, "ext4"},
		{"ext4", BackendDir, 32 * mib, ""},
		{"xfs", BackendDir, 32 * mib, ""},
	}
	for _, tc := range cases {
		t.Run(tc.fs+"/"+string(tc.backend)+tc.fsType, func(t *testing.T) {
			testLifecycle(t, tc.fs, tc.backend, tc.size, tc.fsType)
		})
	}
}

func testLifecycle(t *testing.T, fsType string, kind BackendKind, size int64, loopFs string) {
	ctx := context.Background()
	poolPath := newPoolOnDisk(t, fsType, 4<<30)
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := openManager(t, poolPath, kind, clock)
	defer func() { m.Close() }()
	if got := m.Pools()[0].Backend(); got != kind {
		t.Fatalf("pool backend = %s, want %s", got, kind)
	}

	v, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-1", RequiredBytes: size, AccessType: AccessMount, FsType: loopFs, Mode: 0o770})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	if v.ID != "node-a/default/pvc-1" || v.CapacityBytes != size || v.Backend != kind {
		t.Fatalf("volume %+v", v)
	}
	// Idempotent create; incompatible create.
	if again, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-1", RequiredBytes: size, AccessType: AccessMount, Mode: 0o770}); err != nil || again.ID != v.ID {
		t.Fatalf("repeated CreateVolume = %v, %v", again, err)
	}
	if _, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-1", RequiredBytes: 2 * size, AccessType: AccessMount, Mode: 0o770}); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("CreateVolume with another size: %v, want ErrAlreadyExists", err)
	}
	if _, err := os.Stat(filepath.Join(poolPath, "volumes/pvc-1/volume.json")); err != nil {
		t.Fatalf("record not on disk: %v", err)
	}

	work := t.TempDir()
	staging := filepath.Join(work, "staging")
	target := filepath.Join(work, "target")
	roTarget := filepath.Join(work, "ro-target")
	if err := os.Mkdir(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("StageVolume: %v", err)
	}
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("repeated StageVolume: %v", err)
	}
	pub := PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, AccessType: AccessMount}
	if err := m.PublishVolume(ctx, pub); err != nil {
		t.Fatalf("PublishVolume: %v", err)
	}
	if err := m.PublishVolume(ctx, pub); err != nil {
		t.Fatalf("repeated PublishVolume: %v", err)
	}
	st, err := os.Stat(target)
	if err != nil || st.Mode().Perm() != 0o770 {
		t.Fatalf("target root mode = %v, %v; want 0770 from the mode parameter", st.Mode(), err)
	}
	if err := os.WriteFile(filepath.Join(target, "hello"), []byte("dhpp"), 0o644); err != nil {
		t.Fatalf("write through the bind mount: %v", err)
	}

	// Read-only publish: reads work, writes fail with EROFS.
	roPub := pub
	roPub.TargetPath, roPub.ReadOnly = roTarget, true
	if err := m.PublishVolume(ctx, roPub); err != nil {
		t.Fatalf("read-only PublishVolume: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(roTarget, "hello")); err != nil || string(b) != "dhpp" {
		t.Fatalf("read through the read-only mount = %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(roTarget, "nope"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write to the read-only mount: %v, want EROFS", err)
	}

	// Size enforcement.
	big := filepath.Join(target, "big")
	n, werr := writeUntilError(t, big, 2*size)
	if m.Pools()[0].backend.Enforced() {
		if !isQuotaErr(werr) {
			t.Fatalf("wrote %d bytes into a %d-byte volume, error %v; want EDQUOT/ENOSPC", n, size, werr)
		}
		if n > size+8*mib {
			t.Fatalf("wrote %d bytes into a %d-byte volume before the limit hit", n, size)
		}
		t.Logf("write stopped after %d MiB of a %d MiB volume: %v", n/mib, size/mib, werr)
	} else if werr != nil || n != 2*size {
		t.Fatalf("dir backend (not enforced) should accept %d bytes: wrote %d, %v", 2*size, n, werr)
	}

	// Deleting a published volume is refused and changes nothing.
	if err := m.DeleteVolume(ctx, v.ID); !errors.Is(err, ErrInUse) {
		t.Fatalf("DeleteVolume while published: %v, want ErrInUse", err)
	}
	if _, err := m.GetVolume(v.ID); err != nil {
		t.Fatalf("volume gone after refused delete: %v", err)
	}

	// Stats come from the backend's accounting.
	syncFS(t, target)
	_, u, err := m.VolumeStats(v.ID, target, "")
	if err != nil {
		t.Fatalf("VolumeStats: %v", err)
	}
	switch kind {
	case BackendBtrfs:
		if u.TotalBytes != size || u.UsedBytes < size/2 || u.HasInodes {
			t.Fatalf("btrfs usage %+v: want total %d and most of it used", u, size)
		}
	case BackendLoop:
		if u.TotalBytes > size || u.TotalBytes < size/2 || u.UsedBytes < size/2 || !u.HasInodes {
			t.Fatalf("loop usage %+v for a %d-byte volume", u, size)
		}
	case BackendDir:
		if u.TotalBytes < 3000*mib || !u.HasInodes {
			t.Fatalf("dir usage %+v: want the filesystem's figures", u)
		}
	}
	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}
	syncFS(t, target)

	// Expand to twice the size while published (online). ext4 inside a
	// loop image grows online only with CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS),
	// which a privileged DaemonSet has and this test machine may not.
	if kind == BackendLoop && loopFs == "ext4" && !growsOnline() {
		t.Logf("online ext4 growth not tested: this process lacks CAP_SYS_RESOURCE (offline growth is tested below)")
	} else {
		ev, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: 2 * size})
		if err != nil {
			t.Fatalf("ExpandVolume: %v", err)
		}
		if ev.CapacityBytes != 2*size || ev.Phase != PhaseReady {
			t.Fatalf("expanded volume %+v", ev)
		}
		checkGrown(t, m, v.ID, target, 2*size)
	}

	// Restart: a new Manager over the same disk recovers the volume.
	m.Close()
	m = openManager(t, poolPath, kind, clock)
	rv, err := m.GetVolume(v.ID)
	if err != nil || rv.CapacityBytes != v.CapacityBytes && rv.CapacityBytes != 2*size || rv.Mode != 0o770 {
		t.Fatalf("after restart GetVolume = %+v, %v", rv, err)
	}
	if vols := m.ListVolumes(); len(vols) != 1 {
		t.Fatalf("after restart ListVolumes = %d volumes", len(vols))
	}
	if b, err := os.ReadFile(filepath.Join(target, "hello")); err != nil || string(b) != "dhpp" {
		t.Fatalf("data after restart = %q, %v", b, err)
	}

	for _, p := range []string{roTarget, target} {
		if err := m.UnpublishVolume(ctx, v.ID, p); err != nil {
			t.Fatalf("UnpublishVolume %s: %v", p, err)
		}
		if err := m.UnpublishVolume(ctx, v.ID, p); err != nil {
			t.Fatalf("repeated UnpublishVolume %s: %v", p, err)
		}
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("target %s still there: %v", p, err)
		}
	}
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatalf("UnstageVolume: %v", err)
	}
	// Expansion while not staged: the next stage catches the filesystem up
	// before a pod sees it (ext4: online right after the mount when the
	// process has CAP_SYS_RESOURCE, else offline before it; the offline
	// path and its crash safety are TestOfflineGrowKillLoop's).
	if _, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: 3 * size}); err != nil {
		t.Fatalf("offline ExpandVolume: %v", err)
	}
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("StageVolume after offline expand: %v", err)
	}
	if err := m.PublishVolume(ctx, pub); err != nil {
		t.Fatalf("PublishVolume after offline expand: %v", err)
	}
	checkGrown(t, m, v.ID, target, 3*size)
	if err := m.UnpublishVolume(ctx, v.ID, target); err != nil {
		t.Fatal(err)
	}
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatal(err)
	}
	if kind == BackendLoop {
		if devs, _ := loopdev.Find(filepath.Join(poolPath, "volumes/pvc-1/disk.img")); len(devs) != 0 {
			t.Fatalf("loop devices still attached after unstage: %v", devs)
		}
	}

	// Delete moves the data to the trash; purge removes it after the retention.
	if err := m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	if err := m.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("repeated DeleteVolume: %v", err)
	}
	if _, err := m.GetVolume(v.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetVolume after delete: %v", err)
	}
	trash, _ := os.ReadDir(filepath.Join(poolPath, ".dhpp/trash"))
	if len(trash) != 1 || !strings.HasPrefix(trash[0].Name(), "pvc-1@") {
		t.Fatalf("trash = %v, want one pvc-1@… entry", trash)
	}
	if n, err := m.PurgeTrash(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("PurgeTrash before retention = %d, %v", n, err)
	}
	clock.Add(time.Hour + time.Second)
	if n, err := m.PurgeTrash(ctx, time.Hour); err != nil || n != 1 {
		t.Fatalf("PurgeTrash after retention = %d, %v", n, err)
	}
	if trash, _ := os.ReadDir(filepath.Join(poolPath, ".dhpp/trash")); len(trash) != 0 {
		t.Fatalf("trash after purge = %v", trash)
	}
	if c, err := m.Pools()[0].Capacity(); err != nil || c.Provisioned != 0 {
		t.Fatalf("capacity after delete = %+v, %v", c, err)
	}
}

func syncFS(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// checkGrown verifies that a volume really has its new size: enforced
// backends accept more than the old size and stop at the new one; loop
// filesystems report the new size.
func checkGrown(t *testing.T, m *Manager, id, target string, size int64) {
	t.Helper()
	v, err := m.GetVolume(id)
	if err != nil || v.CapacityBytes != size || v.Phase != PhaseReady {
		t.Fatalf("after expand: %+v, %v; want %d bytes, Ready", v, err, size)
	}
	if !m.Pools()[0].backend.Enforced() {
		return
	}
	big := filepath.Join(target, "big")
	n, werr := writeUntilError(t, big, size+8*mib)
	if !isQuotaErr(werr) || n < size*3/4 || n > size+8*mib {
		t.Fatalf("after expand to %d bytes: wrote %d, %v", size, n, werr)
	}
	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}
	syncFS(t, target)
}
