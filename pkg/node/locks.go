package node

import "sync"

// keyLocks serialises operations per volume name. A second operation on a
// busy volume is refused at once (ErrBusy → gRPC Aborted, which the CSI spec
// recommends and every sidecar retries) instead of queueing: a hung disk then
// costs one goroutine per volume, not one per retry.
type keyLocks struct {
	mu   sync.Mutex
	held map[string]struct{}
}

func (l *keyLocks) tryLock(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = make(map[string]struct{})
	}
	if _, busy := l.held[key]; busy {
		return false
	}
	l.held[key] = struct{}{}
	return true
}

func (l *keyLocks) unlock(key string) {
	l.mu.Lock()
	delete(l.held, key)
	l.mu.Unlock()
}
