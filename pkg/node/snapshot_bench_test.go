package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSnapshotRestore measures, per host backend, the time and the
// pool space of a snapshot and of a restore of a 1 GiB volume holding
// 10,000 files (80 KiB each, 781 MiB), against `cp -a` of the same
// storage (the data tree, or the loop image) within the pool, with
// coreutils' default reflinking and without (--reflink=never). One round
// per -benchtime iteration; figures in docs/benchmarks.md.
//
//	go test -run '^$' -bench BenchmarkSnapshotRestore -benchtime 1x ./pkg/node/
func BenchmarkSnapshotRestore(b *testing.B) {
	for _, c := range []struct {
		fs   string
		kind BackendKind
	}{
		{"btrfs", BackendBtrfs},
		{"xfs", BackendDir},  // the file-by-file reflink of the xfs backend
		{"ext4", BackendDir}, // the file-by-file copy of the ext4 backend
		{"btrfs", BackendLoop},
		{"xfs", BackendLoop},
		{"ext4", BackendLoop},
	} {
		b.Run(fmt.Sprintf("%s-on-%s", c.kind, c.fs), func(b *testing.B) {
			for i := range b.N {
				benchSnapshotRound(b, c.fs, c.kind, i)
			}
		})
	}
}

const (
	benchFiles    = 10000
	benchFileSize = 80 << 10
)

func benchSnapshotRound(b *testing.B, fsType string, kind BackendKind, round int) {
	b.StopTimer()
	ctx := context.Background()
	m := benchManager(b, fsType, kind, 8<<30)
	p := m.Pools()[0]
	v, err := m.CreateVolume(ctx, CreateRequest{Name: "src", RequiredBytes: 1 << 30, Mode: 0o755})
	if err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(p.Path, dirVolumes, v.Name, dataName)
	storage := root
	if kind == BackendLoop {
		storage = filepath.Join(p.Path, dirVolumes, v.Name, imageName)
		root = b.TempDir()
		if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: root, AccessType: AccessMount}); err != nil {
			b.Fatal(err)
		}
		defer func() {
			if err := m.UnstageVolume(ctx, v.ID, root); err != nil {
				b.Error(err)
			}
		}()
	}
	fillFiles(b, root)
	used := func() int64 {
		if err := unix.Syncfs(int(p.rootFile.Fd())); err != nil {
			b.Fatal(err)
		}
		var st unix.Statfs_t
		if err := unix.Fstatfs(int(p.rootFile.Fd()), &st); err != nil {
			b.Fatal(err)
		}
		return int64(st.Blocks-st.Bfree) * st.Bsize
	}
	measure := func(name string, f func() error) {
		before := used()
		dropCaches(b) // each copy reads from the disk, not from what the one before cached
		start := time.Now()
		b.StartTimer()
		err := f()
		used := used() // the data made durable is part of the work
		b.StopTimer()
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		b.ReportMetric(time.Since(start).Seconds(), name+"-s")
		b.ReportMetric(float64(used-before)/(1<<20), name+"-MiB")
		b.Logf("round %d: %s %.2f s, %.1f MiB", round, name, time.Since(start).Seconds(), float64(used-before)/(1<<20))
	}
	var snap *Snapshot
	dhpp := func() {
		measure("snapshot", func() (err error) {
			snap, err = m.CreateSnapshot(ctx, SnapshotRequest{Name: "snap", SourceVolumeID: v.ID})
			return err
		})
		measure("restore", func() error {
			_, err := m.CreateVolume(ctx, CreateRequest{Name: "restored", RequiredBytes: 1 << 30, Mode: 0o755, Source: &ContentSource{SnapshotID: snap.ID}})
			return err
		})
	}
	// cp -a of coreutils 9 reflinks where it can (--reflink=auto is its
	// default); --reflink=never is a plain copy.
	cp := func() {
		for i, args := range [][]string{{"-a"}, {"-a", "--reflink=never"}} {
			measure([]string{"cp-a", "cp-a-noreflink"}[i], func() error {
				args := append(args, storage, filepath.Join(p.Path, fmt.Sprintf("cp-copy-%d", i)))
				if out, err := exec.Command("cp", args...).CombinedOutput(); err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
		}
	}
	// The copies that run first after the volume was filled pay for the
	// background work the fill left (the inner ext4's lazy inode-table
	// init, writeback): odd rounds run cp first, so -benchtime 2x shows
	// both orders.
	if round%2 == 0 {
		dhpp()
		cp()
	} else {
		cp()
		dhpp()
	}
	b.Logf("%s round %d: snapshot method %s, %d bytes stored", b.Name(), round, snap.Method, snap.StoredBytes)
}

// fillFiles writes benchFiles files of benchFileSize random-ish bytes into
// 100 directories under root.
func fillFiles(b *testing.B, root string) {
	buf := make([]byte, benchFileSize)
	for i := range buf {
		buf[i] = byte(i*7 + i>>9)
	}
	for i := range benchFiles {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", i%100))
		if i < 100 {
			if err := os.Mkdir(dir, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		buf[0], buf[1] = byte(i), byte(i>>8) // no two files alike (no dedup anywhere)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), buf, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	unix.Sync()
}
