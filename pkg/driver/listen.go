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
	"k8s.io/klog/v2"
)

// LockSuffix names the lock file beside the CSI socket: <socket>.lock.
const LockSuffix = ".lock"

// ClaimWait bounds how long a starting instance waits for the socket's lock
// to be freed, and for the socket to stop answering, before it refuses to
// start. A driver killed with SIGKILL does not let go of them at once: a
// child caught between fork and exec, or an umount in uninterruptible
// sleep, still holds the lock file and the listening socket for a moment
// (up to ~0.7 s seen), and an immediate restart must not fail on that. A
// variable so tests keep the wait short.
var ClaimWait = 5 * time.Second

// claimPoll is how often a waiting claim tries again.
const claimPoll = 50 * time.Millisecond

// Listen listens on the unix socket at path, for as long as this process
// is the only driver instance on it: LockSocket, then SocketLock.Listen.
func Listen(path string) (net.Listener, error) {
	lock, err := LockSocket(path)
	if err != nil {
		return nil, err
	}
	l, err := lock.Listen()
	if err != nil {
		lock.Release()
		return nil, err
	}
	return l, nil
}

// SocketLock is the claim of one driver instance on a CSI socket.
type SocketLock struct {
	path string
	file *os.File
	once sync.Once
}

// LockSocket claims the CSI socket at path for this process, before the
// driver touches anything else (its pools above all), so that a second
// instance fails without disturbing the first. It takes an exclusive lock
// on <path>.lock, held until Release or until the listener from Listen is
// closed; the kernel drops it when the process dies, even by kill -9. It
// also refuses when something answers on the socket without holding the
// lock (a driver that predates the lock file). Either is refused only if it
// lasts ClaimWait.
func LockSocket(path string) (*SocketLock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	f, err := lockFile(path, ClaimWait)
	if err != nil {
		return nil, err
	}
	l := &SocketLock{path: path, file: f}
	if err := checkNotServed(path, ClaimWait); err != nil {
		l.Release()
		return nil, err
	}
	return l, nil
}

// Release gives the claim up. Closing Listen's listener also does.
func (l *SocketLock) Release() { l.once.Do(func() { l.file.Close() }) }

// Listen replaces a socket file left behind by a crashed instance (after
// a connect test shows nothing answers on it) and listens on the socket.
// Anything at the path that is not a socket is left alone. Closing the
// listener removes the socket, then releases the lock.
func (l *SocketLock) Listen() (net.Listener, error) {
	if err := checkNotServed(l.path, ClaimWait); err != nil {
		return nil, err
	}
	if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", l.path, err)
	}
	nl, err := net.Listen("unix", l.path)
	if err != nil {
		return nil, err
	}
	return &lockedListener{Listener: nl, lock: l}, nil
}

// lockFile takes the instance lock of the socket at path, waiting up to
// wait for a holder to let go, and writes this process's id into the lock
// file, for the next instance's error message.
func lockFile(path string, wait time.Duration) (*os.File, error) {
	name := path + LockSuffix
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", name, err)
	}
	err = retryFor(wait, func() (bool, error) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		return errors.Is(err, unix.EWOULDBLOCK), err
	}, func() {
		klog.InfoS("The CSI socket's lock is held, waiting for it (what a killed instance left may still hold it)", "lock", name, "wait", wait)
	})
	if err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(name); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = fmt.Sprintf("process %d", pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another dhpp-driver instance (%s) serves the CSI socket %s: it has held the lock %s for %v. Refusing to start, its socket is left alone; stop that instance first (find it with: fuser -v %s)",
				holder, path, name, wait, name)
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

// retryFor calls try until it reports no retry is needed or wait has
// passed, calling waiting once before the first pause; it returns try's
// last error.
func retryFor(wait time.Duration, try func() (retry bool, err error), waiting func()) error {
	deadline := time.Now().Add(wait)
	for first := true; ; first = false {
		retry, err := try()
		if !retry || time.Now().After(deadline) {
			return err
		}
		if first {
			waiting()
		}
		time.Sleep(claimPoll)
	}
}

// checkNotServed returns nil if nothing is at path, or a socket on which
// nobody listens (or stopped answering within wait); an error if something
// still answers on it, or if path is not a socket.
func checkNotServed(path string, wait time.Duration) error {
	err := retryFor(wait, func() (bool, error) {
		err := checkNotServedNow(path)
		return errors.Is(err, errServed), err
	}, func() {
		klog.InfoS("Something answers on the CSI socket, waiting for it to stop (what a killed instance left may still hold it)", "socket", path, "wait", wait)
	})
	if errors.Is(err, errServed) {
		return fmt.Errorf("another process serves the CSI socket %s, still after %v (without holding %s%s, e.g. an older dhpp-driver); refusing to take it over. Find it with: ss -xlp | grep %s",
			path, wait, path, LockSuffix, path)
	}
	return err
}

// errServed: something accepted a connection on the socket.
var errServed = errors.New("socket is served")

// checkNotServedNow is one look of checkNotServed.
func checkNotServedNow(path string) error {
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case st.Mode().Type() != os.ModeSocket:
		return fmt.Errorf("%s exists and is not a socket (%s); not removing it", path, st.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, connectTimeout)
	if err == nil {
		c.Close()
		return errServed
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check whether anything serves the socket %s: %w", path, err)
	}
	return nil // left behind by an instance that died
}

// lockedListener releases the instance lock when the listener is closed,
// after the socket is gone (net.UnixListener removes it on Close).
type lockedListener struct {
	net.Listener
	lock *SocketLock
}

func (l *lockedListener) Close() error {
	err := l.Listener.Close()
	l.lock.Release()
	return err
}
