package node

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/internal/vmtest"
	"github.com/dhpp-io/dhpp/pkg/node/projquota"
	"golang.org/x/sys/unix"
)

// Project-quota backends can only be proven in the VM: this host's kernel
// has neither XFS nor ext4 quota. Each case names the filesystem, how to
// make it with project quota support, its disk, and the error an exceeded
// project quota gives a writer.
var projQuotaCases = []struct {
	kind     BackendKind
	dev      string
	mkfs     []string
	quotaErr string
}{
	{BackendXFS, "/dev/vda", []string{"mkfs.xfs", "-q", "-f"}, "No space left on device"},
	{BackendExt4, "/dev/vdb", []string{"mkfs.ext4", "-q", "-F", "-O", "quota,project"}, "Disk quota exceeded"},
}

var projQuotaDisks = []int64{320 * mib, 128 * mib} // XFS needs 300 MiB

// TestProjQuotaLifecycleVM runs a volume through its life on the xfs and
// ext4 backends, writing as the unprivileged user nobody (ext4 lets root
// past a quota): create, a write past the size fails, stats from the
// quota, expand, more fits, restart recovers (and allocates a fresh id that
// also avoids one charged by something else), delete, purge removes the
// limit.
func TestProjQuotaLifecycleVM(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: projQuotaDisks}) {
		return
	}
	for _, c := range projQuotaCases {
		t.Run(string(c.kind), func(t *testing.T) {
			vmMkfs(t, c.dev, c.mkfs)
			mnt := vmMount(t, c.dev, string(c.kind), "prjquota")
			testProjQuotaLifecycle(t, mnt, c.kind, c.quotaErr)
		})
	}
}

