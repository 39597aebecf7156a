package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"
)

// AccessType is how a volume is consumed: a filesystem or a raw block device.
type AccessType string

const (
	AccessMount AccessType = "mount"
	AccessBlock AccessType = "block"
)

// recordVersion is bumped when the on-disk record changes incompatibly.
const recordVersion = 1

// Volume is a volume's record. It is stored as JSON in
// volumes/<name>/volume.json, next to the data it describes, so a disk is
// self-describing: the driver rebuilds its whole state by reading these.
type Volume struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	// Name is the volume's key: its directory name and the last part of its
	// ID. It equals the CSI name unless that was too long (see volumeKey).
	Name string `json:"name"`
	// CSIName is the name CreateVolume was called with, when it differs.
	CSIName string `json:"csiName,omitempty"`
	Pool    string `json:"pool"`
	// Backend that carved the volume; it never changes for a volume even if
	// the pool's configured backend does.
	Backend       BackendKind `json:"backend"`
	CapacityBytes int64       `json:"capacityBytes"`
	// TargetBytes is the size being applied while Phase is Resizing.
	TargetBytes int64      `json:"targetBytes,omitempty"`
	AccessType  AccessType `json:"accessType"`
	// FsType of the filesystem inside a loop image (empty for other backends).
	FsType string `json:"fsType,omitempty"`
	// Preallocated: the volume is an image written through once at
	// creation (and over every expansion), so its writes never allocate in
	// the pool's filesystem (see writeThrough). Only image volumes have it.
	Preallocated bool `json:"preallocated,omitempty"`

	Mode  fs.FileMode `json:"mode"`
	Phase Phase       `json:"phase"`
	// SubvolumeID is the btrfs subvolume (and level-0 qgroup) id.
	SubvolumeID uint64 `json:"subvolumeID,omitempty"`
	// ProjectID is the XFS/ext4 project id whose quota limits the volume.
	ProjectID uint32 `json:"projectID,omitempty"`
	// Labels records who asked for the volume (PVC namespace/name, PV name
	// from the provisioner's --extra-create-metadata), for operators reading
	// the disk without a cluster.
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"createdAt"`
	// ContentSource is what the volume was filled from at creation, if
	// anything (a restore or a clone).
	ContentSource *ContentSource `json:"contentSource,omitempty"`
}

// ContentSource names what a new volume is filled from: a snapshot or
// another volume (exactly one of the two IDs is set).
type ContentSource struct {
	SnapshotID string `json:"snapshotID,omitempty"`
	VolumeID   string `json:"volumeID,omitempty"`
}

func (c *ContentSource) String() string {
	if c == nil {
		return "nothing"
	}
	if c.SnapshotID != "" {
		return "snapshot " + c.SnapshotID
	}
	return "volume " + c.VolumeID
}

// ReservedBytes is what the volume counts against its pool: the larger of
// its size and a size being applied.
func (v *Volume) ReservedBytes() int64 { return max(v.CapacityBytes, v.TargetBytes) }

// csiName is the name CreateVolume was called with.
func (v *Volume) csiName() string {
	if v.CSIName != "" {
		return v.CSIName
	}
	return v.Name
}

func (v *Volume) clone() *Volume {
	c := *v
	if v.ContentSource != nil {
		cs := *v.ContentSource
		c.ContentSource = &cs
	}
	if v.Labels != nil {
		c.Labels = make(map[string]string, len(v.Labels))
		for k, val := range v.Labels {
			c.Labels[k] = val
		}
	}
	return &c
}

const recordFile = "volume.json"

// writeRecord stores v as dir/volume.json atomically and durably: write a
// temporary file, fsync it, rename it over the record, fsync the directory.
// A crash leaves either the old or the new record, never a torn one.
func writeRecord(root *os.Root, dir string, v *Volume) error {
	tmp := path.Join(dir, recordFile+".tmp")
	if err := writeRecordFile(root, tmp, v, os.O_TRUNC); err != nil {
		return err
	}
	if err := root.Rename(tmp, path.Join(dir, recordFile)); err != nil {
		return fmt.Errorf("write volume record: %w", err)
	}
	return syncDir(root, dir)
}

// writeNewRecord stores the first record of a volume that is still being
// built in .dhpp/tmp, where nobody reads it: no temporary file and rename
// are needed, only the fsync that makes it durable before the volume's
// directory is renamed into volumes/ (Pool.build fsyncs that rename).
func writeNewRecord(root *os.Root, dir string, v *Volume) error {
	return writeRecordFile(root, path.Join(dir, recordFile), v, os.O_EXCL)
}

// writeRecordFile writes v as JSON to the file rel, opened with flag added
// to O_WRONLY|O_CREATE, and fsyncs it.
func writeRecordFile(root *os.Root, rel string, v *Volume, flag int) error {
	v.Version = recordVersion
	if err := writeJSONFile(root, rel, v, flag); err != nil {
		return fmt.Errorf("write volume record %s: %w", rel, err)
	}
	return nil
}

// writeJSONFile writes v as indented JSON to the file rel (opened with flag
// added to O_WRONLY|O_CREATE) and fsyncs it: the one way volume and
// snapshot records reach the disk.
func writeJSONFile(root *os.Root, rel string, v any, flag int) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|flag, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readRecord loads dir/volume.json and checks that it is one this driver
// understands and that it names the directory it lives in. The trash purge
// uses it; live volumes are read by loadVolume, which checks more.
func readRecord(root *os.Root, dir, wantName string) (*Volume, error) {
	data, err := root.ReadFile(path.Join(dir, recordFile))
	if err != nil {
		return nil, err
	}
	v := &Volume{}
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("volume record %s is corrupt: %w", path.Join(dir, recordFile), err)
	}
	switch {
	case v.Version != recordVersion:
		return nil, fmt.Errorf("volume record %s has version %d, this driver reads %d", path.Join(dir, recordFile), v.Version, recordVersion)
	case v.Name != wantName:
		return nil, fmt.Errorf("volume record %s names volume %q, expected %q", path.Join(dir, recordFile), v.Name, wantName)
	case !v.Phase.Live():
		return nil, fmt.Errorf("volume record %s has phase %q", path.Join(dir, recordFile), v.Phase)
	}
	return v, nil
}

// Quarantine is a volume directory in volumes/ whose record cannot be
// trusted: unreadable, not JSON, of another version, or describing another
// volume than the one its directory and pool say it is. Where the record
// lies is the truth: a record that disagrees was damaged or tampered with
// (writeRecord never leaves a torn record, so a crash cannot cause this).
// Nothing of it is touched, and its name stays reserved: creating or
// deleting it is refused until an operator repairs the record or moves the
// directory away (README, "Quarantined volumes").
type Quarantine struct {
	Pool string
	// Name is the directory's name, the volume's key.
	Name string
	// Record is the record file's absolute path.
	Record string
	// Problem says what is wrong with the record.
	Problem string
}

// Err is the error every request on the quarantined volume gets.
func (q Quarantine) Err() error {
	return fmt.Errorf("%w: volume %q in pool %q is quarantined: its record %s %s. Its data is left untouched and the name stays reserved. "+
		"An operator repairs the record (or moves the directory %s out of the pool's volumes/ directory); the driver re-reads quarantined records every trash-purge round (at most a minute) and at start",
		ErrQuarantined, q.Name, q.Pool, q.Record, q.Problem, filepath.Dir(q.Record))
}

// loadVolume reads the record of volumes/<name> in a pool and checks it
// against where it lies: this node, this pool, this directory. It returns
// the volume, or what is wrong with the record. A leftover volume.json.tmp
// (a crash during writeRecord, before its rename) is never read: the
// record it was to replace is still whole.
func loadVolume(root *os.Root, nodeID, pool, name string) (*Volume, string) {
	data, err := root.ReadFile(path.Join(dirVolumes, name, recordFile))
	if err != nil {
		return nil, fmt.Sprintf("cannot be read (%v)", unwrapPath(err))
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, "is empty"
	}
	v := &Volume{}
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Sprintf("is not a valid record (%v)", err)
	}
	if problem := v.mismatch(nodeID, pool, name); problem != "" {
		return nil, problem
	}
	return v, ""
}

func knownBackend(k BackendKind) bool {
	_, err := ParseBackendKind(string(k))
	return err == nil && k != BackendAuto
}

// unwrapPath drops the path from a *PathError: the message names the
// record already.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// mismatch says how the record disagrees with the volume that lies at
// volumes/<name> of pool on node nodeID, or "" if it does not.
func (v *Volume) mismatch(nodeID, pool, name string) string {
	want := VolumeID{Node: nodeID, Pool: pool, Name: name}.String()
	switch {
	case v.Version != recordVersion:
		return fmt.Sprintf("has version %d, this driver reads version %d", v.Version, recordVersion)
	case v.Name != name:
		return fmt.Sprintf("names volume %q, but lies in directory %q", v.Name, name)
	case v.Pool != pool:
		return fmt.Sprintf("names pool %q, but lies in pool %q", v.Pool, pool)
	case v.ID != want:
		return fmt.Sprintf("has volume ID %q, but where it lies its ID is %q (node %q, pool %q); if this node or pool was renamed, run the driver with the old names", v.ID, want, nodeID, pool)
	case v.CSIName != "" && volumeKey(nodeID, pool, v.CSIName) != name:
		return fmt.Sprintf("has CSI name %q, which is not stored under directory %q", v.CSIName, name)
	case !v.Phase.Live():
		return fmt.Sprintf("has phase %q, which no volume in volumes/ has", v.Phase)
	case v.Phase == PhaseResizing && v.TargetBytes <= 0:
		return "is Resizing without a target size"
	case !knownBackend(v.Backend):
		return fmt.Sprintf("names backend %q, which is not one this driver carves volumes with", v.Backend)
	case v.CapacityBytes <= 0:
		return fmt.Sprintf("has size %d bytes", v.CapacityBytes)
	case v.AccessType != AccessMount && v.AccessType != AccessBlock:
		return fmt.Sprintf("has access type %q (mount or block expected)", v.AccessType)
	}
	return ""
}

// syncDir makes directory entry changes (create, rename) in dir durable.
func syncDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
