package projquota

import (
	"fmt"
	"os"

	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
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
	infos, err := mountinfo.Read(mountInfoPath)
	if err != nil {
		return Mount{}, err
	}
	major, minor := unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev))
	m, ok := findMountByDev(infos, major, minor)
	if !ok {
		return Mount{}, fmt.Errorf("%s (device %d:%d) is not in the mount table", f.Name(), major, minor)
	}
	return m, nil
}

// findMountByDev returns the first entry of the device major:minor.
func findMountByDev(infos []mount.MountInfo, major, minor uint32) (Mount, bool) {
	for _, mi := range infos {
		if uint32(mi.Major) == major && uint32(mi.Minor) == minor {
			return Mount{MountPoint: mi.MountPoint, FSType: mi.FsType, Source: mi.Source, Options: mi.SuperOptions}, true
		}
	}
	return Mount{}, false
}
