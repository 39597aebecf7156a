package driver

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A volume under test, staged and published at its own paths.
type pathVol struct {
	id, staging, target string
	cap                 *csi.VolumeCapability
}

// pathsEnv is a driver serving one pool per backend on real disks, with
// two volumes (A and B) of each kind staged and published, and planted
// paths that belong to none of them.
type pathsEnv struct {
	d     *Driver
	work  string                // the CO's paths
	disks map[string]string     // pool name -> the disk's mount point
	pools map[string]string     // pool name -> pool directory
	vols  map[string][2]pathVol // kind -> A, B
	plant map[string]string     // planted paths by role
	roots []string              // what a snapshot covers
}

// pathKinds are the volume kinds the table runs on, with their pool.
var pathKinds = []struct{ kind, pool string }{
	{"btrfs", "btrfs"}, {"loop", "loop"}, {"loopblock", "loop"}, {"dir", "dir"},
	{"btrfsblock", "btrfs"}, {"dirblock", "dir"}, {"btrfsext4", "btrfs"},
}

// imageKinds are volumes a directory pool serves as an image on a loop
// device (issue 15), by the loop kind whose expectations they share: a
// row's code for "loop" or "loopblock" holds for them too.
var imageKinds = map[string]string{"btrfsblock": "loopblock", "dirblock": "loopblock", "btrfsext4": "loop"}

// kindCap is the capability a kind's volumes are created and used with.
func kindCap(kind string) *csi.VolumeCapability {
	switch {
	case kind == "loopblock" || imageKinds[kind] == "loopblock":
		return block
	case kind == "btrfsext4":
		return withFsType(rwo, "ext4")
	}
	return rwo
}

func newPathsEnv(t *testing.T) *pathsEnv {
	testdisk.RequireRoot(t)
	bt := testdisk.New(t, "btrfs", 256<<20)
	ex := testdisk.New(t, "ext4", 512<<20)
	e := &pathsEnv{
		disks: map[string]string{"btrfs": bt.Dir, "loop": ex.Dir, "dir": ex.Dir},
		pools: map[string]string{},
		vols:  map[string][2]pathVol{},
		plant: map[string]string{},
	}
	var pools []node.PoolConfig
	for _, pc := range []node.PoolConfig{{Name: "btrfs", Backend: node.BackendBtrfs}, {Name: "loop", Backend: node.BackendLoop}, {Name: "dir", Backend: node.BackendDir}} {
		pc.Path = filepath.Join(e.disks[pc.Name], pc.Name)
		mustMkdir(t, pc.Path)
		e.pools[pc.Name] = pc.Path
		pools = append(pools, pc)
	}
	m, err := node.New(node.Config{NodeID: "node-a", Pools: pools})
	if err != nil {
		t.Fatal(err)
	}
	if e.d, err = New(Config{Manager: m}); err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: its RemoveAll would walk into a mount left by a
	// failed test and delete a volume's data.
	if e.work, err = os.MkdirTemp("", "dhpp-paths-"); err != nil {
		t.Fatal(err)
	}
	e.roots = []string{e.work, bt.Dir, ex.Dir}
	t.Cleanup(func() { e.teardown(t); m.Close() })

	ctx := context.Background()
	for _, k := range pathKinds {
		var ab [2]pathVol
		for i, name := range []string{"a", "b"} {
			c := kindCap(k.kind)
			r := createReq(k.kind+"-"+name, func(r *csi.CreateVolumeRequest) {
				r.VolumeCapabilities = []*csi.VolumeCapability{c}
				r.Parameters = map[string]string{"pool": k.pool}
				r.CapacityRange = &csi.CapacityRange{RequiredBytes: 16 << 20}
			})
			cv, err := e.d.CreateVolume(ctx, r)
			if err != nil {
				t.Fatalf("CreateVolume %s: %v", r.Name, err)
			}
			dir := filepath.Join(e.work, k.kind, name)
			mustMkdir(t, dir)
			v := pathVol{id: cv.Volume.VolumeId, staging: filepath.Join(dir, "staging"), target: filepath.Join(dir, "target"), cap: c}
			mustMkdir(t, v.staging)
			if _, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: c}); err != nil {
				t.Fatalf("NodeStageVolume %s: %v", v.id, err)
			}
			if _, err := e.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: c}); err != nil {
				t.Fatalf("NodePublishVolume %s: %v", v.id, err)
			}
			ab[i] = v
		}
		e.vols[k.kind] = ab
		// B holds data that must survive every row.
		if kindCap(k.kind) != block {
			mustWrite(t, filepath.Join(ab[1].target, "b-data"), "B's data")
		}
	}
	e.plantPaths(t)
	return e
}

