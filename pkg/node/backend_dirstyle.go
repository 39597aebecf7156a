package node

import (
	"context"
	"fmt"
	"os"
	"path"

	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	mount "k8s.io/mount-utils"
)

// dirStyle is what the directory-style backends (btrfs, xfs/ext4 project
// quota, dir) share: a volume is its data directory (dataName) on the
// pool's own filesystem. It serves Filesystem volumes only; staging
// prepares nothing, and NodePublish binds the data directory itself, so
// the volume is wherever that directory is bind-mounted. Each embeds it
// and adds how the directory is made and how its size is enforced.
type dirStyle struct{}

func (dirStyle) Supports(a AccessType) bool { return a == AccessMount }

// Resolve: the volume is the pool's own filesystem, so a requested fsType
// is not recorded (CSI lets the CO name one; the pool's is what it gets).
func (dirStyle) Resolve(AccessType, string) (string, int64, error) {
	return "", sizeGranularity, nil
}

func (dirStyle) Stage(context.Context, volumeDir, *Volume, string, []string) error { return nil }
func (dirStyle) Unstage(context.Context, volumeDir, *Volume, string) error         { return nil }
func (dirStyle) MountsAtStaging(*Volume) bool                                      { return false }

// Placement: the volume is where its data directory is bind-mounted.
func (dirStyle) Placement(dir volumeDir, _ *Volume, infos []mount.MountInfo) (placement, error) {
	return placement{mounts: bindsOf(infos, dir.abs(dataName))}, nil
}

// Shows: a path outside every pool whose inode is the volume's data
// directory can only be a bind mount of it (directories have no hard
// links). Two lstats instead of the mount table, which kubelet's periodic
// stats take.
func (dirStyle) Shows(dir volumeDir, _ *Volume, p string) bool {
	data, err := lstatNoSymlink(dir.st, path.Join(dir.rel, dataName))
	if err != nil {
		return false
	}
	st, err := os.Lstat(p)
	return err == nil && st.IsDir() && os.SameFile(st, data)
}

func (dirStyle) PublishSource(dir volumeDir, _ *Volume, _ string) (string, error) {
	return checkedDir(dir.st, path.Join(dir.rel, dataName))
}

// makeDataDir creates the volume's data directory with the volume's mode
// and returns its path relative to the pool.
func makeDataDir(dir volumeDir, mode os.FileMode) (string, error) {
	rel := path.Join(dir.rel, dataName)
	if err := dir.st.root.Mkdir(rel, mode); err != nil {
		return "", err
	}
	return rel, chmodRoot(dir.st.root, rel, mode) // Mkdir's mode is masked by the umask
}

// checkedDir returns the host path of a directory inside the pool after
// checking, through the pool's os.Root, that it is a real directory and no
// component is a symlink (leading out of the pool or to another volume).
func checkedDir(s *store, rel string) (string, error) {
	st, err := lstatNoSymlink(s, rel)
	if err != nil {
		return "", fmt.Errorf("%w (not a directory of the volume)", err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%w: %s in pool %q is not a directory", ErrWrongPath, rel, s.name)
	}
	return s.abs(rel), nil
}

// bindsOf lists the mount points that show exactly the directory at
// hostPath: mounts of the same filesystem whose root is that directory.
func bindsOf(infos []mount.MountInfo, hostPath string) []string {
	base, fsPath, ok := mountinfo.Holder(infos, hostPath)
	if !ok {
		return nil
	}
	var out []string
	for i := range infos {
		mi := &infos[i]
		if mi.ID != base.ID && mi.Major == base.Major && mi.Minor == base.Minor && mi.Root == fsPath {
			out = append(out, mi.MountPoint)
		}
	}
	return out
}
