package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/pkg/node/treecopy"
	"golang.org/x/sys/unix"
)

// BenchmarkImageCopyParts takes apart the copy of a loop image that a
// snapshot or restore makes on xfs and ext4 (cloneImage: treecopy.Clone
// without reflink), to find why it was slower than `cp --reflink=never` of
// the same image (docs/benchmarks.md, "Snapshots and clones"). One staged
// 1 GiB ext4 volume holding the files of BenchmarkSnapshotRestore; each
// part is timed from a dropped page cache to its data durable (fsync of
// the copy), side by side with cp in the same round, since the machine is
// shared: compare within a round. -benchtime Nx runs N rounds.
//
//	go test -run '^$' -bench BenchmarkImageCopyParts -benchtime 3x ./pkg/node/
func BenchmarkImageCopyParts(b *testing.B) {
	for _, fs := range []string{"xfs", "ext4"} {
		b.Run(fs, func(b *testing.B) {
			ctx := context.Background()
			m := benchManager(b, fs, BackendLoop, 8<<30)
			p := m.Pools()[0]
			v, err := m.CreateVolume(ctx, CreateRequest{Name: "src", RequiredBytes: 1 << 30, Mode: 0o755})
			if err != nil {
				b.Fatal(err)
			}
			staged := b.TempDir()
			if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staged, AccessType: AccessMount}); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = m.UnstageVolume(ctx, v.ID, staged) })
			fillFiles(b, staged)
			img := filepath.Join(p.Path, dirVolumes, v.Name, imageName)
			regions, data := dataRegions(b, img)
			b.Logf("%s: image has %d data regions, %d MiB of data", fs, regions, data>>20)
			base, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "base", SourceVolumeID: v.ID})
			if err != nil {
				b.Fatal(err)
			}
			parts := append(imageCopyParts(fs == "xfs", staged), dhppPaths(m, v, base)...)
			b.ResetTimer()
			for i := range b.N {
				line := fmt.Sprintf("%s round %d:", fs, i)
				// Each round starts one part later: no part always runs
				// right after the same one (a removal's deferred work, the
				// journal) or always first.
				for j := range parts {
					part := parts[(i+j)%len(parts)]
					dst := filepath.Join(p.Path, fmt.Sprintf("copy-%d-%s", i, part.name))
					if err := unix.Syncfs(int(p.rootFile.Fd())); err != nil {
						b.Fatal(err)
					}
					dropCaches(b)
					start := time.Now()
					if err := part.run(ctx, img, dst); err != nil {
						b.Fatalf("%s: %v", part.name, err)
					}
					took := time.Since(start).Seconds()
					b.ReportMetric(took, part.name+"-s")
					line += fmt.Sprintf(" %s %.2f", part.name, took)
					if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
						b.Fatal(err)
					}
				}
				b.Log(line)
			}
		})
	}
}

// dhppPaths are the whole snapshot and restore calls, each undone (deleted
// and purged) after its timing.
func dhppPaths(m *Manager, v *Volume, base *Snapshot) []imageCopyPart {
	syncPool := func() error { return m.Pools()[0].syncfs() }
	purge := func(ctx context.Context) error { _, err := m.PurgeTrash(ctx, 0); return err }
	return []imageCopyPart{
		{"snapshot", func(ctx context.Context, _, _ string) error {
			s, err := m.CreateSnapshot(ctx, SnapshotRequest{Name: "timed", SourceVolumeID: v.ID})
			if err == nil {
				err = syncPool()
			}
			if err != nil {
				return err
			}
			if err := m.DeleteSnapshot(ctx, s.ID); err != nil {
				return err
			}
			return purge(ctx)
		}},
		{"restore", func(ctx context.Context, _, _ string) error {
			r, err := m.CreateVolume(ctx, CreateRequest{Name: "timed", RequiredBytes: 1 << 30, Mode: 0o755, Source: &ContentSource{SnapshotID: base.ID}})
			if err == nil {
				err = syncPool()
			}
			if err != nil {
				return err
			}
			if err := m.DeleteVolume(ctx, r.ID); err != nil {
				return err
			}
			return purge(ctx)
		}},
	}
}

type imageCopyPart struct {
	name string
	run  func(ctx context.Context, img, dst string) error
}

// imageCopyParts lists the variants; on xfs copy_file_range would share
// extents (see canReflink), so it is not one of them there.
func imageCopyParts(xfs bool, staged string) []imageCopyPart {
	goCopy := func(buf int, kernel, sequential bool) func(context.Context, string, string) error {
		return func(ctx context.Context, img, dst string) error {
			return copyImageFile(ctx, img, dst, func(d, s *os.File, size int64) error {
				if sequential {
					if err := unix.Fadvise(int(s.Fd()), 0, 0, unix.FADV_SEQUENTIAL); err != nil {
						return err
					}
				}
				_, err := treecopy.SparseCopy(ctx, int(d.Fd()), int(s.Fd()), size, make([]byte, buf), kernel)
				return err
			})
		}
	}
	cp := func(args ...string) func(context.Context, string, string) error {
		return func(_ context.Context, img, dst string) error {
			if out, err := exec.Command("cp", append(args, img, dst)...).CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return syncFile(dst)
		}
	}
	parts := []imageCopyPart{
		{"dhpp-clone", func(ctx context.Context, img, dst string) error {
			return copyImageFile(ctx, img, dst, func(d, s *os.File, _ int64) error {
				_, _, err := treecopy.Clone(ctx, d, s, false, !xfs)
				return err
			})
		}},
		{"cp-never", cp("--reflink=never")},
		{"pread-128k", goCopy(128<<10, false, false)},
		{"pread-256k", goCopy(256<<10, false, false)},
		{"pread-1m", goCopy(1<<20, false, false)},
		{"pread-1m-seq", goCopy(1<<20, false, true)},
		{"freeze-thaw", func(context.Context, string, string) error {
			if err := mountIoctl(staged, ioctlFIFREEZE); err != nil {
				return err
			}
			return mountIoctl(staged, ioctlFITHAW)
		}},
	}
	if !xfs {
		parts = append(parts, imageCopyPart{"cfr-64m", goCopy(1<<20, true, false)})
	}
	return parts
}

// copyImageFile creates dst, runs copy from img into it and makes it durable.
func copyImageFile(_ context.Context, img, dst string, copy func(d, s *os.File, size int64) error) error {
	s, err := os.Open(img)
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := s.Stat()
	if err != nil {
		return err
	}
	d, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := copy(d, s, st.Size()); err != nil {
		return err
	}
	return d.Sync()
}

func syncFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// dataRegions counts the SEEK_DATA/SEEK_HOLE regions of a file and their bytes.
func dataRegions(b *testing.B, name string) (n int, bytes int64) {
	f, err := os.Open(name)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	fd := int(f.Fd())
	for off := int64(0); off < st.Size(); {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			break
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			b.Fatal(err)
		}
		n++
		bytes += end - start
		off = end
	}
	return n, bytes
}
