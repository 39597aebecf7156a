package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Snapshots live on the node that holds their volume, in the same pool
// (pkg/node, docs/design.md "Snapshots"). Like CreateVolume, these RPCs are
// served by every node's driver (csi-snapshotter with --node-deployment);
// the snapshot ID names the node, so a request for another node's snapshot
// is answered without touching a disk.

// CreateSnapshot snapshots a volume of this node. The snapshot is
// ready_to_use as soon as it is returned: it is made whole and durable
// before the call returns, or not at all. Its parameters are checked like
// a StorageClass's (ParseSnapshotParameters); the VolumeSnapshot's name and
// namespace and the content's name, if csi-snapshotter passes them, are
// kept in the snapshot's record so its trash entry can be named.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, required("name")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, required("source_volume_id")
	}
	labels, err := ParseSnapshotParameters(req.GetParameters())
	if err != nil {
		return nil, toStatus(err)
	}
	s, err := d.nodes.CreateSnapshot(ctx, node.SnapshotRequest{Name: req.GetName(), SourceVolumeID: req.GetSourceVolumeId(), Labels: labels})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

// DeleteSnapshot moves a snapshot to its pool's trash; an unknown or
// malformed ID succeeds (the spec's idempotency), another node's is refused.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, required("snapshot_id")
	}
	if err := d.nodes.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// GetSnapshot returns a snapshot of this node (NotFound for any other ID).
func (d *Driver) GetSnapshot(_ context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, required("snapshot_id")
	}
	s, err := d.nodes.GetSnapshot(req.GetSnapshotId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

// ListSnapshots pages through this node's snapshots in ID order, filtered
// by snapshot ID and source volume ID; an ID no snapshot here has gives an
// empty list.
func (d *Driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	all := d.nodes.ListSnapshots()
	var snaps []*node.Snapshot
	for _, s := range all {
		if (req.GetSnapshotId() == "" || s.ID == req.GetSnapshotId()) &&
			(req.GetSourceVolumeId() == "" || s.SourceVolumeID == req.GetSourceVolumeId()) {
			snaps = append(snaps, s)
		}
	}
	parse := func(t string) error { _, err := node.ParseSnapshotID(t); return err }
	out, next, err := pageBy(snaps, func(s *node.Snapshot) string { return s.ID }, parse, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range out {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)})
	}
	return resp, nil
}

func csiSnapshot(s *node.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolumeID,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(s.CreatedAt),
		// Only complete, durable snapshots exist (see pkg/node).
		ReadyToUse: true,
	}
}

// contentSource translates a CreateVolume content source.
func contentSource(cs *csi.VolumeContentSource) (*node.ContentSource, error) {
	if cs == nil {
		return nil, nil
	}
	switch t := cs.GetType().(type) {
	case *csi.VolumeContentSource_Snapshot:
		if t.Snapshot.GetSnapshotId() == "" {
			return nil, required("volume_content_source.snapshot.snapshot_id")
		}
		return &node.ContentSource{SnapshotID: t.Snapshot.GetSnapshotId()}, nil
	case *csi.VolumeContentSource_Volume:
		if t.Volume.GetVolumeId() == "" {
			return nil, required("volume_content_source.volume.volume_id")
		}
		return &node.ContentSource{VolumeID: t.Volume.GetVolumeId()}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "volume_content_source names neither a snapshot nor a volume")
}

func csiContentSource(cs *node.ContentSource) *csi.VolumeContentSource {
	switch {
	case cs == nil:
		return nil
	case cs.SnapshotID != "":
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: cs.SnapshotID}}}
	}
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: cs.VolumeID}}}
}
