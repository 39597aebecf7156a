package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/internal/vmtest"
	"golang.org/x/sys/unix"
)

// TestLoopPowerCutVM cuts the power under a loop volume that is taking a
// translog, and checks that every record acknowledged by fdatasync before
// the cut is there, intact, after the node comes back.
//
// The pool is XFS on a device-mapper device over the VM's disk. A writer
// appends 4 KiB records to a file in an ext4 loop volume (dhpp's mkfs,
// attached and mounted by StageVolume), each followed by fdatasync, record
// n written only once n-1 was acknowledged. The power cut is the dm table
// switched to dm-flakey drop_writes: from then on every write and flush
// "succeeds" and reaches nothing, as on a disk whose power is gone. The
// writer goes on into the void for a while; then everything is torn down
// (unstage, the pool's filesystem unmounted, caches dropped: what was not
// on the disk is lost), the disk "powered" again (linear table), the pool
// mounted (XFS log recovery), a new Manager opened on it and the volume
// staged again the normal way (the kernel replays the volume's ext4
// journal at mount). The loop path passes a flush of the volume on as an
// fsync of the image (direct I/O, no second cache), so an acknowledged
// record was on the disk before the cut.
//
// The file must then hold at least the records acknowledged before the cut,
// each intact and in order, and fewer than were acknowledged in all: the
// ones written after the cut are gone, which shows the cut was one.
func TestLoopPowerCutVM(t *testing.T) {
	// 4 minutes: the boot alone took 20-80 s under TCG on a loaded host.
	if !vmtest.Run(t, vmtest.Config{Disks: []int64{320 * mib}, Timeout: 4 * time.Minute}) {
		return
	}
	ctx := context.Background()
	disk := newCuttableDisk(t, "/dev/vda", "powercut")
	vmMkfs(t, disk.dev, []string{"mkfs.xfs", "-q", "-f"})
	mnt, err := os.MkdirTemp("/mnt", "pool")
	if err != nil {
		t.Fatal(err)
	}
	mountPool := func() {
		t.Helper()
		if err := unix.Mount(disk.dev, mnt, "xfs", 0, ""); err != nil {
			t.Fatalf("mount %s: %v", disk.dev, err)
		}
	}
	mountPool()
	t.Cleanup(func() { unix.Unmount(mnt, 0) }) // if a failure left it mounted
	pool := filepath.Join(mnt, "dhpp")
	if err := os.Mkdir(pool, 0o755); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := openManager(t, pool, BackendLoop, clock)
	v, err := m.CreateVolume(ctx, CreateRequest{Name: "translog", RequiredBytes: 64 * mib, AccessType: AccessMount, Mode: 0o777})
	if err != nil {
		t.Fatalf("CreateVolume: %v", err)
	}
	if v.FsType != "ext4" {
		t.Fatalf("volume's fsType %q, want the loop default ext4", v.FsType)
	}
	staging := filepath.Join(t.TempDir(), "staging")
	stage := func(m *Manager) {
		t.Helper()
		if err := m.StageVolume(ctx, StageRequest{VolumeID: v.ID, StagingPath: staging, AccessType: AccessMount}); err != nil {
			t.Fatalf("StageVolume: %v", err)
		}
	}
	stage(m)

	const wantBefore, wantAfter = 100, 50
	w := startTranslog(t, filepath.Join(staging, "log"))
	start := time.Now()
	if !w.waitAcked(wantBefore, time.Minute) {
		n, err := w.stop()
		t.Fatalf("translog before the cut: %d records acknowledged, want %d (error: %v)", n, wantBefore, err)
	}
	beforeCut := w.acked.Load()
	disk.load(t, disk.dropWrites)
	cutAt := time.Now()
	// Records acknowledged while the table was being switched may have
	// reached the disk; the ones written from here on cannot. On into
	// the void: ext4 may also stop the writer with an error (it reads
	// back blocks the cut kept from the disk).
	cutDone := w.acked.Load()
	w.waitAcked(cutDone+wantAfter, 20*time.Second)
	total, werr := w.stop()
	t.Logf("%d records acknowledged before the cut (in %s), %d by the time it was in place, %d in all (%d after it, in %s); writer's error after the cut: %v",
		beforeCut, cutAt.Sub(start).Round(time.Millisecond), cutDone, total, total-cutDone, time.Since(cutAt).Round(time.Millisecond), werr)

	// Everything down: what is only in memory is lost.
	if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
		t.Fatalf("UnstageVolume after the cut: %v", err)
	}
	m.Close()
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatalf("unmount the pool after the cut: %v", err)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}

	// Power back: the disk holds what reached it before the cut.
	downFor := time.Since(cutAt)
	disk.load(t, disk.linear)
	mountPool()
	m = openManager(t, pool, BackendLoop, clock)
	defer m.Close()
	stage(m)
	defer func() {
		if err := m.UnstageVolume(ctx, v.ID, staging); err != nil {
			t.Errorf("UnstageVolume: %v", err)
		}
	}()
	got, err := os.ReadFile(filepath.Join(staging, "log"))
	if err != nil {
		t.Fatalf("the translog after the power cut: %v", err)
	}
	n, err := checkTranslog(got)
	t.Logf("after the power cut (down %s, back up and staged in %s): %d records in the file (%d acknowledged before the cut, %d in all)",
		downFor.Round(time.Millisecond), time.Since(cutAt.Add(downFor)).Round(time.Millisecond), n, beforeCut, total)
	if err != nil {
		t.Fatalf("translog after the power cut: %v", err)
	}
	if n < beforeCut {
		t.Errorf("%d records survived, but %d were acknowledged by fdatasync before the cut: acknowledged writes were lost", n, beforeCut)
	}
	if n >= total {
		t.Errorf("all %d records survived, also the %d written after the cut: the cut dropped nothing, so the test proves nothing", n, total-cutDone)
	}
}

