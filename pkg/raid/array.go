// Package raid reports the md RAID arrays under the pools: it finds them in
// sysfs (Finder), re-reads them each period (Watcher), tells the driver and
// the Node Events which pools are degraded, and exports their state to
// Prometheus (Collector). A degraded array is reported, never fenced:
// fencing is pkg/health's business.
package raid

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// Which md arrays sit under a pool's filesystem, and whether they have lost
// redundancy.
//
// A degraded array still serves every read and write, so the health probe
// passes and the pool is not fenced; but one more failed disk may lose the
// pool's data. The driver therefore reports degradation separately from
// fencing (see pkg/driver/health.go). Everything here is read from sysfs, the
// same files mdadm --detail reads, so it needs no tools and no privileges.
//
// The device under a pool is found from the mount table: the mount holding
// the pool directory names a device number (major:minor), and
// /sys/dev/block/M:m leads to the block device. From there the chain of
// stacked devices is walked down through "slaves" (device-mapper, md) and
// from a partition to its disk, until md arrays are reached. An md array's
// members are not walked further: the array is what has redundancy.

// Array is one md array under a pool, as sysfs describes it.
type Array struct {
	// Name is the kernel's name of the array, e.g. "md0".
	Name string
	// Level is md/level, e.g. "raid10", "raid1", "raid0".
	Level string
	// State is md/array_state: "clean", "active", "read-auto", "inactive",
	// "broken" (a raid0/linear array that lost a member), ...
	State string
	// RaidDisks is md/raid_disks, the number of member slots.
	RaidDisks int
	// Degraded is md/degraded: member slots without a working device.
	// Levels without redundancy have no such file and report 0.
	Degraded int
	// SyncAction is md/sync_action: "idle", "recover" (rebuilding onto a
	// replacement), "resync", "check", ...; empty for levels without it.
	SyncAction string
	// Members are the array's devices (md/dev-*), sorted by name.
	Members []ArrayMember
}

// ArrayMember is one device of an md array.
type ArrayMember struct {
	// Name is the member's kernel name, e.g. "vdb" or "sda1".
	Name string
	// State is md/dev-<name>/state, a comma-separated list such as
	// "in_sync", "faulty", "spare" or "in_sync,write_mostly".
	State string
	// Slot is md/dev-<name>/slot: the member's role, or "none" for a spare
	// or a faulty device.
	Slot string
}

// Member state classes, as counted by ArrayMember.Class.
const (
	MemberInSync = "in_sync"
	MemberFaulty = "faulty"
	MemberSpare  = "spare"
	MemberOther  = "other"
)

// MemberClasses lists every class ArrayMember.Class returns.
var MemberClasses = []string{MemberInSync, MemberFaulty, MemberSpare, MemberOther}

// Class reduces the member's state flags to one class: faulty wins over
// anything else (a faulty member may keep other flags), then spare (which
// includes a replacement being rebuilt), then in_sync.
func (m ArrayMember) Class() string {
	flags := strings.Split(m.State, ",")
	has := func(f string) bool {
		for _, x := range flags {
			if strings.TrimSpace(x) == f {
				return true
			}
		}
		return false
	}
	switch {
	case has("faulty"):
		return MemberFaulty
	case has("spare"):
		return MemberSpare
	case has("in_sync"):
		return MemberInSync
	}
	return MemberOther
}

// Faulty lists the names of the members marked faulty.
func (a Array) Faulty() []string {
	var out []string
	for _, m := range a.Members {
		if m.Class() == MemberFaulty {
			out = append(out, m.Name)
		}
	}
	return out
}

// IsDegraded reports whether the array runs without full redundancy: a
// member slot is empty (md/degraded > 0, which stays set after a failed
// member is removed and until a rebuild completes), a member is still
// marked faulty, or a non-redundant array is "broken".
func (a Array) IsDegraded() bool {
	return a.Degraded > 0 || len(a.Faulty()) > 0 || a.State == "broken"
}

// String describes the array in one line for logs and health messages, e.g.
// "md0 (raid10, 4 devices): degraded, 1 missing, faulty: vdb; array_state
// clean, sync_action idle".
func (a Array) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s, %d devices): ", a.Name, a.Level, a.RaidDisks)
	if a.IsDegraded() {
		b.WriteString("degraded")
		if a.Degraded > 0 {
			fmt.Fprintf(&b, ", %d missing", a.Degraded)
		}
		if f := a.Faulty(); len(f) > 0 {
			fmt.Fprintf(&b, ", faulty: %s", strings.Join(f, " "))
		}
	} else {
		b.WriteString("optimal")
	}
	fmt.Fprintf(&b, "; array_state %s", a.State)
	if a.SyncAction != "" {
		fmt.Fprintf(&b, ", sync_action %s", a.SyncAction)
	}
	return b.String()
}

// Finder finds the md arrays under a path. The zero value reads the
// running system; tests point it at a fake sysfs and mount table.
type Finder struct {
	// SysfsRoot is where sysfs is mounted; "" means /sys.
	SysfsRoot string
	// MountInfoPath is the mount table; "" means /proc/self/mountinfo.
	MountInfoPath string
}

// maxStackDepth bounds the walk down stacked devices; real stacks are a
// few levels (dm-crypt on LVM on md on partitions), and a cycle in a
// broken sysfs must not loop forever.
const maxStackDepth = 16

