package node

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path"
	"strings"
	"time"
)

// Snapshots live in a pool beside its volumes, in the same self-describing
// way: snapshots/<key>/{snapshot.json, data | disk.img}. A snapshot is made
// in .dhpp/tmp/snapshot:<key>.<nonce> and renamed into snapshots/ only once
// its data is durable (syncfs) and its record is written and fsync'd, so a
// snapshot in snapshots/ is complete by construction (ready_to_use), and
// anything left in tmp/ by a crash is moved to the trash at start.
const (
	dirSnapshots = "snapshots"
	snapRecord   = "snapshot.json"
	// snapTrashPrefix starts the trash and tmp entries of snapshots. ':'
	// is not in the volume-name alphabet, so such an entry can never be
	// taken for (or restored as) a volume.
	snapTrashPrefix = "snapshot:"
	// snapIDTag is the third part of a snapshot ID.
	snapIDTag = "snapshots"
)

// Snapshot methods: how a snapshot's (or a restore's) data was made.
const (
	MethodBtrfs   = "btrfs-snapshot" // a subvolume snapshot, O(1), shares every extent
	MethodReflink = "reflink"        // FICLONE per file or of the image: shares extents
	MethodCopy    = "copy"           // data copied, holes kept
)

// Snapshot is a snapshot's record, stored as snapshots/<key>/snapshot.json.
type Snapshot struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	// Name is the snapshot's key: its directory name, the ID's last part.
	Name string `json:"name"`
	// CSIName is the name CreateSnapshot was called with, when it differs.
	CSIName string `json:"csiName,omitempty"`
	Pool    string `json:"pool"`
	// SourceVolumeID is the volume the snapshot was taken of.
	SourceVolumeID string `json:"sourceVolumeID"`
	// Source is the source volume's record as it was when the snapshot was
	// taken: the form of the data (backend, access type, filesystem, size).
	// A restore gets the same form.
	Source Volume `json:"source"`
	// Method is how the data was captured (MethodBtrfs, ...).
	Method string `json:"method"`
	// SizeBytes is the source's size: the smallest volume it restores into.
	SizeBytes int64 `json:"sizeBytes"`
	// StoredBytes is what the snapshot occupied on disk when it was made
	// (shared extents included). It counts against the pool's capacity.
	StoredBytes int64 `json:"storedBytes"`
	// SubvolumeID is the btrfs subvolume of the snapshot's data.
	SubvolumeID uint64    `json:"subvolumeID,omitempty"`
	CreatedAt   time.Time `json:"createdAt"`
	// Labels records who asked for the snapshot (csi-snapshotter's
	// --extra-create-metadata), under the SnapshotLabel* keys, so that a
	// deleted snapshot in the trash can still be named to an operator.
	Labels map[string]string `json:"labels,omitempty"`
}

// Keys of Snapshot.Labels.
const (
	SnapshotLabelName      = "volumesnapshot"
	SnapshotLabelNamespace = "namespace"
	SnapshotLabelContent   = "volumesnapshotcontent"
)

func (s *Snapshot) clone() *Snapshot {
	c := *s
	c.Source = *s.Source.clone()
	c.Labels = maps.Clone(s.Labels)
	return &c
}

// csiName is the name CreateSnapshot was called with.
func (s *Snapshot) csiName() string {
	if s.CSIName != "" {
		return s.CSIName
	}
	return s.Name
}

// SnapshotID identifies a snapshot cluster-wide:
// "<node>/<pool>/snapshots/<name>". Like a volume ID it names the node and
// pool that hold the data, so a node answers for another's snapshot without
// touching a disk; its four parts can never be taken for a volume ID.
type SnapshotID struct {
	Node, Pool, Name string
}

func (id SnapshotID) String() string {
	return id.Node + "/" + id.Pool + "/" + snapIDTag + "/" + id.Name
}

// ParseSnapshotID parses and validates a snapshot ID. Errors wrap ErrInvalid.
func ParseSnapshotID(s string) (SnapshotID, error) {
	if len(s) > MaxIDLength {
		return SnapshotID{}, fmt.Errorf("%w: snapshot ID is %d bytes, the limit is %d", ErrInvalid, len(s), MaxIDLength)
	}
	parts := strings.Split(s, "/")
	if len(parts) != 4 || parts[2] != snapIDTag {
		return SnapshotID{}, fmt.Errorf("%w: snapshot ID %q is not of the form <node>/<pool>/%s/<name>", ErrInvalid, s, snapIDTag)
	}
	id := SnapshotID{Node: parts[0], Pool: parts[1], Name: parts[3]}
	if err := (VolumeID{Node: id.Node, Pool: id.Pool, Name: id.Name}).Validate(); err != nil {
		return SnapshotID{}, fmt.Errorf("snapshot ID %q: %w", s, err)
	}
	return id, nil
}

// snapshotKey is the name a snapshot has on disk and in its ID: the CSI
// name when the ID fits the spec's 128 bytes (csi-snapshotter's
// "snapshot-<uuid>" always does), else "h-" and 40 hex digits of its
// SHA-256 (see volumeKey).
func snapshotKey(node, pool, name string) string {
	if len(node)+len(pool)+len(snapIDTag)+len(name)+3 <= MaxIDLength {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "h-" + hex.EncodeToString(sum[:20])
}

// writeSnapshotRecord stores the record of a snapshot being built in
// .dhpp/tmp (nobody reads it there) and fsyncs it; the caller renames the
// directory into snapshots/ afterwards and fsyncs that.
func writeSnapshotRecord(root *os.Root, dir string, s *Snapshot) error {
	s.Version = recordVersion
	if err := writeJSONFile(root, path.Join(dir, snapRecord), s, os.O_EXCL); err != nil {
		return fmt.Errorf("write snapshot record %s: %w", dir, err)
	}
	return nil
}

// readSnapshotRecord reads the record in dir (relative to the pool).
func readSnapshotRecord(root *os.Root, dir string) (*Snapshot, error) {
	data, err := root.ReadFile(path.Join(dir, snapRecord))
	if err != nil {
		return nil, err
	}
	s := &Snapshot{}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("snapshot record %s is corrupt: %w", path.Join(dir, snapRecord), err)
	}
	return s, nil
}

// loadSnapshot reads the record of snapshots/<name> and checks it against
// where it lies, as loadVolume does for volumes; it returns what is wrong
// with it, if anything.
func loadSnapshot(root *os.Root, nodeID, pool, name string) (*Snapshot, string) {
	s, err := readSnapshotRecord(root, path.Join(dirSnapshots, name))
	if err != nil {
		return nil, fmt.Sprintf("cannot be read (%v)", unwrapPath(err))
	}
	want := SnapshotID{Node: nodeID, Pool: pool, Name: name}.String()
	switch {
	case s.Version != recordVersion:
		return nil, fmt.Sprintf("has version %d, this driver reads version %d", s.Version, recordVersion)
	case s.Name != name || s.ID != want || s.Pool != pool:
		return nil, fmt.Sprintf("has snapshot ID %q, but where it lies its ID is %q", s.ID, want)
	case !knownBackend(s.Source.Backend):
		return nil, fmt.Sprintf("names backend %q, which is not one this driver knows", s.Source.Backend)
	case s.SizeBytes <= 0:
		return nil, fmt.Sprintf("has size %d bytes", s.SizeBytes)
	}
	return s, ""
}
