package node

import (
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// The pool's os.Root keeps every lookup inside the pool, but it follows a
// symlink that stays inside: volumes/a/disk.img planted as a link to
// volumes/b/disk.img would hand out volume b as a. So what a volume's
// storage is made of (its image, its data directory) is looked up with no
// symlink followed at all.

// lstatNoSymlink checks each component of rel (relative to the pool) with
// Lstat and refuses a symlink anywhere; it returns the last one's info.
func lstatNoSymlink(p *Pool, rel string) (fs.FileInfo, error) {
	var st fs.FileInfo
	parts := strings.Split(rel, "/")
	for i := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		var err error
		if st, err = p.root.Lstat(prefix); err != nil {
			return nil, err
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			return nil, fmt.Errorf("%w: %s in pool %q is a symlink; dhpp follows no symlink inside a pool", ErrWrongPath, prefix, p.Name)
		}
	}
	return st, nil
}

// openNoSymlink opens rel through the pool's root, with no symlink in any
// component and rel a regular file; the descriptor is checked to be the
// very file that was checked, so a swap in between is refused too.
func openNoSymlink(p *Pool, rel string, flag int) (*os.File, error) {
	want, err := lstatNoSymlink(p, rel)
	if err != nil {
		return nil, err
	}
	if !want.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s in pool %q is not a regular file", ErrWrongPath, rel, p.Name)
	}
	f, err := p.root.OpenFile(rel, flag, 0)
	if err != nil {
		return nil, err
	}
	got, err := f.Stat()
	if err == nil && !os.SameFile(got, want) {
		err = fmt.Errorf("%w: %s in pool %q changed while it was opened", ErrWrongPath, rel, p.Name)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
