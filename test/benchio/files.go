package benchio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// syncFS flushes the filesystem path is on (for a block device node, the
// device's buffers: fsync of the device) and says how long it took.
func syncFS(path string) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	start := time.Now()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Mode()&fs.ModeDevice != 0 {
		err = f.Sync()
	} else {
		err = unix.Syncfs(int(f.Fd()))
	}
	if err != nil {
		return 0, fmt.Errorf("sync %s: %w", path, err)
	}
	return time.Since(start), nil
}