// cuttableDisk is a dm device over a disk whose table can be switched to
// one that drops every write (a power cut).
type cuttableDisk struct {
	name, dev          string
	linear, dropWrites string
}

func newCuttableDisk(t *testing.T, under, name string) *cuttableDisk {
	t.Helper()
	sectors := strings.TrimSpace(testdisk.Run(t, "blockdev", "--getsz", under))
	d := &cuttableDisk{
		name:   name,
		dev:    "/dev/mapper/" + name,
		linear: "0 " + sectors + " linear " + under + " 0",
		// up 0 s, down 3600 s: writes are dropped from the moment it
		// is loaded; reads still reach the disk.
		dropWrites: "0 " + sectors + " flakey " + under + " 0 0 3600 1 drop_writes",
	}
	testdisk.Run(t, "dmsetup", "create", name, "--table", d.linear)
	t.Cleanup(func() {
		if out, err := exec.Command("dmsetup", "remove", name).CombinedOutput(); err != nil {
			t.Errorf("dmsetup remove %s: %v: %s", name, err, out)
		}
	})
	return d
}

// load switches the table. --nolockfs: a power cut does not freeze (and so
// flush) the filesystem above first.
func (d *cuttableDisk) load(t *testing.T, table string) {
	t.Helper()
	testdisk.Run(t, "dmsetup", "suspend", "--nolockfs", d.name)
	testdisk.Run(t, "dmsetup", "reload", d.name, "--table", table)
	testdisk.Run(t, "dmsetup", "resume", d.name)
}

// Translog records: 4 KiB, the first 8 bytes the record's number (from 1),
// the rest a pattern of it, so a record is intact only if it is exactly
// translogRecord(its number).
const translogRecordSize = 4096

func translogRecord(n int64) []byte {
	r := make([]byte, translogRecordSize)
	binary.LittleEndian.PutUint64(r, uint64(n))
	for i := 8; i < len(r); i += 8 {
		binary.LittleEndian.PutUint64(r[i:], uint64(n)*0x9e3779b97f4a7c15+uint64(i))
	}
	return r
}

// checkTranslog returns how many records b holds, or an error if it is
// not whole records 1, 2, ... each intact.
func checkTranslog(b []byte) (int64, error) {
	if len(b)%translogRecordSize != 0 {
		return 0, fmt.Errorf("file size %d is not a whole number of %d-byte records", len(b), translogRecordSize)
	}
	var n int64
	for ; int(n)*translogRecordSize < len(b); n++ {
		off := int(n) * translogRecordSize
		if !bytes.Equal(b[off:off+translogRecordSize], translogRecord(n+1)) {
			return n, fmt.Errorf("record %d (at byte %d) is damaged or out of order", n+1, off)
		}
	}
	return n, nil
}

// translogWriter appends records with an fdatasync after each, in a
// goroutine; acked counts the records whose fdatasync returned.
type translogWriter struct {
	acked   atomic.Int64
	stopped atomic.Bool
	quit    chan struct{}
	done    sync.WaitGroup
	err     error // the write or fdatasync that stopped it; read after done
}

func startTranslog(t *testing.T, path string) *translogWriter {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w := &translogWriter{quit: make(chan struct{})}
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		defer w.stopped.Store(true)
		defer f.Close()
		for n := int64(1); ; n++ {
			select {
			case <-w.quit:
				return
			default:
			}
			if _, err := f.Write(translogRecord(n)); err != nil {
				w.err = err
				return
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				w.err = err
				return
			}
			w.acked.Store(n)
		}
	}()
	t.Cleanup(func() { w.stop() })
	return w
}

// waitAcked waits until n records are acknowledged (true), or the writer
// stopped or limit passed first (false).
func (w *translogWriter) waitAcked(n int64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for w.acked.Load() < n {
		if w.stopped.Load() || time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// stop stops the writer and returns the records acknowledged and the
// error that stopped it early, if any.
func (w *translogWriter) stop() (int64, error) {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
	w.done.Wait()
	return w.acked.Load(), w.err
}
