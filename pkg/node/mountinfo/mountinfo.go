// Package mountinfo reads the kernel's mount table with its paths as the
// rest of the system spells them. mount-utils parses /proc/self/mountinfo
// but leaves the kernel's octal escapes in place (a space is written \040),
// so a pool or target path with a space would never compare equal; every
// reader of the mount table in dhpp goes through Read.
package mountinfo

import (
	"fmt"
	"path"
	"path/filepath"
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

// Holder finds the filesystem that holds a host path: the mount whose mount
// point is the longest prefix of hostPath (the last one in table order
// among equals, the one on top), and hostPath's path inside that
// filesystem, which is what bind mounts of it record as their root.
func Holder(infos []mount.MountInfo, hostPath string) (*mount.MountInfo, string, bool) {
	var base *mount.MountInfo
	for i := range infos {
		mi := &infos[i]
		if Within(hostPath, mi.MountPoint) && (base == nil || len(mi.MountPoint) >= len(base.MountPoint)) {
			base = mi
		}
	}
	if base == nil {
		return nil, "", false
	}
	rel, err := filepath.Rel(base.MountPoint, hostPath)
	if err != nil {
		return nil, "", false
	}
	return base, path.Join(base.Root, filepath.ToSlash(rel)), true
}

// Within reports whether p is dir or below it (clean absolute paths).
func Within(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}
