package crash

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// This file reads and writes the host directly, as a pod and an operator
// would: the data written through mounts, the mount table, loop devices
// and the pool directory's documented layout (README "The disk describes
// itself").

// mountTable maps each mount point of this mount namespace to its source.
func mountTable() (map[string]string, error) {
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(infos))
	for _, mi := range infos {
		m[mi.MountPoint] = mi.Source
	}
	return m, nil
}

// loopBacking maps each bound loop device (/dev/loopN) to its backing file.
func loopBacking() map[string]string {
	out := map[string]string{}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		out[dev] = strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
	}
	return out
}

// writeFile writes data as a new file and makes it durable: fsync of the
// file, then of its directory (the new name).
func writeFile(dir, name string, data []byte) error {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeBlock writes data at off of a block device and fsyncs the device.
func writeBlock(dev string, off int64, data []byte) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readBlock reads size bytes at off of a block device.
func readBlock(dev string, off int64, size int) ([]byte, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, size)
	n, err := f.ReadAt(b, off)
	return b[:n], err
}

// deviceBytes is the size of a block device (or file).
func deviceBytes(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// checkFiles reads back every piece of data written to the volume: files
// below dir, or ranges of the block device at dir when block is set.
func checkFiles(dir string, block bool, files []file) error {
	var bad []string
	for _, f := range files {
		var b []byte
		var err error
		if block {
			b, err = readBlock(dir, f.off, f.size)
		} else {
			b, err = os.ReadFile(filepath.Join(dir, f.name))
		}
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", f.name, err))
		case len(b) != f.size:
			bad = append(bad, fmt.Sprintf("%s: %d bytes, wrote %d", f.name, len(b), f.size))
		case sha256.Sum256(b) != f.sum:
			bad = append(bad, fmt.Sprintf("%s: sha256 %x, wrote %x", f.name, sha256.Sum256(b), f.sum))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d fsynced files differ under %s: %s", len(bad), len(files), dir, strings.Join(bad, "; "))
	}
	return nil
}

// record is the part of a volume's on-disk volume.json the test checks.
type record struct {
	ID            string `json:"id"`
	Pool          string `json:"pool"`
	CapacityBytes int64  `json:"capacityBytes"`
	TargetBytes   int64  `json:"targetBytes"`
	Phase         string `json:"phase"`
}

// readRecord reads volumes/<name>/volume.json of a pool and checks that
// the volume's payload (data/ or disk.img) is next to it.
func readRecord(poolPath, name string) (record, error) {
	dir := filepath.Join(poolPath, "volumes", name)
	b, err := os.ReadFile(filepath.Join(dir, "volume.json"))
	if err != nil {
		return record{}, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return record{}, fmt.Errorf("volume.json (%d bytes) does not parse: %w", len(b), err)
	}
	_, derr := os.Lstat(filepath.Join(dir, "data"))
	_, ierr := os.Lstat(filepath.Join(dir, "disk.img"))
	if derr != nil && ierr != nil {
		return r, fmt.Errorf("neither data/ nor disk.img next to volume.json in %s", dir)
	}
	return r, nil
}

// onDisk reports whether the pool has a directory for the volume.
func onDisk(poolPath, name string) bool {
	_, err := os.Lstat(filepath.Join(poolPath, "volumes", name))
	return err == nil
}

// dirEntries lists a directory's entry names.
func dirEntries(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// fsBytes is the size statfs reports for the filesystem mounted at dir.
func fsBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Blocks) * st.Bsize, nil
}

// unmountAllBelow unmounts every mount at or below dir, deepest first (a
// lazy unmount if a normal one keeps failing), and reports what it did.
// It is the cleanup net for mounts the driver made on the test's paths.
func unmountAllBelow(dir string) (unmounted []string, errs []error) {
	mt, err := mountTable()
	if err != nil {
		return nil, []error{err}
	}
	var below []string
	for mp := range mt {
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			below = append(below, mp)
		}
	}
	sort.Slice(below, func(i, j int) bool { return len(below[i]) > len(below[j]) })
	for _, mp := range below {
		var err error
		for range 5 {
			if err = unix.Unmount(mp, 0); err == nil || errors.Is(err, unix.EINVAL) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, unix.EINVAL) {
			if lerr := unix.Unmount(mp, unix.MNT_DETACH); lerr != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %v; lazy: %w", mp, err, lerr))
				continue
			}
		}
		unmounted = append(unmounted, mp)
	}
	return unmounted, errs
}

// hasCapSysResource reports whether this process (and so the driver it
// starts) has CAP_SYS_RESOURCE, which ext4 online growth needs.
func hasCapSysResource() (bool, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(hex), "%x", &caps); err != nil {
				return false, err
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0, nil
		}
	}
	return false, errors.New("no CapEff line in /proc/self/status")
}

// loopInfo describes a loop device for a failure message: its flags, where
// it is mounted and which processes hold it open.
func loopInfo(dev string, mt map[string]string) string {
	name := filepath.Base(dev)
	flag := func(f string) string {
		b, err := os.ReadFile(filepath.Join("/sys/block", name, "loop", f))
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	var mounts []string
	for mp, src := range mt {
		if src == dev {
			mounts = append(mounts, mp)
		}
	}
	holders, _ := dirEntries(filepath.Join("/sys/block", name, "holders"))
	return fmt.Sprintf("%s: autoclear=%s dio=%s mounted at %v, holders %v, open by %v",
		dev, flag("autoclear"), flag("dio"), mounts, holders, openers(dev))
}

// openers lists the processes with dev open, as "pid(comm)".
func openers(dev string) []string {
	var out []string
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	seen := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && l == dev {
			pid := strings.Split(fd, "/")[2]
			if seen[pid] {
				continue
			}
			seen[pid] = true
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			out = append(out, pid+"("+strings.TrimSpace(string(comm))+")")
		}
	}
	return out
}

// trashedWithRecord reports whether the pool's trash has an entry of the
// volume (<name>@<nanos>) with its record.
func trashedWithRecord(poolPath, name string) bool {
	m, _ := filepath.Glob(filepath.Join(poolPath, ".dhpp", "trash", name+"@*", "volume.json"))
	return len(m) > 0
}
