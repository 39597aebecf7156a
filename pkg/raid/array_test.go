package raid

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeSysfs builds a sysfs tree in a temporary directory, shaped like the
// kernel's: block devices under devices/, /sys/dev/block/M:m and slaves/
// as relative symlinks.
type fakeSysfs struct {
	t    *testing.T
	root string
}

func newFakeSysfs(t *testing.T) *fakeSysfs {
	return &fakeSysfs{t: t, root: t.TempDir()}
}

func (s *fakeSysfs) write(rel, content string) {
	s.t.Helper()
	p := filepath.Join(s.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content+"\n"), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// link makes rel a relative symlink to target (both relative to the root).
func (s *fakeSysfs) link(rel, target string) {
	s.t.Helper()
	p := filepath.Join(s.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	r, err := filepath.Rel(filepath.Dir(p), filepath.Join(s.root, target))
	if err != nil {
		s.t.Fatal(err)
	}
	if err := os.Symlink(r, p); err != nil {
		s.t.Fatal(err)
	}
}

// disk adds a block device at dir (relative) with number majMin.
func (s *fakeSysfs) disk(dir, majMin string) {
	s.write(filepath.Join(dir, "dev"), majMin)
	s.link(filepath.Join("dev/block", majMin), dir)
	s.link(filepath.Join("class/block", filepath.Base(dir)), dir)
}

// md adds an md array with attrs (file → content under md/), members
// ({name, state} in slot order) and slaves to their disk directories.
func (s *fakeSysfs) md(name, majMin string, attrs map[string]string, members [][2]string, memberDirs map[string]string) string {
	dir := "devices/virtual/block/" + name
	s.disk(dir, majMin)
	for f, c := range attrs {
		s.write(filepath.Join(dir, "md", f), c)
	}
	slot := 0
	for _, ms := range members {
		m, st := ms[0], ms[1]
		s.write(filepath.Join(dir, "md", "dev-"+m, "state"), st)
		sl := fmt.Sprint(slot)
		if strings.Contains(st, "faulty") || strings.Contains(st, "spare") {
			sl = "none"
		}
		s.write(filepath.Join(dir, "md", "dev-"+m, "slot"), sl)
		slot++
		s.link(filepath.Join(dir, "slaves", m), memberDirs[m])
	}
	return dir
}

const pciBlock = "devices/pci0000:00/0000:00:02.0/virtio1/block/"

// buildSysfs is one machine: four virtio disks (vda has a partition vda1),
// md0 = RAID10 over vda..vdd with vdb failed, dm-0 on md0, md1 = healthy
// RAID1 over vda1 and a second disk, md2 = raid0 with a partition md2p1,
// and dm-1 (crypt) on dm-0 on md0.
func buildSysfs(t *testing.T) *fakeSysfs {
	s := newFakeSysfs(t)
	disks := map[string]string{}
	for i, n := range []string{"vda", "vdb", "vdc", "vdd", "vde", "vdf"} {
		disks[n] = pciBlock + n
		s.disk(pciBlock+n, fmt.Sprintf("254:%d", i*16))
	}
	s.disk(pciBlock+"vda/vda1", "254:1")
	s.write(pciBlock+"vda/vda1/partition", "1")
	disks["vda1"] = pciBlock + "vda/vda1"

	md0 := s.md("md0", "9:0", map[string]string{
		"level": "raid10", "array_state": "clean", "raid_disks": "4", "degraded": "1", "sync_action": "idle",
	}, [][2]string{{"vda", "in_sync"}, {"vdb", "faulty"}, {"vdc", "in_sync"}, {"vdd", "in_sync"}}, disks)
	s.md("md1", "9:1", map[string]string{
		"level": "raid1", "array_state": "active", "raid_disks": "2", "degraded": "0", "sync_action": "idle",
	}, [][2]string{{"vda1", "in_sync"}, {"vde", "in_sync,write_mostly"}}, disks)
	md2 := s.md("md2", "9:2", map[string]string{"level": "raid0", "array_state": "clean", "raid_disks": "1"},
		[][2]string{{"vdf", "in_sync"}}, disks)
	s.disk(md2+"/md2p1", "259:0")
	s.write(md2+"/md2p1/partition", "1")

	s.disk("devices/virtual/block/dm-0", "253:0")
	s.link("devices/virtual/block/dm-0/slaves/md0", md0)
	s.disk("devices/virtual/block/dm-1", "253:1")
	s.link("devices/virtual/block/dm-1/slaves/dm-0", "devices/virtual/block/dm-0")
	return s
}

func writeMountinfo(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mountinfo")
	var b strings.Builder
	for i, l := range lines {
		fmt.Fprintf(&b, "%d 1 %s\n", 20+i, l)
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestArrayFinder(t *testing.T) {
	s := buildSysfs(t)
	mi := writeMountinfo(t,
		"254:16 / / rw - ext4 /dev/vdb rw",
		"9:0 / /mnt/raid10 rw - xfs /dev/md0 rw,prjquota",
		"253:0 / /mnt/dm rw - xfs /dev/mapper/pool rw",
		"253:1 / /mnt/crypt rw - ext4 /dev/mapper/crypt rw",
		"9:1 / /mnt/raid1 rw - ext4 /dev/md1 rw",
		"259:0 / /mnt/raid0part rw - ext4 /dev/md2p1 rw",
		"0:45 / /mnt/tmp rw - tmpfs tmpfs rw",
		"0:46 / /mnt/btrfs rw - btrfs none rw",
		"8:99 / /mnt/unknown rw - ext4 /dev/sdz rw",
		"9:1 / /mnt/raid10/nested rw - ext4 /dev/md1 rw",
	)
	f := Finder{SysfsRoot: s.root, MountInfoPath: mi}
	md0 := Array{Name: "md0", Level: "raid10", State: "clean", RaidDisks: 4, Degraded: 1, SyncAction: "idle",
		Members: []ArrayMember{{"vda", "in_sync", "0"}, {"vdb", "faulty", "none"}, {"vdc", "in_sync", "2"}, {"vdd", "in_sync", "3"}}}
	tests := []struct {
		name         string
		path         string
		wantNames    []string
		wantDegraded []bool
	}{
		{"md directly", "/mnt/raid10/dhpp", []string{"md0"}, []bool{true}},
		{"mount point itself", "/mnt/raid10", []string{"md0"}, []bool{true}},
		{"dm on md", "/mnt/dm/pool", []string{"md0"}, []bool{true}},
		{"dm on dm on md", "/mnt/crypt/pool", []string{"md0"}, []bool{true}},
		{"healthy raid1 over a partition and a disk", "/mnt/raid1/p", []string{"md1"}, []bool{false}},
		{"partition of a raid0", "/mnt/raid0part/p", []string{"md2"}, []bool{false}},
		{"longest mount wins", "/mnt/raid10/nested/p", []string{"md1"}, []bool{false}},
		{"plain disk", "/var/lib/dhpp", nil, nil},
		{"tmpfs", "/mnt/tmp/p", nil, nil},
		{"btrfs with a non-device source", "/mnt/btrfs/p", nil, nil},
		{"device sysfs does not know", "/mnt/unknown/p", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := f.Arrays(tt.path)
			if err != nil {
				t.Fatalf("Arrays(%s): %v", tt.path, err)
			}
			var names []string
			var degraded []bool
			for _, a := range got {
				names = append(names, a.Name)
				degraded = append(degraded, a.IsDegraded())
			}
			if !reflect.DeepEqual(names, tt.wantNames) || !reflect.DeepEqual(degraded, tt.wantDegraded) {
				t.Fatalf("Arrays(%s) = %v degraded %v, want %v degraded %v", tt.path, names, degraded, tt.wantNames, tt.wantDegraded)
			}
			if len(got) == 1 && got[0].Name == "md0" && !reflect.DeepEqual(got[0], md0) {
				t.Errorf("md0 read as\n%#v\nwant\n%#v", got[0], md0)
			}
		})
	}
}

// TestArrayFinderSymlink: a pool configured through a symlink is looked up
// in the mount table by its real path.
func TestArrayFinderSymlink(t *testing.T) {
	s := buildSysfs(t)
	dir := t.TempDir()
	real, link := filepath.Join(dir, "raid10"), filepath.Join(dir, "pool-link")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	mi := writeMountinfo(t, "254:16 / / rw - ext4 /dev/vdb rw", "9:0 / "+real+" rw - xfs /dev/md0 rw")
	got, err := Finder{SysfsRoot: s.root, MountInfoPath: mi}.Arrays(link)
	if err != nil || len(got) != 1 || got[0].Name != "md0" {
		t.Fatalf("Arrays(%s -> %s) = %v, %v; want md0", link, real, got, err)
	}
}

func TestArrayFinderErrors(t *testing.T) {
	s := buildSysfs(t)
	// md3 lacks its level: a broken sysfs read is an error, not "no array".
	s.disk("devices/virtual/block/md3", "9:3")
	s.write("devices/virtual/block/md3/md/array_state", "clean")
	s.write("devices/virtual/block/md3/md/raid_disks", "two")
	s.disk("devices/virtual/block/md4", "9:4")
	s.write("devices/virtual/block/md4/md/level", "raid1")
	s.write("devices/virtual/block/md4/md/array_state", "clean")
	s.write("devices/virtual/block/md4/md/raid_disks", "two")
	mi := writeMountinfo(t, "9:3 / /mnt/a rw - xfs /dev/md3 rw", "9:4 / /mnt/b rw - xfs /dev/md4 rw")
	tests := []struct {
		name, mountinfo, path, want string
	}{
		{"missing attribute", mi, "/mnt/a/p", "md3/md/level"},
		{"not a number", mi, "/mnt/b/p", `"two" is not a number`},
		{"no mount table", filepath.Join(t.TempDir(), "none"), "/mnt/a", "read mount table"},
		{"no mount holds the path", writeMountinfo(t, "9:3 / /mnt/a rw - xfs /dev/md3 rw"), "/elsewhere", "no mount holds it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Finder{SysfsRoot: s.root, MountInfoPath: tt.mountinfo}.Arrays(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Arrays(%s) error %v, want one containing %q", tt.path, err, tt.want)
			}
		})
	}
}

