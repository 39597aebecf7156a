package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// The pool's os.Root keeps every lookup inside the pool, but it follows a
// symlink that stays inside: volumes/a/disk.img planted as a link to
// volumes/b/disk.img would hand out volume b as a. So what a volume's
// storage is made of (its image, its data directory) is opened with no
// symlink followed at all, below the pool root's descriptor: openat2 with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, one syscall with nothing to race.

// openNoSymlink opens rel (relative to the pool) with no symlink in any
// component. Kernels before 5.6 have no openat2; there each component is
// checked with Lstat through the os.Root and the descriptor compared with
// the last one, which refuses a planted symlink as well.
func openNoSymlink(s *store, rel string, flag int) (*os.File, error) {
	how := &unix.OpenHow{
		Flags:   uint64(flag | unix.O_CLOEXEC | unix.O_NOFOLLOW),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(int(s.rootFile.Fd()), rel, how)
	switch {
	case err == nil:
		return os.NewFile(uintptr(fd), s.abs(rel)), nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return nil, fmt.Errorf("%w: %s in pool %q is or passes through a symlink; dhpp follows no symlink inside a pool", ErrWrongPath, rel, s.name)
	case errors.Is(err, unix.ENOSYS):
		return openNoSymlinkWalk(s, rel, flag)
	}
	return nil, &fs.PathError{Op: "open", Path: s.abs(rel), Err: err}
}

// lstatNoSymlink is the FileInfo of rel, refusing a symlink anywhere in it.
func lstatNoSymlink(s *store, rel string) (fs.FileInfo, error) {
	f, err := openNoSymlink(s, rel, unix.O_PATH)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Stat()
}

// openRegularNoSymlink is openNoSymlink for a regular file (an image).
func openRegularNoSymlink(s *store, rel string, flag int) (*os.File, error) {
	f, err := openNoSymlink(s, rel, flag)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%w: %s in pool %q is not a regular file", ErrWrongPath, rel, s.name)
		}
		return nil, err
	}
	return f, nil
}

// openNoSymlinkWalk is openNoSymlink without openat2.
func openNoSymlinkWalk(s *store, rel string, flag int) (*os.File, error) {
	var want fs.FileInfo
	parts := strings.Split(rel, "/")
	for i := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		st, err := s.root.Lstat(prefix)
		if err != nil {
			return nil, err
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			return nil, fmt.Errorf("%w: %s in pool %q is a symlink; dhpp follows no symlink inside a pool", ErrWrongPath, prefix, s.name)
		}
		want = st
	}
	f, err := s.root.OpenFile(rel, flag, 0)
	if err != nil {
		return nil, err
	}
	got, err := f.Stat()
	if err == nil && !os.SameFile(got, want) {
		err = fmt.Errorf("%w: %s in pool %q changed while it was opened", ErrWrongPath, rel, s.name)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