// Arrays returns the md arrays under the filesystem holding path, in the
// order the walk reaches them. A path on a filesystem without a block
// device (tmpfs, overlay, NFS) or on plain disks has none: nil, nil.
func (f Finder) Arrays(path string) ([]Array, error) {
	sys, mi := f.SysfsRoot, f.MountInfoPath
	if sys == "" {
		sys = "/sys"
	}
	infos, err := mountinfo.Read(mi)
	if err != nil {
		return nil, fmt.Errorf("find arrays under %s: %w", path, err)
	}
	// The mount table lists real paths: resolve a pool configured through
	// a symlink (best effort; a path that does not resolve is taken as is).
	real := filepath.Clean(path)
	if r, err := filepath.EvalSymlinks(real); err == nil {
		real = r
	}
	m, _, ok := mountinfo.Holder(infos, real)
	if !ok {
		return nil, fmt.Errorf("find arrays under %s: no mount holds it", path)
	}
	major, minor, ok := blockDevOf(m)
	if !ok {
		return nil, nil
	}
	top, err := filepath.EvalSymlinks(filepath.Join(sys, "dev", "block", fmt.Sprintf("%d:%d", major, minor)))
	if errors.Is(err, fs.ErrNotExist) {
		// Not a block device sysfs knows (e.g. a virtual filesystem
		// with a real-looking device number).
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find arrays under %s: device %d:%d: %w", path, major, minor, err)
	}
	var out []Array
	seen := map[string]bool{}
	if err := walkStack(top, 0, seen, &out); err != nil {
		return nil, fmt.Errorf("find arrays under %s (device %d:%d): %w", path, major, minor, err)
	}
	return out, nil
}

// blockDevOf is the block device a mount sits on. The mount table's device
// number is right for most filesystems, but btrfs reports an anonymous one
// (major 0) for every mount; then the mount source, if it is a block device
// node, names the device (for a multi-device btrfs, only the one it was
// mounted by).
func blockDevOf(m *mount.MountInfo) (major, minor uint32, ok bool) {
	if m.Major != 0 {
		return uint32(m.Major), uint32(m.Minor), true
	}
	if !strings.HasPrefix(m.Source, "/") {
		return 0, 0, false
	}
	var st unix.Stat_t
	if err := unix.Stat(m.Source, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, false
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev), true
}

// walkStack collects the md arrays at or below the block device whose sysfs
// directory is dir.
func walkStack(dir string, depth int, seen map[string]bool, out *[]Array) error {
	if depth > maxStackDepth {
		return fmt.Errorf("device stack deeper than %d at %s", maxStackDepth, dir)
	}
	if seen[dir] {
		return nil
	}
	seen[dir] = true
	if isDir(filepath.Join(dir, "md")) {
		a, err := readArray(dir)
		if err != nil {
			return err
		}
		*out = append(*out, a)
		return nil
	}
	// A partition's stack is its disk's: md on a partitioned md array
	// (md0p1), or a partition of a dm device.
	if isFile(filepath.Join(dir, "partition")) {
		return walkStack(filepath.Dir(dir), depth+1, seen, out)
	}
	slaves, err := os.ReadDir(filepath.Join(dir, "slaves"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // a plain disk
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", filepath.Join(dir, "slaves"), err)
	}
	for _, s := range slaves {
		next, err := filepath.EvalSymlinks(filepath.Join(dir, "slaves", s.Name()))
		if err != nil {
			return fmt.Errorf("resolve %s: %w", filepath.Join(dir, "slaves", s.Name()), err)
		}
		if err := walkStack(next, depth+1, seen, out); err != nil {
			return err
		}
	}
	return nil
}

// readArray reads an md array from its sysfs block directory (the one with
// the md/ subdirectory).
func readArray(dir string) (Array, error) {
	md := filepath.Join(dir, "md")
	a := Array{Name: filepath.Base(dir)}
	var err error
	if a.Level, err = readAttr(md, "level", true); err != nil {
		return Array{}, err
	}
	if a.State, err = readAttr(md, "array_state", true); err != nil {
		return Array{}, err
	}
	if a.RaidDisks, err = readIntAttr(md, "raid_disks", true); err != nil {
		return Array{}, err
	}
	// Only redundant levels have degraded and sync_action.
	if a.Degraded, err = readIntAttr(md, "degraded", false); err != nil {
		return Array{}, err
	}
	if a.SyncAction, err = readAttr(md, "sync_action", false); err != nil {
		return Array{}, err
	}
	devs, err := filepath.Glob(filepath.Join(md, "dev-*"))
	if err != nil {
		return Array{}, fmt.Errorf("list members of %s: %w", a.Name, err)
	}
	for _, d := range devs {
		m := ArrayMember{Name: strings.TrimPrefix(filepath.Base(d), "dev-")}
		if m.State, err = readAttr(d, "state", true); err != nil {
			// A member removed between the glob and the read is gone;
			// md/degraded already counts its slot.
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return Array{}, err
		}
		if m.Slot, err = readAttr(d, "slot", false); err != nil {
			return Array{}, err
		}
		a.Members = append(a.Members, m)
	}
	sort.Slice(a.Members, func(i, j int) bool { return a.Members[i].Name < a.Members[j].Name })
	return a, nil
}

// readAttr reads one sysfs attribute, trimmed; a missing optional one is "".
func readAttr(dir, name string, required bool) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		if !required && errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("read %s: %w", filepath.Join(dir, name), err)
	}
	return strings.TrimSpace(string(b)), nil
}

func readIntAttr(dir, name string, required bool) (int, error) {
	s, err := readAttr(dir, name, required)
	if err != nil || s == "" {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("read %s: %q is not a number", filepath.Join(dir, name), s)
	}
	return n, nil
}

// within reports whether p is dir or below it (clean absolute paths).
func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