func testProjQuotaLifecycle(t *testing.T, mnt string, kind BackendKind, quotaErr string) {
	const size = 16 * mib
	ctx := context.Background()
	poolPath := filepath.Join(mnt, "dhpp")
	if err := os.Mkdir(poolPath, 0o755); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := openManager(t, poolPath, BackendAuto, clock)
	defer func() { m.Close() }()
	if got := m.Pools()[0].Backend(); got != kind || !m.Pools()[0].backend.Enforced() {
		t.Fatalf("auto picked %s (enforced %v) on %s with prjquota, want %s", got, m.Pools()[0].backend.Enforced(), kind, kind)
	}

	v, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-1", RequiredBytes: size, AccessType: AccessMount, Mode: 0o777})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	if v.Backend != kind || v.ProjectID < projIDFirst || v.ProjectID > projIDLast {
		t.Fatalf("volume %+v: want backend %s and a project id in dhpp's range", v, kind)
	}
	if rec := readVolumeJSON(t, poolPath, "pvc-1"); rec.ProjectID != v.ProjectID {
		t.Fatalf("record on disk has project id %d, volume %d", rec.ProjectID, v.ProjectID)
	}
	if again, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-1", RequiredBytes: size, AccessType: AccessMount, Mode: 0o777}); err != nil || again.ProjectID != v.ProjectID {
		t.Fatalf("repeated CreateVolume = %+v, %v", again, err)
	}
	q := openQuota(t, poolPath)
	if got, err := q.Get(v.ProjectID); err != nil || got.BytesLimit != size {
		t.Fatalf("quota of the new volume = %+v, %v; want a %d-byte limit", got, err, size)
	}

	work, err := os.MkdirTemp("/mnt", "work") // nobody must reach the target
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	staging, target := filepath.Join(work, "staging"), filepath.Join(work, "target")
	if err := os.Mkdir(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: v.AccessType}); err != nil {
		t.Fatalf("StageVolume: %v", err)
	}
	pub := PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, AccessType: AccessMount}
	if err := m.PublishVolume(ctx, pub); err != nil {
		t.Fatalf("PublishVolume: %v", err)
	}
	if out, err := vmtest.RunAs(vmtest.NobodyUID, vmtest.NobodyGID, "sh", "-c", "echo dhpp > "+filepath.Join(target, "hello")); err != nil {
		t.Fatalf("write as nobody through the bind mount: %v: %s", err, out)
	}

	// A write past the size fails with the filesystem's quota error.
	big := filepath.Join(target, "big")
	n, out := ddAsNobody(t, big, 2*size/mib)
	if !strings.Contains(out, quotaErr) || n > size || n < size-2*mib {
		t.Fatalf("wrote %d bytes into a %d-byte volume: %s; want %q at the size", n, size, out, quotaErr)
	}
	t.Logf("write as nobody stopped after %.1f MiB of a %d MiB volume: %q", float64(n)/mib, size/mib, quotaErr)

	// Inside the volume, df shows the volume's size, not the disk's: both
	// filesystems report the project's limit for a directory whose project
	// is inherited and enforced.
	var sfs unix.Statfs_t
	if err := unix.Statfs(target, &sfs); err != nil || int64(sfs.Blocks)*sfs.Bsize != size {
		t.Fatalf("statfs in the volume: %d blocks of %d bytes, %v; want %d bytes", sfs.Blocks, sfs.Bsize, err, size)
	}

	if err := m.DeleteVolume(ctx, v.ID); !errors.Is(err, ErrInUse) {
		t.Fatalf("DeleteVolume while published: %v, want ErrInUse", err)
	}

	// Stats come from the quota: bytes and inodes of this volume only.
	_, u, err := m.VolumeStats(v.ID, target, "")
	if err != nil {
		t.Fatalf("VolumeStats: %v", err)
	}
	if u.TotalBytes != size || u.UsedBytes < n || u.UsedBytes > size || u.AvailableBytes > size-u.UsedBytes ||
		!u.HasInodes || u.UsedInodes != 3 || u.TotalInodes != u.UsedInodes+u.FreeInodes || u.FreeInodes <= 0 {
		t.Fatalf("usage %+v: want total %d, about %d used, 3 inodes (root, hello, big)", u, size, n)
	}
	if a, err := m.Pools()[0].backend.Allocated(volumeDir{}, v); err != nil || a != u.UsedBytes {
		t.Fatalf("Allocated = %d, %v; want %d", a, err, u.UsedBytes)
	}
	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}

	// Expand while published: the limit rises, more fits, and stops at the new size.
	ev, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: v.ID, RequiredBytes: 2 * size})
	if err != nil || ev.CapacityBytes != 2*size || ev.Phase != PhaseReady {
		t.Fatalf("ExpandVolume = %+v, %v", ev, err)
	}
	n, out = ddAsNobody(t, big, 3*size/mib)
	if !strings.Contains(out, quotaErr) || n <= size || n > 2*size {
		t.Fatalf("after expanding to %d bytes wrote %d: %s", 2*size, n, out)
	}
	if _, u, err := m.VolumeStats(v.ID, target, ""); err != nil || u.TotalBytes != 2*size || u.UsedBytes < n {
		t.Fatalf("usage after expand = %+v, %v", u, err)
	}
	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}

	// Something outside dhpp charges the id allocation would pick next:
	// after the restart, a new volume must skip both it and pvc-1's id.
	foreignID := v.ProjectID + 1
	chargeForeignProject(t, mnt, foreignID)

	// Restart: a new Manager over the same disk recovers the volume.
	m.Close()
	m = openManager(t, poolPath, BackendAuto, clock)
	rv, err := m.GetVolume(v.ID)
	if err != nil || rv.CapacityBytes != 2*size || rv.ProjectID != v.ProjectID || rv.Backend != kind {
		t.Fatalf("after restart GetVolume = %+v, %v", rv, err)
	}
	if b, err := os.ReadFile(filepath.Join(target, "hello")); err != nil || string(b) != "dhpp\n" {
		t.Fatalf("data after restart = %q, %v", b, err)
	}
	v2, err := m.CreateVolume(ctx, CreateRequest{Name: "pvc-2", RequiredBytes: size, AccessType: AccessMount, Mode: 0o777})
	if err != nil {
		t.Fatalf("CreateVolume after restart: %v", err)
	}
	if v2.ProjectID == v.ProjectID || v2.ProjectID == foreignID {
		t.Fatalf("pvc-2 got project id %d; pvc-1 has %d and %d is charged by another directory", v2.ProjectID, v.ProjectID, foreignID)
	}
	t.Logf("project ids: pvc-1 %d, foreign %d, pvc-2 %d", v.ProjectID, foreignID, v2.ProjectID)

	// Delete and purge: the limit goes with the data.
	if err := m.UnpublishVolume(ctx, v.ID, target); err != nil {
		t.Fatalf("UnpublishVolume: %v", err)
	}
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatalf("UnstageVolume: %v", err)
	}
	for _, id := range []string{v.ID, v2.ID} {
		if err := m.DeleteVolume(ctx, id); err != nil {
			t.Fatalf("DeleteVolume %s: %v", id, err)
		}
	}
	if got, err := q.Get(v.ProjectID); err != nil || got.BytesLimit != 2*size {
		t.Fatalf("quota of a trashed volume = %+v, %v; want its limit kept until the purge", got, err)
	}
	// A trashed volume's directory re-labelled with another project (by
	// someone with CAP_SYS_ADMIN) must not make the purge lift that
	// project's limit: the record's id is released, not the directory's.
	if err := q.SetLimit(foreignID, mib); err != nil {
		t.Fatal(err)
	}
	relabelTrashed(t, poolPath, "pvc-2", foreignID)
	clock.Add(time.Hour + time.Second)
	if n, err := m.PurgeTrash(ctx, time.Hour); err != nil || n != 2 {
		t.Fatalf("PurgeTrash = %d, %v; want 2", n, err)
	}
	for _, id := range []uint32{v.ProjectID, v2.ProjectID} {
		// XFS frees unlinked inodes (and their quota charge) in a background
		// worker (inodegc), so the last inode may take a moment to go.
		var got projquota.Quota
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			syncFS(t, poolPath)
			if got, err = q.Get(id); err != nil || got.Empty() || time.Now().After(deadline) {
				break
			}
		}
		if err != nil || !got.Empty() {
			t.Fatalf("quota of purged project %d = %+v, %v; want no limit and no usage", id, got, err)
		}
	}
	if got, err := q.Get(foreignID); err != nil || got.BytesLimit != mib {
		t.Fatalf("the foreign project %d = %+v, %v; dhpp must leave its 1 MiB limit alone", foreignID, got, err)
	}
	if c, err := m.Pools()[0].Capacity(); err != nil || c.Provisioned != 0 {
		t.Fatalf("capacity after delete = %+v, %v", c, err)
	}
}

