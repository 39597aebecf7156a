package node

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLoopExt4JournalAllocated: a new ext4 loop volume's journal is
// allocated in its image at creation (mkfs's lazy_journal_init=0), on each
// filesystem a pool may be on. A lazily initialised journal would be holes
// in the sparse image, which the volume's first fsyncs fill one by one, each
// paying an allocation and a commit in the pool's filesystem (the translog
// cost measured in docs/benchmarks.md). The image stays sparse otherwise:
// its inode tables are still initialised lazily.
func TestLoopExt4JournalAllocated(t *testing.T) {
	const size = 256 * mib
	for _, disk := range []string{"xfs", "ext4", "btrfs"} {
		t.Run(disk, func(t *testing.T) {
			m := openManager(t, newPoolOnDisk(t, disk, 512*mib), BackendLoop, &fakeClock{t: time.Now()})
			t.Cleanup(m.Close)
			v, err := m.CreateVolume(context.Background(), CreateRequest{Name: "log", RequiredBytes: size, AccessType: AccessMount, Mode: 0o777})
			if err != nil {
				t.Fatalf("CreateVolume: %v", err)
			}
			if v.FsType != "ext4" {
				t.Fatalf("volume's fsType %q, want the loop default ext4", v.FsType)
			}
			p := m.Pools()[0]
			img := filepath.Join(p.Path, dirVolumes, v.Name, imageName)
			journal := ext4JournalBytes(t, img)
			allocated, err := p.backend.Allocated(volumeDir{st: p.st, rel: filepath.Join(dirVolumes, v.Name)}, v)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s pool: %d MiB image, journal %d MiB, %.1f MiB allocated after mkfs", disk, size/mib, journal/mib, float64(allocated)/mib)
			if allocated < journal {
				t.Errorf("%d bytes allocated in the image, less than its %d-byte journal: the journal was left to lazy init", allocated, journal)
			}
			if allocated > size/2 {
				t.Errorf("%d bytes allocated in a %d-byte image: no longer sparse (inode tables written at mkfs?)", allocated, size)
			}
		})
	}
}

// ext4JournalBytes reads the size of the journal inode (<8>) of the ext4
// filesystem in img.
func ext4JournalBytes(t *testing.T, img string) int64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "stat <8>", img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs stat <8> %s: %v: %s", img, err, out)
	}
	mm := regexp.MustCompile(`Size: (\d+)`).FindSubmatch(out)
	if mm == nil {
		t.Fatalf("debugfs stat <8> %s shows no size:\n%s", img, out)
	}
	n, err := strconv.ParseInt(string(mm[1]), 10, 64)
	if err != nil || n <= 0 {
		t.Fatalf("journal size %q: %v", mm[1], err)
	}
	return n
}

// BenchmarkCreateLoopExt4: CreateVolume of an ext4 loop volume (sparse
// image and mkfs, journal zeroed) of 1 GiB and 64 GiB on an xfs pool, then
// DeleteVolume and a purge of the trash, per iteration. The journal grows
// with the filesystem (32 MiB at 1 GiB, 512 MiB at 64 GiB): this is what
// zeroing it at mkfs costs creation. Figures in docs/benchmarks.md.
//
// The preallocated cases write the image through (StorageClass
// preallocate: "true"): creation then costs the size at the disk's
// sequential write speed.
func BenchmarkCreateLoopExt4(b *testing.B) {
	cases := []struct {
		size        int64
		preallocate bool
	}{{1 << 30, false}, {64 << 30, false}, {1 << 30, true}, {4 << 30, true}}
	for _, c := range cases {
		size := c.size
		name := fmt.Sprintf("%dGiB", size>>30)
		if c.preallocate {
			name = "preallocated/" + name
		}
		b.Run(name, func(b *testing.B) {
			m := benchManager(b, "xfs", BackendLoop, 2*size+(1<<30))
			ctx := context.Background()
			var creates []time.Duration
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				name := fmt.Sprintf("pvc-%04d", i)
				b.StartTimer()
				t0 := time.Now()
				v, err := m.CreateVolume(ctx, CreateRequest{Name: name, RequiredBytes: size, AccessType: AccessMount, Mode: 0o777, Preallocate: c.preallocate})
				if err != nil {
					b.Fatal(err)
				}
				creates = append(creates, time.Since(t0))
				b.StopTimer()
				if err := m.DeleteVolume(ctx, v.ID); err != nil {
					b.Fatal(err)
				}
				if _, err := m.PurgeTrash(ctx, 0); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.StopTimer()
			reportPercentiles(b, "create", creates)
			b.Logf("mkfs: %s", strings.Join(loopFsTypes["ext4"].mkfs, " "))
		})
	}
}
