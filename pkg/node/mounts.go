package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"

	"github.com/dhpp-io/dhpp/pkg/node/loopdev"
	mount "k8s.io/mount-utils"
)

// usersOf lists what still uses a volume directory (relative to the pool):
// bind mounts of anything inside it (pods' target paths), mounts inside it,
// and loop devices attached to its image. Deleting or purging a volume with
// users would pull data out from under a running pod, so callers refuse.
func (p *Pool) usersOf(_ context.Context, v *Volume, rel string) ([]string, error) {
	infos, err := mount.ParseMountInfo(p.env.mountInfoPath)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	users := mountUsers(infos, p.Path, p.abs(rel))
	if _, err := p.root.Lstat(path.Join(rel, imageName)); err == nil {
		devs, err := loopdev.Find(p.abs(path.Join(rel, imageName)))
		if err != nil {
			return nil, fmt.Errorf("volume %q: find loop devices: %w", v.Name, err)
		}
		for _, d := range devs {
			users = append(users, "loop device "+d)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return users, nil
}

// mountUsers finds, in a parsed mount table, the mount points whose source
// lies inside dir (a directory below poolPath) and the mount points inside dir.
//
// A bind mount's source is recorded as its "root": the path inside the
// filesystem, not on the host. So the pool's own mount (the longest mount
// point containing poolPath) translates dir into that filesystem's namespace,
// and any mount of the same device whose root is at or below it is a user.
func mountUsers(infos []mount.MountInfo, poolPath, dir string) []string {
	var base *mount.MountInfo
	for i := range infos {
		mi := &infos[i]
		if isWithin(poolPath, mi.MountPoint) && (base == nil || len(mi.MountPoint) >= len(base.MountPoint)) {
			base = mi
		}
	}
	var users []string
	for i := range infos {
		mi := &infos[i]
		if isWithin(mi.MountPoint, dir) {
			users = append(users, mi.MountPoint)
		}
	}
	if base == nil {
		return users
	}
	rel, err := filepath.Rel(base.MountPoint, dir)
	if err != nil {
		return users
	}
	fsPath := path.Join(base.Root, filepath.ToSlash(rel))
	for i := range infos {
		mi := &infos[i]
		if mi.Major != base.Major || mi.Minor != base.Minor || mi.ID == base.ID {
			continue
		}
		if isWithin(mi.Root, fsPath) && !isWithin(mi.MountPoint, dir) {
			users = append(users, mi.MountPoint)
		}
	}
	return users
}

// isWithin reports whether p is dir or below it (clean absolute paths).
func isWithin(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}
