package node

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// placement is where a volume is on this node, read from the mount table
// and the loop driver. dhpp keeps no record of staging and target paths:
// the kernel's tables are the truth, so they are right after a driver
// restart, and a path the CO names is the volume's only if they say so.
type placement struct {
	// devices are the loop devices bound to the volume's image (loop only).
	devices []string
	// mounts are the mount points that show the volume's storage, in mount
	// table order: for a loop Filesystem volume every mount of its loop
	// device (the staging mount and the publish targets bound from it); for
	// a loop Block volume the bind mounts of its device node; for the
	// directory backends the bind mounts of its data directory.
	mounts []string
}

func (pl placement) has(p string) bool { return slices.Contains(pl.mounts, p) }

// describe names where the volume is, for messages.
func (pl placement) describe() string {
	if len(pl.mounts) == 0 {
		return "nowhere on this node"
	}
	return strings.Join(pl.mounts, ", ")
}

// readMountTable parses the mount table with its paths unescaped, so they
// compare equal to the paths a CO sends.
func readMountTable(mountInfoPath string) ([]mount.MountInfo, error) {
	return mountinfo.Read(mountInfoPath)
}

// mountAt returns the topmost mount at p (the last in table order), or nil.
func mountAt(infos []mount.MountInfo, p string) *mount.MountInfo {
	var top *mount.MountInfo
	for i := range infos {
		if infos[i].MountPoint == p {
			top = &infos[i]
		}
	}
	return top
}

func describeMount(mi *mount.MountInfo) string {
	return fmt.Sprintf("%s (%s, root %s)", mi.Source, mi.FsType, mi.Root)
}

// resolveParent returns p with the symlinks of its parent directories
// resolved, as the kernel records mount points (a kubelet root directory
// that is a symlink is common). The last component is kept: a symlink
// there is refused by the checks below, never followed.
func resolveParent(p string) string {
	if p == "" {
		return ""
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return p // a missing parent holds no mount
	}
	return filepath.Join(dir, filepath.Base(p))
}

// checkMountable refuses to mount onto p unless it is absent (it will be
// created), an empty directory (Filesystem) or an empty regular file
// (Block): a mount hides what is below it, and what is there is not dhpp's.
func checkMountable(field, p string, a AccessType) error {
	st, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case st.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%w: %s %s is a symlink; dhpp mounts only onto plain paths", ErrWrongPath, field, p)
	case a == AccessMount && !st.IsDir():
		return fmt.Errorf("%w: %s %s is not a directory", ErrWrongPath, field, p)
	case a == AccessBlock && !st.Mode().IsRegular():
		return fmt.Errorf("%w: %s %s is not a regular file (a Block volume is bound onto a file)", ErrWrongPath, field, p)
	case a == AccessBlock && st.Size() > 0:
		return fmt.Errorf("%w: %s %s is a non-empty file; dhpp never mounts over content", ErrWrongPath, field, p)
	case a == AccessMount:
		empty, err := isEmptyDir(p)
		if err != nil {
			return err
		}
		if !empty {
			return fmt.Errorf("%w: %s %s is a non-empty directory; dhpp never mounts over content (it would hide it)", ErrWrongPath, field, p)
		}
	}
	return nil
}

func isEmptyDir(p string) (bool, error) {
	d, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer d.Close()
	if _, err := d.Readdirnames(1); errors.Is(err, io.EOF) {
		return true, nil
	} else if err != nil {
		return false, err
	}
	return false, nil
}

// removeTarget removes what NodePublish created at a target path that is
// no longer mounted: an empty directory or an empty file. Anything else is
// not dhpp's and stays. os.Remove refuses a directory that is not empty, so
// nothing written meanwhile is lost.
func removeTarget(v *Volume, p string) error {
	st, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case st.IsDir() || st.Mode().IsRegular() && st.Size() == 0:
		err := os.Remove(p)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%w: target path %s is not a mount of volume %q and is not empty; left untouched", ErrWrongPath, p, v.ID)
		}
		return fmt.Errorf("remove target path %s of volume %q: %w", p, v.ID, err)
	}
	return fmt.Errorf("%w: target path %s is not a mount of volume %q and not what dhpp creates there (an empty directory or file); left untouched", ErrWrongPath, p, v.ID)
}
