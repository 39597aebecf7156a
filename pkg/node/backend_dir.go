package node

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// dirBackend carves a volume as a plain directory. Nothing stops a pod from
// writing past the volume's size: the size is bookkeeping for the scheduler
// and is reported as not enforced (the "Pool backend selected" log line, the
// backends table in the README; the volume context names the backend). Use
// it only where nothing stronger works.
type dirBackend struct{ dirStyle }

func newDirBackend(*store, PoolConfig) backend { return &dirBackend{} }

func (*dirBackend) Kind() BackendKind                        { return BackendDir }
func (*dirBackend) Open() error                              { return nil }
func (*dirBackend) Enforced() bool                           { return false }
func (*dirBackend) Destroy(context.Context, volumeDir) error { return nil }

func (*dirBackend) Create(_ context.Context, dir volumeDir, v *Volume) error {
	_, err := makeDataDir(dir, v.Mode)
	return err
}

// Allocated: a directory volume has no account of its own (its size is
// not enforced), and walking its tree is ruled out.
func (*dirBackend) Allocated(volumeDir, *Volume) (int64, error) { return 0, errNoAccount }

func (*dirBackend) Resize(context.Context, volumeDir, *Volume, int64) error { return nil }

// Usage of a directory volume is the filesystem's: there is no per-volume
// accounting short of walking the tree, which NodeGetVolumeStats must not do.
func (*dirBackend) Usage(dir volumeDir, _ *Volume, _ string) (Usage, error) {
	return statfsUsage(dir.abs(dataName))
}

// statfsUsage is the usage of the filesystem at p, as a volume's.
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
