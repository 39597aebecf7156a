package node

import "errors"

// Sentinel errors of pkg/node. Every error this package returns wraps at most
// one of them; pkg/driver maps them to gRPC status codes (NotFound,
// AlreadyExists, ...) and keeps the message, which always names the volume,
// pool or field at fault so an operator can act on it.
var (
	// ErrInvalid: the request is malformed (bad ID, name, parameter).
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: the volume or pool does not exist on this node.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a volume of that name exists with incompatible properties.
	ErrAlreadyExists = errors.New("already exists")
	// ErrOutOfRange: the size can never be satisfied (beyond the pool, below the minimum).
	ErrOutOfRange = errors.New("out of range")
	// ErrNoSpace: the size does not fit into what the pool has free right now.
	ErrNoSpace = errors.New("insufficient capacity")
	// ErrElsewhere: this node cannot serve the request but another node
	// may (the pool is not configured here, or is missing, or can never
	// hold the size, or cannot make the filesystem asked for). The driver
	// answers ResourceExhausted so csi-provisioner hands the claim back to
	// the scheduler instead of failing it for good.
	ErrElsewhere = errors.New("cannot be served on this node")
	// ErrBusy: another operation on the same volume is in progress.
	ErrBusy = errors.New("operation in progress")
	// ErrInUse: the volume is still mounted somewhere and cannot be deleted.
	ErrInUse = errors.New("in use")
	// ErrNotStaged: a publish found no staged volume where it must be.
	ErrNotStaged = errors.New("not staged")
	// ErrWrongPath: a path in the request does not belong to the volume (a
	// mount of something else, another volume's staging path, a non-empty
	// directory, a planted symlink); nothing was touched.
	ErrWrongPath = errors.New("path does not belong to the volume")
	// ErrWrongNode: the volume ID names another node; nothing here may touch it.
	ErrWrongNode = errors.New("volume is on another node")
	// ErrQuarantined: the volume's record cannot be trusted; the volume is
	// left untouched and its name reserved until an operator acts.
	ErrQuarantined = errors.New("volume quarantined")
	// ErrPoolMissing: the volume's pool directory is missing (an unmounted
	// data disk?); its volumes may come back, so nothing is answered for them.
	ErrPoolMissing = errors.New("pool missing")
	// ErrUnsupported: dhpp cannot do what was asked on any node (e.g. a
	// backend a pool's filesystem cannot have).
	ErrUnsupported = errors.New("unsupported")
)
