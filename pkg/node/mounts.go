package node

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	mount "k8s.io/mount-utils"
)

// usersOf lists what still uses a volume directory (relative to the pool):
// bind mounts of anything inside it (pods' target paths), mounts inside it,
// and loop devices attached to its image. Deleting or purging a volume with
// users would pull data out from under a running pod, so callers refuse.
func (p *Pool) usersOf(_ context.Context, v *Volume, rel string) ([]string, error) {
	infos, err := readMountTable(p.env.mountInfoPath)
	if err != nil {
		return nil, err
	}
	users := mountUsers(infos, p.Path, p.st.abs(rel))
	devs, err := imageDevices(volumeDir{st: p.st, rel: rel})
	if err != nil {
		return nil, fmt.Errorf("volume %q: find loop devices: %w", v.Name, err)
	}
	for _, d := range devs {
		users = append(users, "loop device "+d)
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
	var users []string
	for i := range infos {
		mi := &infos[i]
		if mountinfo.Within(mi.MountPoint, dir) {
			users = append(users, mi.MountPoint)
		}
	}
	// The pool's own mount translates dir (see mountinfo.Holder); a mount inside
	// the pool must not.
	base, poolFsPath, ok := mountinfo.Holder(infos, poolPath)
	if !ok {
		return users
	}
	rel, err := filepath.Rel(poolPath, dir)
	if err != nil {
		return users
	}
	fsPath := path.Join(poolFsPath, filepath.ToSlash(rel))
	for i := range infos {
		mi := &infos[i]
		if mi.Major != base.Major || mi.Minor != base.Minor || mi.ID == base.ID {
			continue
		}
		if mountinfo.Within(mi.Root, fsPath) && !mountinfo.Within(mi.MountPoint, dir) {
			users = append(users, mi.MountPoint)
		}
	}
	return users
}

// holdersOf lists the processes with a descriptor, working directory or
// root at or below p, as "pid (comm)": what makes an unmount of p fail
// with "target is busy", named so a human (or a test log) can tell a pod's
// process from a lingering one of the driver's.
func holdersOf(p string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, proc := range procs {
		links, _ := filepath.Glob(proc + "/fd/*")
		links = append(links, proc+"/cwd", proc+"/root")
		for _, l := range links {
			if t, err := os.Readlink(l); err == nil && mountinfo.Within(t, p) {
				comm, _ := os.ReadFile(proc + "/comm")
				out = append(out, fmt.Sprintf("%s (%s) %s", filepath.Base(proc), strings.TrimSpace(string(comm)), strings.TrimPrefix(l, proc+"/")))
				break
			}
		}
	}
	return out
}