func TestArrayFinderCycle(t *testing.T) {
	s := newFakeSysfs(t)
	s.disk("devices/virtual/block/dm-0", "253:0")
	s.disk("devices/virtual/block/dm-1", "253:1")
	s.link("devices/virtual/block/dm-0/slaves/dm-1", "devices/virtual/block/dm-1")
	s.link("devices/virtual/block/dm-1/slaves/dm-0", "devices/virtual/block/dm-0")
	mi := writeMountinfo(t, "253:0 / /mnt rw - xfs /dev/dm-0 rw")
	got, err := Finder{SysfsRoot: s.root, MountInfoPath: mi}.Arrays("/mnt/p")
	if err != nil || got != nil {
		t.Fatalf("a slaves cycle: %v, %v; want no arrays and no error", got, err)
	}
}

func TestArrayDegradedAndString(t *testing.T) {
	member := func(name, state string) ArrayMember { return ArrayMember{Name: name, State: state} }
	tests := []struct {
		name     string
		a        Array
		degraded bool
		str      string
	}{
		{
			name: "optimal",
			a:    Array{Name: "md0", Level: "raid10", State: "clean", RaidDisks: 4, SyncAction: "idle", Members: []ArrayMember{member("vda", "in_sync")}},
			str:  "md0 (raid10, 4 devices): optimal; array_state clean, sync_action idle",
		},
		{
			name: "failed member still listed", degraded: true,
			a:   Array{Name: "md0", Level: "raid10", State: "active", RaidDisks: 4, Degraded: 1, SyncAction: "idle", Members: []ArrayMember{member("vda", "in_sync"), member("vdb", "faulty")}},
			str: "md0 (raid10, 4 devices): degraded, 1 missing, faulty: vdb; array_state active, sync_action idle",
		},
		{
			name: "failed member removed", degraded: true,
			a:   Array{Name: "md0", Level: "raid10", State: "clean", RaidDisks: 4, Degraded: 1, SyncAction: "idle"},
			str: "md0 (raid10, 4 devices): degraded, 1 missing; array_state clean, sync_action idle",
		},
		{
			name: "rebuilding onto a replacement", degraded: true,
			a:   Array{Name: "md0", Level: "raid1", State: "clean", RaidDisks: 2, Degraded: 1, SyncAction: "recover", Members: []ArrayMember{member("vda", "in_sync"), member("vdb", "spare")}},
			str: "md0 (raid1, 2 devices): degraded, 1 missing; array_state clean, sync_action recover",
		},
		{
			name: "faulty not yet counted", degraded: true,
			a:   Array{Name: "md9", Level: "raid1", State: "clean", RaidDisks: 2, Members: []ArrayMember{member("sda1", "faulty,write_mostly")}},
			str: "md9 (raid1, 2 devices): degraded, faulty: sda1; array_state clean",
		},
		{
			name: "broken raid0", degraded: true,
			a:   Array{Name: "md2", Level: "raid0", State: "broken", RaidDisks: 2},
			str: "md2 (raid0, 2 devices): degraded; array_state broken",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.IsDegraded(); got != tt.degraded {
				t.Errorf("IsDegraded = %v, want %v", got, tt.degraded)
			}
			if got := tt.a.String(); got != tt.str {
				t.Errorf("String =\n%q\nwant\n%q", got, tt.str)
			}
		})
	}
}

func TestArrayMemberClass(t *testing.T) {
	tests := map[string]string{
		"in_sync":              MemberInSync,
		"in_sync,write_mostly": MemberInSync,
		"faulty":               MemberFaulty,
		"faulty,in_sync":       MemberFaulty,
		"spare":                MemberSpare,
		"spare,replacement":    MemberSpare,
		"blocked":              MemberOther,
		"":                     MemberOther,
	}
	for state, want := range tests {
		if got := (ArrayMember{State: state}).Class(); got != want {
			t.Errorf("Class(%q) = %s, want %s", state, got, want)
		}
	}
}

// TestArrayFinderRealSystem reads this machine's own sysfs and mount table:
// whatever disks it has, the walk must succeed, and every array it reports
// must have a level and members.
func TestArrayFinderRealSystem(t *testing.T) {
	for _, p := range []string{t.TempDir(), "/"} {
		arrays, err := Finder{}.Arrays(p)
		if err != nil {
			t.Fatalf("Arrays(%s) on this machine: %v", p, err)
		}
		for _, a := range arrays {
			if a.Level == "" || len(a.Members) == 0 {
				t.Errorf("Arrays(%s): incomplete array %#v", p, a)
			}
		}
		t.Logf("%s: %v", p, arrays)
	}
}