// plantPaths makes paths that belong to no volume: a foreign mount, a
// non-empty directory, a regular file, a symlink, and empty directories
// nested inside volume B's filesystems (loop and btrfs).
func (e *pathsEnv) plantPaths(t *testing.T) {
	p := filepath.Join(e.work, "plant")
	mustMkdir(t, p)
	e.plant["foreign"] = filepath.Join(p, "foreign")
	mustMkdir(t, e.plant["foreign"])
	if err := unix.Mount("tmpfs", e.plant["foreign"], "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	mustWrite(t, filepath.Join(e.plant["foreign"], "inside"), "foreign data")
	e.plant["nonempty"] = filepath.Join(p, "nonempty")
	mustMkdir(t, e.plant["nonempty"])
	mustWrite(t, filepath.Join(e.plant["nonempty"], "keep"), "keep me")
	e.plant["file"] = filepath.Join(p, "file")
	mustWrite(t, e.plant["file"], "a regular file")
	e.plant["symlink"] = filepath.Join(p, "symlink")
	if err := os.Symlink(e.plant["nonempty"], e.plant["symlink"]); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"loop", "btrfs"} {
		n := filepath.Join(e.vols[k][1].target, "nested")
		mustMkdir(t, n)
		e.plant["nested-"+k] = n
	}
}

// teardown unpublishes and unstages every volume, then unmounts whatever
// is still mounted below the work directory (deepest first) before
// removing it, so nothing leaks into other tests on this machine.
func (e *pathsEnv) teardown(t *testing.T) {
	ctx := context.Background()
	for _, ab := range e.vols {
		for _, v := range ab {
			if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target}); err != nil {
				t.Errorf("teardown: unpublish %s: %v", v.id, err)
			}
			if _, err := e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging}); err != nil {
				t.Errorf("teardown: unstage %s: %v", v.id, err)
			}
		}
	}
	left := mountsBelow(t, e.work)
	sort.Slice(left, func(i, j int) bool { return len(left[i]) > len(left[j]) })
	for _, mp := range left {
		if err := unix.Unmount(mp, 0); err != nil {
			t.Errorf("teardown: unmount %s: %v", mp, err)
			unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	if len(mountsBelow(t, e.work)) == 0 {
		os.RemoveAll(e.work)
	}
}

func mountsBelow(t *testing.T, dir string) []string {
	var out []string
	for _, l := range mountLines(t) {
		if mp := strings.Fields(l)[0]; mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// mountLines is the mount table, one "mountpoint dev root options fstype
// source" line per mount.
func mountLines(t *testing.T) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		sep := slices.Index(fl, "-")
		if sep < 0 || len(fl) < sep+3 {
			t.Fatalf("mountinfo line %q", sc.Text())
		}
		out = append(out, strings.Join([]string{fl[4], fl[2], fl[3], fl[5], fl[sep+1], fl[sep+2]}, " "))
	}
	return out
}

// pathSnapshot is what the table checks does not change: the mounts and loop
// devices of this test, and every file below its directories (including
// the volumes' data, seen through their mounts), with the content of small
// files.
type pathSnapshot struct{ mounts, loops, tree []string }

func (e *pathsEnv) snapshot(t *testing.T) pathSnapshot {
	var s pathSnapshot
	for _, l := range mountLines(t) {
		if e.covers(strings.Fields(l)[0]) {
			s.mounts = append(s.mounts, l)
		}
	}
	sysLoops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range sysLoops {
		b, err := os.ReadFile(bf)
		if err == nil && e.covers(strings.TrimSpace(string(b))) {
			s.loops = append(s.loops, filepath.Base(filepath.Dir(filepath.Dir(bf)))+" "+strings.TrimSpace(string(b)))
		}
	}
	for _, root := range e.roots {
		err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			st, err := de.Info()
			if err != nil {
				return err
			}
			line := fmt.Sprintf("%s %v", p, st.Mode())
			if st.Mode().IsRegular() {
				line += fmt.Sprintf(" %d", st.Size())
				if st.Size() <= 64<<10 {
					b, err := os.ReadFile(p)
					if err != nil {
						return err
					}
					sum := sha256.Sum256(b)
					line += " " + hex.EncodeToString(sum[:8])
				}
			}
			s.tree = append(s.tree, line)
			return nil
		})
		if err != nil {
			t.Fatalf("walk %s: %v", root, err)
		}
	}
	sort.Strings(s.mounts)
	sort.Strings(s.loops)
	return s
}

