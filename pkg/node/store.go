package node

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// store is what a backend may use of its pool: the pool's directory,
// through its os.Root (and an open descriptor for statfs and ioctls), the
// node's command runner and mounter, the mount table, and the pool's volume
// records. Backends get this, never the *Pool: the pool's bookkeeping
// (capacity, admission, the volume index) is not theirs to touch.
type store struct {
	name string // the pool's name, for messages
	path string // the pool directory's absolute, clean path
	// fsType names the pool's filesystem (see fsTypeOf); "" if dhpp does
	// not know it.
	fsType string
	root   *os.Root
	// rootFile is an open descriptor on the pool directory.
	rootFile      *os.File
	exec          utilexec.Interface
	mounter       mount.Interface
	mountInfoPath string
	// records lists the records of the pool's volumes, live and trashed
	// (a trashed volume's storage stays until purged).
	records func() []*Volume
}

// abs returns the absolute host path of rel (relative to the pool). Only
// for APIs that need a path (mount, mkfs, messages); lookups go through
// root.
func (s *store) abs(rel string) string { return filepath.Join(s.path, filepath.FromSlash(rel)) }

// statfs is the pool filesystem's size and space available to writers.
func (s *store) statfs() (total, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(s.rootFile.Fd()), &st); err != nil {
		return 0, 0, fmt.Errorf("pool %q: statfs: %w", s.name, err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}

// volumeDir is a volume's directory inside a pool, as backends see it.
type volumeDir struct {
	st *store
	// rel is the directory relative to the pool root (e.g. "volumes/pvc-1").
	rel string
}

// abs returns the absolute host path of a file in the volume directory.
// Only used for APIs that need a path (mount, mkfs, loop); every lookup
// through it was checked with the pool's os.Root first.
func (d volumeDir) abs(name string) string { return d.st.abs(d.rel + "/" + name) }

// record reads the volume record in the directory as it is, without the
// checks a live volume's record gets (Destroy of a trashed volume uses
// what it can of it); ok is false if there is no readable one.
func (d volumeDir) record() (v *Volume, ok bool) {
	data, err := d.st.root.ReadFile(path.Join(d.rel, recordFile))
	if err != nil {
		return nil, false
	}
	v = &Volume{}
	if json.Unmarshal(data, v) != nil {
		return nil, false
	}
	return v, true
}
