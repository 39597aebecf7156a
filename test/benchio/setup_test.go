package benchio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/node/btrfs"
)

// layout sizes the disks and volumes of a run.
type layout struct {
	// volSize is each volume's size; fileSize (Params) must fit in it
	// several times over (btrfs keeps overwritten extents referenced
	// until all of their blocks are rewritten).
	volSize int64
	// subvols > 0 adds the btrfs pools with that many more volumes
	// (qgroup and simple quota), to see whether accounting grows with
	// the number of subvolumes.
	subvols int
}

// bench is the set-up of one run: what runs where, in the order specs
// list them (each baseline before its candidates).
type bench struct {
	specs   []Spec
	targets map[string]Target
	notes   []string
	work    string // staging and target paths, on the host's disk
	// made lists what the run made under work, to remove in reverse.
	made []string
}

func (b *bench) add(s Spec, t Target) {
	b.specs = append(b.specs, s)
	b.targets[s.Name] = t
}

// Target names. The plain directories are the baselines.
const (
	btrfsPlain = "btrfs plain dir"
	xfsPlain   = "xfs plain dir"
)

// setup makes the disks, pools and volumes. Every disk is a testdisk (a
// sparse image on a loop device over the host's disk) with the loop
// device switched to direct I/O, so that the test disk behaves like a
// disk: writes reach the host's disk instead of the host page cache.
func setup(tb testing.TB, l layout) *bench {
	tb.Helper()
	testdisk.RequireRoot(tb)
	requireFio(tb)
	b := newBench(tb)
	diskSize := 4*l.volSize + int64(l.subvols)<<20 + 2<<30

	// btrfs: quotas are per filesystem, so the baseline is a btrfs
	// without them (what a plain hostPath on btrfs gives) and each
	// quota set-up has its own disk of the same size.
	plain := disk(tb, b, "btrfs", diskSize)
	b.add(Spec{Name: btrfsPlain}, Target{Path: mkdir(tb, plain.Dir, "plain")})
	m := manager(tb, disk(tb, b, "btrfs", diskSize).Dir, node.BackendBtrfs)
	b.add(Spec{Name: "btrfs qgroup", Baseline: btrfsPlain, Tolerance: TolQuota},
		b.volume(tb, m, "btrfs-qgroup", node.CreateRequest{RequiredBytes: l.volSize}))
	if l.subvols > 0 {
		m := manager(tb, disk(tb, b, "btrfs", diskSize).Dir, node.BackendBtrfs)
		populate(tb, m, l.subvols)
		b.add(Spec{Name: fmt.Sprintf("btrfs qgroup, %d subvols", l.subvols), Baseline: btrfsPlain, Tolerance: TolQuota},
			b.volume(tb, m, "btrfs-many", node.CreateRequest{RequiredBytes: l.volSize}))
	}
	sq := disk(tb, b, "btrfs", diskSize)
	if err := enableSimpleQuota(sq.Dir); err != nil {
		tb.Fatalf("enable btrfs simple quota: %v", err)
	}
	m = manager(tb, sq.Dir, node.BackendBtrfs)
	populate(tb, m, l.subvols)
	b.add(Spec{Name: fmt.Sprintf("btrfs squota, %d subvols", l.subvols), Baseline: btrfsPlain, Tolerance: TolQuota},
		b.volume(tb, m, "btrfs-squota", node.CreateRequest{RequiredBytes: l.volSize}))

	// xfs: the plain directory and the dir and loop pools share a disk.
	x := disk(tb, b, "xfs", 9*l.volSize+2<<30) // the preallocated volumes occupy theirs

	b.add(Spec{Name: xfsPlain}, Target{Path: mkdir(tb, x.Dir, "plain")})
	m = manager(tb, x.Dir, node.BackendDir, node.BackendLoop)
	b.add(Spec{Name: "dir", Baseline: xfsPlain, Tolerance: TolQuota, Control: true},
		b.volume(tb, m, "dir", node.CreateRequest{Pool: "dir", RequiredBytes: l.volSize}))
	for _, fs := range []string{"ext4", "xfs"} {
		b.add(Spec{Name: "loop " + fs, Baseline: xfsPlain, Tolerance: TolLoop},
			b.volume(tb, m, "loop-"+fs, node.CreateRequest{Pool: "loop", RequiredBytes: l.volSize, FsType: fs}))
	}
	b.add(Spec{Name: "loop block", Baseline: xfsPlain, Tolerance: TolLoop},
		b.volume(tb, m, "loop-block", node.CreateRequest{Pool: "loop", RequiredBytes: l.volSize, AccessType: node.AccessBlock}))
	// The same, written through at creation (StorageClass parameter
	// preallocate: "true"): no first write allocates in the pool.
	for _, fs := range []string{"ext4", "xfs"} {
		b.add(Spec{Name: "loop " + fs + ", preallocated", Baseline: xfsPlain, Tolerance: TolLoop},
			b.volume(tb, m, "loop-"+fs+"-pre", node.CreateRequest{Pool: "loop", RequiredBytes: l.volSize, FsType: fs, Preallocate: true}))
	}
	b.add(Spec{Name: "loop block, preallocated", Baseline: xfsPlain, Tolerance: TolLoop},
		b.volume(tb, m, "loop-block-pre", node.CreateRequest{Pool: "loop", RequiredBytes: l.volSize, AccessType: node.AccessBlock, Preallocate: true}))
	return b
}

