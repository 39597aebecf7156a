package node

import (
	"context"
	"fmt"
	"path"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// dirBackend carves a volume as a plain directory. Nothing stops a pod from
// writing past the volume's size: the size is bookkeeping for the scheduler
// and is reported as not enforced (the "Pool backend selected" log line, the
// backends table in the README; the volume context names the backend). Use it only where nothing stronger works.
type dirBackend struct{ pool *Pool }

func (dirBackend) Kind() BackendKind                        { return BackendDir }
func (dirBackend) Enforced() bool                           { return false }
func (dirBackend) MinSize(AccessType) int64                 { return sizeGranularity }
func (dirBackend) Supports(a AccessType) bool               { return a == AccessMount }
func (dirBackend) Destroy(context.Context, volumeDir) error { return nil }

func (b dirBackend) Create(_ context.Context, dir volumeDir, v *Volume) error {
	rel := path.Join(dir.rel, dataName)
	if err := b.pool.root.Mkdir(rel, v.Mode); err != nil {
		return err
	}
	return chmodRoot(b.pool.root, rel, v.Mode) // Mkdir's mode is masked by the umask
}

// Allocated: a directory volume has no account of its own (its size is
// not enforced), and walking its tree is ruled out.
func (dirBackend) Allocated(volumeDir, *Volume) (int64, error) { return 0, errNoAccount }

func (dirBackend) Resize(context.Context, volumeDir, *Volume, int64) error { return nil }

// Usage of a directory volume is the filesystem's: there is no per-volume
// accounting short of walking the tree, which NodeGetVolumeStats must not do.
func (b dirBackend) Usage(dir volumeDir, v *Volume, _ string) (Usage, error) {
	return statfsUsage(dir.abs(dataName))
}

func (dirBackend) Stage(context.Context, volumeDir, *Volume, string, []string) error { return nil }
func (dirBackend) Unstage(context.Context, volumeDir, *Volume, string) error         { return nil }

// Placement: the volume is where its data directory is bind-mounted.
func (b dirBackend) Placement(dir volumeDir, _ *Volume, infos []mount.MountInfo) (placement, error) {
	return placement{mounts: bindsOf(infos, dir.abs(dataName))}, nil
}

func (b dirBackend) PublishSource(dir volumeDir, _ *Volume, _ string) (string, error) {
	return checkedDir(b.pool, path.Join(dir.rel, dataName))
}

// checkedDir returns the host path of a directory inside the pool after
// checking, through the pool's os.Root, that it is a real directory and no
// component is a symlink (leading out of the pool or to another volume).
func checkedDir(p *Pool, rel string) (string, error) {
	st, err := lstatNoSymlink(p, rel)
	if err != nil {
		return "", fmt.Errorf("%w (not a directory of the volume)", err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%w: %s in pool %q is not a directory", ErrWrongPath, rel, p.Name)
	}
	return p.abs(rel), nil
}

func statfsUsage(p string) (Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", p, err)
	}
	bs := st.Bsize
	u := Usage{
		TotalBytes:     int64(st.Blocks) * bs,
		AvailableBytes: int64(st.Bavail) * bs,
		UsedBytes:      int64(st.Blocks-st.Bfree) * bs,
	}
	if st.Files > 0 {
		u.HasInodes = true
		u.TotalInodes, u.FreeInodes, u.UsedInodes = int64(st.Files), int64(st.Ffree), int64(st.Files-st.Ffree)
	}
	return u, nil
}