// TestProjQuotaSnapshotVM runs TestSnapshotRestoreClone's scenario on the
// xfs (reflink=1: files reflinked) and ext4 (copied) project-quota
// backends. The restored volume's limit is checked by writing as nobody
// (ext4 lets root past a project quota).
func TestProjQuotaSnapshotVM(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: []int64{1 << 30, 1 << 30}}) {
		return
	}
	methods := map[BackendKind]string{BackendXFS: MethodReflink, BackendExt4: MethodCopy}
	for _, c := range projQuotaCases {
		t.Run(string(c.kind), func(t *testing.T) {
			vmMkfs(t, c.dev, c.mkfs)
			mnt := vmMount(t, c.dev, string(c.kind), "prjquota")
			poolPath := filepath.Join(mnt, "dhpp")
			if err := os.Mkdir(poolPath, 0o755); err != nil {
				t.Fatal(err)
			}
			testSnapshotRestoreClone(t, poolPath, c.kind, methods[c.kind], func(t *testing.T, dir string) (int64, bool, error) {
				if err := os.Chmod(dir, 0o777); err != nil {
					t.Fatal(err)
				}
				n, out := ddAsNobody(t, filepath.Join(dir, "fill"), 200)
				return n, strings.Contains(out, c.quotaErr), nil
			})
		})
	}
}

