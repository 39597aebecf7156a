// Package mountinfo reads the kernel's mount table with its paths as the
// rest of the system spells them. mount-utils parses /proc/self/mountinfo
// but leaves the kernel's octal escapes in place (a space is written \040),
// so a pool or target path with a space would never compare equal; every
// reader of the mount table in dhpp goes through Read.
package mountinfo

import (
	"fmt"
	"strconv"
	"strings"

	mount "k8s.io/mount-utils"
)

// DefaultPath is the mount table of the calling process's mount namespace.
const DefaultPath = "/proc/self/mountinfo"

// Read parses the mount table at path (DefaultPath if empty) and unescapes
// each entry's mount point, root and source.
func Read(path string) ([]mount.MountInfo, error) {
	if path == "" {
		path = DefaultPath
	}
	infos, err := mount.ParseMountInfo(path)
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", path, err)
	}
	for i := range infos {
		infos[i].MountPoint = Unescape(infos[i].MountPoint)
		infos[i].Root = Unescape(infos[i].Root)
		infos[i].Source = Unescape(infos[i].Source)
	}
	return infos, nil
}

// Unescape undoes the kernel's octal escapes (\040 space, \011 tab, \012
// newline, \134 backslash) in a mountinfo field; anything else is kept.
func Unescape(s string) string {
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