// newBench makes the directory for staging and target paths on the
// host's disk and registers its removal (after the volumes' cleanups,
// which are registered later and so run first).
func newBench(tb testing.TB) *bench {
	tb.Helper()
	work, err := os.MkdirTemp("", "benchio-")
	if err != nil {
		tb.Fatal(err)
	}
	b := &bench{targets: map[string]Target{}, work: work, made: []string{work}}
	tb.Cleanup(func() { b.removeMade(tb) })
	return b
}

// requireFio fails under CI=true (where `make deps`-style installs are
// expected) and skips elsewhere when fio is missing.
func requireFio(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("fio"); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("fio is not installed (apt-get install fio; `make bench-io` does it); CI=true, so this is a failure, not a skip")
	}
	tb.Skip("fio is not installed (apt-get install fio)")
}

// disk makes a testdisk with direct I/O on its loop device and notes its
// block sizes.
func disk(tb testing.TB, b *bench, fs string, size int64) *testdisk.Disk {
	tb.Helper()
	d := testdisk.New(tb, fs, size)
	if out, err := exec.Command("losetup", "--direct-io=on", d.Device).CombinedOutput(); err != nil {
		tb.Fatalf("losetup --direct-io=on %s: %v: %s", d.Device, err, out)
	}
	b.notes = append(b.notes, fmt.Sprintf("%s test disk: %s", fs, describeDevice(d.Device, true)))
	return d
}

// manager opens a Manager with one pool per backend kind (named after it)
// in directories of the filesystem mounted at dir.
func manager(tb testing.TB, dir string, kinds ...node.BackendKind) *node.Manager {
	tb.Helper()
	var pools []node.PoolConfig
	for _, k := range kinds {
		pools = append(pools, node.PoolConfig{Name: string(k), Path: mkdir(tb, dir, "dhpp-"+string(k)), Backend: k})
	}
	m, err := node.New(node.Config{NodeID: "bench-node", Pools: pools})
	if err != nil {
		tb.Fatalf("node.New: %v", err)
	}
	tb.Cleanup(m.Close)
	return m
}

// populate creates n more (empty) volumes in m's default pool.
func populate(tb testing.TB, m *node.Manager, n int) {
	tb.Helper()
	for i := range n {
		_, err := m.CreateVolume(context.Background(), node.CreateRequest{Name: fmt.Sprintf("pvc-fill-%05d", i), RequiredBytes: 1 << 20, Mode: 0o777})
		if err != nil {
			tb.Fatalf("populate volume %d: %v", i, err)
		}
	}
}