// TestProjQuotaAutoSelectVM checks what auto picks on XFS and ext4 with and
// without prjquota, that the reason tells the operator how to get enforced
// quotas, and that asking for xfs/ext4 explicitly fails with that advice.
func TestProjQuotaAutoSelectVM(t *testing.T) {
	if !vmtest.Run(t, vmtest.Config{Disks: projQuotaDisks}) {
		return
	}
	for _, c := range projQuotaCases {
		t.Run(string(c.kind), func(t *testing.T) {
			vmMkfs(t, c.dev, c.mkfs)
			for _, opts := range []string{"prjquota", ""} {
				mnt := vmMount(t, c.dev, string(c.kind), opts)
				poolPath := filepath.Join(mnt, "dhpp")
				if err := os.MkdirAll(poolPath, 0o755); err != nil {
					t.Fatal(err)
				}
				p, err := openPool(PoolConfig{Name: "default", Path: poolPath, Backend: BackendDir}, testEnv())
				if err != nil {
					t.Fatal(err)
				}
				b, why, err := selectBackend(p, BackendAuto)
				if err != nil {
					t.Fatal(err)
				}
				_, explicitErr := openBackend(p, c.kind)
				other := BackendExt4
				if c.kind == BackendExt4 {
					other = BackendXFS
				}
				_, otherErr := openBackend(p, other)
				p.Close()
				t.Logf("-o %q: auto picked %s: %s", opts, b.Kind(), why)
				if !errors.Is(otherErr, ErrUnsupported) || !strings.Contains(otherErr.Error(), "not "+string(other)) {
					t.Errorf("backend %s on %s: %v, want ErrUnsupported naming the filesystem", other, c.kind, otherErr)
				}
				if opts == "prjquota" {
					if b.Kind() != c.kind || explicitErr != nil {
						t.Errorf("with prjquota: auto picked %s, explicit %s: %v; want %s", b.Kind(), c.kind, explicitErr, c.kind)
					}
				} else {
					if b.Kind() == c.kind || !strings.Contains(why, "mounting with prjquota would give enforced quotas") {
						t.Errorf("without prjquota: auto picked %s because %q; want another backend and advice to mount with prjquota", b.Kind(), why)
					}
					if !errors.Is(explicitErr, ErrUnsupported) || !strings.Contains(explicitErr.Error(), "mount it with -o prjquota") {
						t.Errorf("explicit %s without prjquota: %v; want ErrUnsupported with advice", c.kind, explicitErr)
					}
				}
				if err := unix.Unmount(mnt, 0); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func testEnv() *env {
	return &env{mountInfoPath: "/proc/self/mountinfo", now: time.Now}
}

func vmMkfs(t *testing.T, dev string, mkfs []string) {
	t.Helper()
	args := append(append([]string(nil), mkfs[1:]...), dev)
	if out, err := exec.Command(mkfs[0], args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", mkfs[0], strings.Join(args, " "), err, out)
	}
}

// vmMount mounts dev on a new directory under /mnt (mode 0755, so nobody
// can reach volumes; t.TempDir is 0700) and unmounts it at cleanup.
func vmMount(t *testing.T, dev, fsType, opts string) string {
	t.Helper()
	mnt, err := os.MkdirTemp("/mnt", fsType)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, mnt, fsType, 0, opts); err != nil {
		t.Fatalf("mount %s -o %q: %v", dev, opts, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			t.Errorf("unmount %s: %v", mnt, err)
		}
		os.Remove(mnt)
	})
	if err := os.Chmod(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return mnt
}

// ddAsNobody writes up to count MiB to path as nobody (busybox dd, fsync at
// the end) and returns the file's size and dd's output and error.
func ddAsNobody(t *testing.T, path string, count int64) (int64, string) {
	t.Helper()
	out, err := vmtest.RunAs(vmtest.NobodyUID, vmtest.NobodyGID, "dd", "if=/dev/zero", "of="+path, "bs=1048576",
		"count="+strconv.FormatInt(count, 10), "conv=fsync")
	st, serr := os.Stat(path)
	if serr != nil {
		t.Fatalf("dd as nobody: %v: %s (%v)", err, out, serr)
	}
	if err != nil {
		return st.Size(), string(out) + err.Error()
	}
	return st.Size(), string(out)
}

func openQuota(t *testing.T, dir string) *projquota.FS {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	q, err := projquota.Open(f, "")
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// chargeForeignProject makes a directory outside the pool that carries the
// project id and holds a file, as another tool on the same disk would.
func chargeForeignProject(t *testing.T, mnt string, id uint32) {
	t.Helper()
	dir := filepath.Join(mnt, "foreign")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := projquota.SetProject(d, id); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	syncFS(t, dir)
}

func readVolumeJSON(t *testing.T, poolPath, name string) *Volume {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(poolPath, "volumes", name, "volume.json"))
	if err != nil {
		t.Fatal(err)
	}
	v := &Volume{}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
	return v
}

// relabelTrashed gives the data directory of a trashed volume another
// project id.
func relabelTrashed(t *testing.T, poolPath, name string, id uint32) {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(poolPath, ".dhpp/trash", name+"@*", "data"))
	if err != nil || len(dirs) != 1 {
		t.Fatalf("trashed %s: %v, %v", name, dirs, err)
	}
	d, err := os.Open(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := projquota.SetProject(d, id); err != nil {
		t.Fatal(err)
	}
}

// TestProjQuotaUnavailableOnHost runs where CI runs: on this host's kernel
// (no XFS/ext4 quota) and on XFS/ext4 mounted without prjquota, auto must
// not pick a project-quota backend, must say that prjquota would give
// enforced quotas, and an explicit xfs/ext4 backend must fail with advice.
func TestProjQuotaUnavailableOnHost(t *testing.T) {
	testdisk.RequireRoot(t)
	cases := []struct {
		kind BackendKind
		size int64
	}{
		{BackendXFS, 320 * mib},
		{BackendExt4, 32 * mib},
	}
	for _, c := range cases {
		t.Run(string(c.kind), func(t *testing.T) {
			poolPath := newPoolOnDisk(t, string(c.kind), c.size)
			p, err := openPool(PoolConfig{Name: "default", Path: poolPath, Backend: BackendDir}, testEnv())
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			b, why, err := selectBackend(p, BackendAuto)
			if err != nil {
				t.Fatal(err)
			}
			if b.Kind() == c.kind || !strings.Contains(why, "mounting with prjquota would give enforced quotas") {
				t.Errorf("auto picked %s because %q; want another backend and the prjquota advice", b.Kind(), why)
			}
			if _, err := openBackend(p, c.kind); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "prjquota") {
				t.Errorf("explicit %s backend: %v, want ErrUnsupported naming prjquota", c.kind, err)
			}
			t.Logf("auto picked %s: %s", b.Kind(), why)
		})
	}
}