func (e *pathsEnv) covers(p string) bool {
	for _, r := range e.roots {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

// diff reports what changed between two snapshots.
func (a pathSnapshot) diff(b pathSnapshot) string {
	var out []string
	for _, part := range []struct {
		name string
		x, y []string
	}{{"mount", a.mounts, b.mounts}, {"loop device", a.loops, b.loops}, {"file", a.tree, b.tree}} {
		for _, l := range part.x {
			if !slices.Contains(part.y, l) {
				out = append(out, fmt.Sprintf("%s gone: %s", part.name, l))
			}
		}
		for _, l := range part.y {
			if !slices.Contains(part.x, l) {
				out = append(out, fmt.Sprintf("%s new: %s", part.name, l))
			}
		}
	}
	return strings.Join(out, "\n")
}

// pathRow is one request: its expected code per volume kind (a kind that
// is not listed does not run the row: the request is legitimate for it and
// changes something), and a path the message must name.
type pathRow struct {
	name  string
	codes map[string]codes.Code
	names string
	call  func(ctx context.Context) error
}

// all gives every kind the same code; except overrides some.
func all(c codes.Code, except ...any) map[string]codes.Code {
	m := map[string]codes.Code{}
	for _, k := range pathKinds {
		m[k.kind] = c
	}
	for i := 0; i+1 < len(except); i += 2 {
		if c, ok := except[i+1].(codes.Code); ok {
			m[except[i].(string)] = c
		} else {
			delete(m, except[i].(string))
		}
	}
	for kind, like := range imageKinds {
		if c, ok := m[like]; ok {
			m[kind] = c
		} else {
			delete(m, kind)
		}
	}
	return m
}

const skip = "skip" // an except value: the row does not run for that kind

// TestNodeRPCPathChecks calls every node RPC with paths that are not the
// volume's (foreign mounts, another volume's staging path and target,
// paths nested in another volume, symlinks, non-empty directories, regular
// files, the pool's own directory and disk) and with unknown and other
// nodes' volume IDs, on btrfs, loop Filesystem, loop Block and dir volumes,
// and on the image volumes of btrfs and dir pools (Block, and ext4 on btrfs).
// Each row checks the gRPC code and that nothing changed: the test's
// mounts, loop devices and files (the planted ones and the volumes' data).
func TestNodeRPCPathChecks(t *testing.T) {
	e := newPathsEnv(t)
	for _, k := range pathKinds {
		a, b := e.vols[k.kind][0], e.vols[k.kind][1]
		rows := e.rows(k.kind, k.pool, a, b)
		t.Run(k.kind, func(t *testing.T) {
			for _, r := range rows {
				want, ok := r.codes[k.kind]
				if !ok {
					continue
				}
				t.Run(r.name, func(t *testing.T) {
					before := e.snapshot(t)
					err := r.call(context.Background())
					if got := status.Code(err); got != want {
						t.Errorf("code = %v (%v), want %v", got, err, want)
					}
					if err != nil && r.names != "" && !strings.Contains(err.Error(), r.names) {
						t.Errorf("message %q does not name %s", err, r.names)
					}
					if d := before.diff(e.snapshot(t)); d != "" {
						t.Errorf("the request changed things outside the volume's own paths:\n%s", d)
					}
				})
			}
		})
	}
}

func (e *pathsEnv) rows(kind, pool string, a, b pathVol) []pathRow {
	d := e.d
	pl := e.plant
	stage := func(id, p string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: p, VolumeCapability: a.cap})
			return err
		}
	}
	unstage := func(id, p string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: p})
			return err
		}
	}
	publishCap := func(id, staging, target string, c *csi.VolumeCapability) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c})
			return err
		}
	}
	publish := func(id, staging, target string) func(context.Context) error {
		return publishCap(id, staging, target, a.cap)
	}
	unpublish := func(id, target string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			return err
		}
	}
	stats := func(id, p string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: p})
			return err
		}
	}
	expand := func(id, p string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: p})
			return err
		}
	}
	rwop := &csi.VolumeCapability{AccessType: a.cap.AccessType, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER}}
	unknown := "node-a/" + pool + "/no-such-volume"
	otherNode := "node-b/" + pool + "/" + kind + "-a"
	other := filepath.Join(filepath.Dir(a.target), "other")
	disk, poolDir := e.disks[pool], e.pools[pool]
	FP, NF, OK := codes.FailedPrecondition, codes.NotFound, codes.OK

	return []pathRow{
		// NodeStageVolume
		{"stage/own path again", all(OK), "", stage(a.id, a.staging)},
		{"stage/a second path while staged", all(OK, "loop", FP), a.staging, stage(a.id, other)},
		{"stage/B's staging path", all(OK, "loop", FP), b.staging, stage(a.id, b.staging)},
		{"stage/B's target", all(FP), b.target, stage(a.id, b.target)},
		{"stage/the pool's directory", all(FP), poolDir, stage(a.id, poolDir)},
		{"stage/the pool disk's mount point", all(FP), disk, stage(a.id, disk)},
		{"stage/a foreign mount", all(FP), pl["foreign"], stage(a.id, pl["foreign"])},
		{"stage/a non-empty directory", all(FP), pl["nonempty"], stage(a.id, pl["nonempty"])},
		{"stage/a regular file", all(FP), pl["file"], stage(a.id, pl["file"])},
		{"stage/a symlink", all(FP), pl["symlink"], stage(a.id, pl["symlink"])},
		{"stage/nested in a loop volume", all(FP), pl["nested-loop"], stage(a.id, pl["nested-loop"])},
		{"stage/nested in a btrfs volume", all(FP), pl["nested-btrfs"], stage(a.id, pl["nested-btrfs"])},
		{"stage/unknown volume", all(NF), "", stage(unknown, e.work+"/x")},
		{"stage/another node's volume", all(NF), "", stage(otherNode, pl["foreign"])},

		// NodeUnstageVolume
		{"unstage/B's staging path", all(OK, "loop", FP, "loopblock", FP), b.staging, unstage(a.id, b.staging)},
		{"unstage/own staging path while published", all(OK, "loop", FP, "loopblock", FP), a.target, unstage(a.id, a.staging)},
		{"unstage/B's target", all(FP), b.target, unstage(a.id, b.target)},
		{"unstage/the pool's directory", all(FP), poolDir, unstage(a.id, poolDir)},
		{"unstage/the pool disk's mount point", all(FP), disk, unstage(a.id, disk)},
		{"unstage/a foreign mount", all(FP), pl["foreign"], unstage(a.id, pl["foreign"])},
		{"unstage/a non-empty directory", all(OK, "loop", FP, "loopblock", FP), a.target, unstage(a.id, pl["nonempty"])},
		{"unstage/a regular file", all(OK, "loop", FP, "loopblock", FP), a.target, unstage(a.id, pl["file"])},
		{"unstage/a symlink", all(OK, "loop", FP, "loopblock", FP), a.target, unstage(a.id, pl["symlink"])},
		{"unstage/nested in a loop volume", all(FP), pl["nested-loop"], unstage(a.id, pl["nested-loop"])},
		{"unstage/unknown volume", all(OK), "", unstage(unknown, pl["foreign"])},
		{"unstage/another node's volume", all(OK), "", unstage(otherNode, pl["foreign"])},

		// NodePublishVolume
		{"publish/own target again", all(OK), "", publish(a.id, a.staging, a.target)},
		{"publish/B's staging path as staging", all(FP, "btrfs", skip, "dir", skip, "loopblock", skip), b.staging, publish(a.id, b.staging, other)},
		{"publish/the pool disk as staging", all(FP), disk, publish(a.id, disk, other)},
		{"publish/the pool's directory as staging", all(FP), poolDir, publish(a.id, poolDir, other)},
		{"publish/a foreign mount as staging", all(FP), pl["foreign"], publish(a.id, pl["foreign"], other)},
		{"publish/onto B's target", all(FP), b.target, publish(a.id, a.staging, b.target)},
		{"publish/onto B's staging path", all(FP, "btrfs", skip, "dir", skip), b.staging, publish(a.id, a.staging, b.staging)},
		{"publish/onto a foreign mount", all(FP), pl["foreign"], publish(a.id, a.staging, pl["foreign"])},
		{"publish/onto a non-empty directory", all(FP), pl["nonempty"], publish(a.id, a.staging, pl["nonempty"])},
		{"publish/onto a regular file", all(FP), pl["file"], publish(a.id, a.staging, pl["file"])},
		{"publish/onto a symlink", all(FP), pl["symlink"], publish(a.id, a.staging, pl["symlink"])},
		{"publish/nested in a loop volume", all(FP), pl["nested-loop"], publish(a.id, a.staging, pl["nested-loop"])},
		{"publish/nested in a btrfs volume", all(FP), pl["nested-btrfs"], publish(a.id, a.staging, pl["nested-btrfs"])},
		{"publish/onto the pool's directory", all(FP), poolDir, publish(a.id, a.staging, poolDir)},
		{"publish/onto the pool disk", all(FP), disk, publish(a.id, a.staging, disk)},
		{"publish/onto its own staging path", all(codes.InvalidArgument), a.staging, publish(a.id, a.staging, a.staging)},
		{"publish/ReadWriteOncePod at a second target", all(FP), a.target, publishCap(a.id, a.staging, other, rwop)},
		{"publish/unknown volume", all(NF), "", publish(unknown, a.staging, other)},
		{"publish/another node's volume", all(NF), "", publish(otherNode, a.staging, other)},

		// NodeUnpublishVolume
		{"unpublish/B's target", all(FP), b.target, unpublish(a.id, b.target)},
		{"unpublish/B's staging path", all(FP, "btrfs", skip, "dir", skip, "loopblock", skip), b.staging, unpublish(a.id, b.staging)},
		{"unpublish/a foreign mount", all(FP), pl["foreign"], unpublish(a.id, pl["foreign"])},
		{"unpublish/a non-empty directory", all(FP), pl["nonempty"], unpublish(a.id, pl["nonempty"])},
		{"unpublish/a regular file", all(FP), pl["file"], unpublish(a.id, pl["file"])},
		{"unpublish/a symlink", all(FP), pl["symlink"], unpublish(a.id, pl["symlink"])},
		{"unpublish/nested in a loop volume", all(FP), pl["nested-loop"], unpublish(a.id, pl["nested-loop"])},
		{"unpublish/nested in a btrfs volume", all(FP), pl["nested-btrfs"], unpublish(a.id, pl["nested-btrfs"])},
		{"unpublish/the pool's directory", all(FP), poolDir, unpublish(a.id, poolDir)},
		{"unpublish/the pool disk", all(FP), disk, unpublish(a.id, disk)},
		{"unpublish/a missing target", all(OK), "", unpublish(a.id, other)},
		{"unpublish/unknown volume, a regular file", all(NF), "", unpublish(unknown, pl["file"])},
		{"unpublish/unknown volume, a foreign mount", all(NF), "", unpublish(unknown, pl["foreign"])},
		{"unpublish/another node's volume, B's target", all(NF), "", unpublish(otherNode, b.target)},

		// NodeGetVolumeStats
		{"stats/own target", all(OK), "", stats(a.id, a.target)},
		{"stats/own staging path", all(NF, "loop", OK), a.staging, stats(a.id, a.staging)},
		{"stats/B's target", all(NF), b.target, stats(a.id, b.target)},
		{"stats/B's staging path", all(NF), b.staging, stats(a.id, b.staging)},
		{"stats/a foreign mount", all(NF), pl["foreign"], stats(a.id, pl["foreign"])},
		{"stats/the pool disk", all(NF), disk, stats(a.id, disk)},
		{"stats/the pool's directory", all(NF), poolDir, stats(a.id, poolDir)},
		{"stats/a regular file", all(NF), pl["file"], stats(a.id, pl["file"])},
		{"stats/unknown volume", all(NF), "", stats(unknown, a.target)},

		// NodeExpandVolume (no capacity range: reports the size)
		{"expand/own target", all(OK), "", expand(a.id, a.target)},
		{"expand/B's target", all(NF), b.target, expand(a.id, b.target)},
		{"expand/a foreign mount", all(NF), pl["foreign"], expand(a.id, pl["foreign"])},
		{"expand/the pool's directory", all(NF), poolDir, expand(a.id, poolDir)},
		{"expand/unknown volume", all(NF), "", expand(unknown, a.target)},
	}
}

func mustMkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