// volume makes a volume the way the driver does (CreateVolume, then
// NodeStage at a staging path and NodePublish at a target path, both on
// the host's disk like kubelet's) and returns the target. Cleanup undoes
// each step.
func (b *bench) volume(tb testing.TB, m *node.Manager, name string, req node.CreateRequest) Target {
	tb.Helper()
	ctx := context.Background()
	req.Name, req.Mode = name, 0o777
	if req.AccessType == "" {
		req.AccessType = node.AccessMount
	}
	v, err := m.CreateVolume(ctx, req)
	if err != nil {
		tb.Fatalf("CreateVolume %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := m.DeleteVolume(ctx, v.ID); err != nil {
			tb.Errorf("DeleteVolume %s: %v", name, err)
		}
	})
	staging, target := filepath.Join(b.work, name, "staging"), filepath.Join(b.work, name, "target")
	mkdir(tb, b.work, name)
	mkdir(tb, b.work, name+"/staging")
	b.made = append(b.made, filepath.Join(b.work, name), staging, target)
	if err := m.StageVolume(ctx, node.StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: req.AccessType}); err != nil {
		tb.Fatalf("StageVolume %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
			tb.Errorf("UnstageVolume %s: %v", name, err)
		}
	})
	err = m.PublishVolume(ctx, node.PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, AccessType: req.AccessType})
	if err != nil {
		tb.Fatalf("PublishVolume %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := m.UnpublishVolume(ctx, v.ID, target); err != nil {
			tb.Errorf("UnpublishVolume %s: %v", name, err)
		}
	})
	block := req.AccessType == node.AccessBlock
	if v.Backend == node.BackendLoop {
		b.notes = append(b.notes, fmt.Sprintf("volume %s: %s", name, describeDevice(target, block)))
	}
	return Target{Path: target, Block: block}
}

// Device facts of the block device under path (the device node itself
// for a Block volume), from sysfs.
type deviceInfo struct {
	Name        string // e.g. loop12
	LogicalBS   string // queue/logical_block_size
	DirectIO    string // loop/dio: "1" when the loop driver uses O_DIRECT
	BackingFile string // loop/backing_file
}

func readDevice(path string, block bool) (deviceInfo, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return deviceInfo{}, err
	}
	dev := st.Dev
	if block {
		dev = st.Rdev
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(dev), unix.Minor(dev))
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(sys, rel))
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	link, err := os.Readlink(sys)
	if err != nil {
		return deviceInfo{}, err
	}
	return deviceInfo{Name: filepath.Base(link), LogicalBS: read("queue/logical_block_size"), DirectIO: read("loop/dio"), BackingFile: read("loop/backing_file")}, nil
}

func describeDevice(path string, block bool) string {
	d, err := readDevice(path, block)
	if err != nil {
		return "device unknown: " + err.Error()
	}
	return fmt.Sprintf("%s, logical block size %s, loop direct I/O %s", d.Name, d.LogicalBS, d.DirectIO)
}

// enableSimpleQuota turns on btrfs simple quotas (kernel 6.7+) on the
// filesystem of dir, as `btrfs quota enable --simple` of btrfs-progs 6.7+
// does (Debian 12 ships 6.2, which lacks the flag), with the driver's own
// ioctl (btrfs.EnableSimpleQuota, what `--pool ...,btrfs-quota=simple` uses).
func enableSimpleQuota(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	mode, err := btrfs.EnableSimpleQuota(f)
	if err == nil && mode != btrfs.QuotaSimple {
		err = fmt.Errorf("quotas on %s were already on in mode %s", dir, mode)
	}
	return err
}

func mkdir(tb testing.TB, parent, name string) string {
	tb.Helper()
	p := filepath.Join(parent, name)
	if err := os.Mkdir(p, 0o777); err != nil {
		tb.Fatal(err)
	}
	return p
}

// removeMade removes the staging and target paths the run made, newest
// first, each with one unlink or rmdir: a mount left behind makes its
// removal fail (EBUSY) instead of deleting into a live filesystem.
func (b *bench) removeMade(tb testing.TB) {
	for i := len(b.made) - 1; i >= 0; i-- {
		if err := os.Remove(b.made[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			tb.Errorf("benchio: leaving %s: %v", b.made[i], err)
		}
	}
}
