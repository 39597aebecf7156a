package node

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestXFSCloneMountsBesideSource stages an XFS image volume, clones it and
// restores a snapshot of it, and stages both copies while the source is
// still mounted: the copies carry the source's superblock UUID, which XFS
// refuses to mount twice unless dhpp mounts with nouuid (the upstream
// suite's "volume and its clone from pods on the same node").
func TestXFSCloneMountsBesideSource(t *testing.T) {
	ctx := context.Background()
	poolPath := newPoolOnDisk(t, "ext4", 2<<30)
	m := openManager(t, poolPath, BackendLoop, &fakeClock{})
	t.Cleanup(func() { m.Close() }) // after the unstages below (cleanups run last-in first-out)
	work := t.TempDir()
	stage := func(v *Volume) string {
		t.Helper()
		sp := filepath.Join(work, v.Name)
		if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: sp, AccessType: AccessMount}); err != nil {
			t.Fatalf("stage %s beside its source: %v", v.Name, err)
		}
		t.Cleanup(func() { _ = m.UnstageVolume(ctx, v.ID, sp) })
		return sp
	}
	const size = 320 * mib // XFS's minimum is 300 MiB
	src, err := m.CreateVolume(ctx, CreateRequest{Name: "src", RequiredBytes: size, FsType: "xfs", Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(stage(src), "data"), []byte("xfs source"), 0o644))
	snap, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap", SourceVolumeID: src.ID})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	for name, source := range map[string]*ContentSource{
		"clone":    {VolumeID: src.ID},
		"restored": {SnapshotID: snap.ID},
	} {
		v, err := m.CreateVolume(ctx, CreateRequest{Name: name, RequiredBytes: size, FsType: "xfs", Source: source})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got, err := os.ReadFile(filepath.Join(stage(v), "data")); err != nil || string(got) != "xfs source" {
			t.Errorf("%s's data = %q, %v; want the source's", name, got, err)
		}
	}
}

func TestImageMountOptions(t *testing.T) {
	for _, tc := range []struct {
		fsType string
		flags  []string
		want   []string
	}{
		{"xfs", nil, []string{"nouuid"}},
		{"xfs", []string{"noatime"}, []string{"noatime", "nouuid"}},
		{"xfs", []string{"nouuid"}, []string{"nouuid"}},
		{"ext4", []string{"noatime"}, []string{"noatime"}},
		{"ext4", nil, nil},
	} {
		flags := append([]string(nil), tc.flags...)
		got := imageMountOptions(tc.fsType, flags)
		if !slices.Equal(got, tc.want) || !slices.Equal(flags, tc.flags) {
			t.Errorf("imageMountOptions(%q, %v) = %v (flags now %v), want %v and the flags untouched", tc.fsType, tc.flags, got, flags, tc.want)
		}
	}
}
