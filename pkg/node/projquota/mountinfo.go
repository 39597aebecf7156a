package projquota

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is the part of a /proc/self/mountinfo entry this package needs.
type Mount struct {
	MountPoint string
	FSType     string
	// Source is the mount source, e.g. /dev/vda: the block device quotactl(2)
	// needs on kernels without quotactl_fd.
	Source string
	// Options are the superblock options (after " - "), where the kernel
	// shows prjquota, pquota or pqnoenforce.
	Options []string
}

// ProjectQuotaOption reports whether the mount options turn project quota
// enforcement on (XFS: prjquota/pquota/pqenforce; ext4: prjquota). It is
// what the operator set, shown in messages; State is what the kernel does.
func (m Mount) ProjectQuotaOption() bool {
	for _, o := range m.Options {
		switch o {
		case "prjquota", "pquota", "pqenforce":
			return true
		}
	}
	return false
}

// FindMount returns the mount table entry of the filesystem f is on, matched
// by device number (every bind mount of one filesystem shares its
// superblock options and source, so any of them will do).
func FindMount(f *os.File, mountInfoPath string) (Mount, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Mount{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	if mountInfoPath == "" {
		mountInfoPath = "/proc/self/mountinfo"
	}
	data, err := os.ReadFile(mountInfoPath)
	if err != nil {
		return Mount{}, fmt.Errorf("read mount table: %w", err)
	}
	m, ok := findMountByDev(data, unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)))
	if !ok {
		return Mount{}, fmt.Errorf("%s (device %d:%d) is not in %s", f.Name(), unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)), mountInfoPath)
	}
	return m, nil
}

// findMountByDev parses mountinfo text and returns the first entry of the
// device major:minor. The format (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func findMountByDev(data []byte, major, minor uint32) (Mount, bool) {
	want := strconv.FormatUint(uint64(major), 10) + ":" + strconv.FormatUint(uint64(minor), 10)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[2] != want {
			continue
		}
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) {
			continue
		}
		m := Mount{MountPoint: unescape(fields[4]), FSType: fields[sep+1], Source: unescape(fields[sep+2])}
		if sep+3 < len(fields) {
			m.Options = strings.Split(fields[sep+3], ",")
		}
		return m, true
	}
	return Mount{}, false
}

// unescape undoes the octal escapes (\040 for space, ...) of mountinfo.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
