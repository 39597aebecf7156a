package driver

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LockSuffix names the lock file beside the CSI socket: <socket>.lock.
const LockSuffix = ".lock"

// Listen listens on the unix socket at path, for as long as this process
// is the only driver instance on it. It first takes an exclusive lock on
// <path>.lock, held until the listener is closed (the kernel drops it when
// the process dies, even by kill -9), so a second instance fails without
// touching the first one's socket. A socket file left by a crashed
// instance is replaced, but only after a connect test shows that nothing
// answers on it: an instance that predates the lock file is not taken over
// either. Anything at path that is not a socket is left alone.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	lock, err := lockSocket(path)
	if err != nil {
		return nil, err
	}
	l, err := listenUnlocked(path)
	if err != nil {
		lock.Close()
		return nil, err
	}
	return &lockedListener{Listener: l, lock: lock}, nil
}

// lockSocket takes the instance lock of the socket at path and writes this
// process's id into the lock file, for the next instance's error message.
func lockSocket(path string) (*os.File, error) {
	name := path + LockSuffix
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(name); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf("process %d", pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another dhpp-driver instance (%s) serves the CSI socket %s: it holds the lock %s. Refusing to start, its socket is left alone; stop that instance first (find it with: fuser -v %s)",
				holder, path, name, name)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// connectTimeout bounds the connect test of an existing socket. A live
// server accepts at once (the kernel completes the connection before
// Accept); a dead socket is refused at once.
const connectTimeout = time.Second

// listenUnlocked replaces a stale socket at path and listens on it. The
// caller holds the instance lock.
func listenUnlocked(path string) (net.Listener, error) {
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	case st.Mode().Type() != os.ModeSocket:
		return nil, fmt.Errorf("%s exists and is not a socket (%s); not removing it", path, st.Mode().Type())
	default:
		c, err := net.DialTimeout("unix", path, connectTimeout)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("another process serves the CSI socket %s (without holding %s%s, e.g. an older dhpp-driver); refusing to take it over. Find it with: ss -xlp | grep %s",
				path, path, LockSuffix, path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("check whether anything serves the socket %s: %w", path, err)
		}
		// Nobody listens: left behind by an instance that died.
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	return net.Listen("unix", path)
}

// lockedListener releases the instance lock when the listener is closed,
// after the socket is gone (net.UnixListener removes it on Close).
type lockedListener struct {
	net.Listener
	lock *os.File
	once sync.Once
}

func (l *lockedListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { l.lock.Close() })
	return err
}
