package driver

import (
	"context"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var nodeCapabilities = []csi.NodeServiceCapability_RPC_Type{
	// Stage is a no-op for btrfs and dir volumes; loop volumes attach and
	// mount their image once per node there.
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
	legacyNodeVolumeCondition,
}

func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	caps := make([]*csi.NodeServiceCapability, len(nodeCapabilities))
	for i, t := range nodeCapabilities {
		caps[i] = &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}}
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.nodeID,
		MaxVolumesPerNode:  d.maxVolumes,
		AccessibleTopology: d.topology(),
	}, nil
}

// checkPath validates a path the CO gives us: absolute, clean, no NUL. The
// CO owns these paths; dhpp only mounts onto them and never deletes below them.
func checkPath(field, p string) error {
	switch {
	case p == "":
		return required(field)
	case strings.ContainsRune(p, 0):
		return status.Errorf(codes.InvalidArgument, "%s contains a NUL byte", field)
	case !filepath.IsAbs(p):
		return status.Errorf(codes.InvalidArgument, "%s %q is not an absolute path", field, p)
	case filepath.Clean(p) != strings.TrimSuffix(p, "/") && p != "/":
		return status.Errorf(codes.InvalidArgument, "%s %q is not a clean path (no '..', '.', or '//')", field, p)
	case p == "/":
		return status.Errorf(codes.InvalidArgument, "%s must not be /", field)
	case len(p) > 4096:
		return status.Errorf(codes.InvalidArgument, "%s is longer than PATH_MAX", field)
	}
	return nil
}

// checkVolumePath validates the volume_path of NodeGetVolumeStats and
// NodeExpandVolume. The spec's error for "no volume at this path" is
// NotFound, so only a missing field or a NUL byte is InvalidArgument here;
// pkg/node refuses a relative, absent or foreign path with NotFound.
func checkVolumePath(p string) error {
	switch {
	case p == "":
		return required("volume_path")
	case strings.ContainsRune(p, 0):
		return status.Error(codes.InvalidArgument, "volume_path contains a NUL byte")
	}
	return nil
}

func mountFlags(c *csi.VolumeCapability) []string {
	if m := c.GetMount(); m != nil {
		return m.GetMountFlags()
	}
	return nil
}

func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if err := checkPath("staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	if req.GetVolumeCapability() == nil {
		return nil, required("volume_capability")
	}
	access, fsType, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
	}
	err = d.nodes.StageVolume(ctx, node.StageRequest{
		VolumeID: req.GetVolumeId(), StagingPath: req.GetStagingTargetPath(),
		AccessType: access, FsType: fsType, MountFlags: mountFlags(req.GetVolumeCapability()),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if err := checkPath("staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	if err := d.nodes.UnstageVolume(ctx, req.GetVolumeId(), req.GetStagingTargetPath()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if err := checkPath("target_path", req.GetTargetPath()); err != nil {
		return nil, err
	}
	if err := checkPath("staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	c := req.GetVolumeCapability()
	if c == nil {
		return nil, required("volume_capability")
	}
	access, _, err := checkCapability(c)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
	}
	err = d.nodes.PublishVolume(ctx, node.PublishRequest{
		VolumeID: req.GetVolumeId(), StagingPath: req.GetStagingTargetPath(), TargetPath: req.GetTargetPath(),
		AccessType: access, ReadOnly: req.GetReadonly() || isReadOnlyMode(c), MountFlags: mountFlags(c),
		SingleWriter: c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if err := checkPath("target_path", req.GetTargetPath()); err != nil {
		return nil, err
	}
	if err := d.nodes.UnpublishVolume(ctx, req.GetVolumeId(), req.GetTargetPath()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats answers from the backend's own accounting (qgroup,
// statfs of the volume's filesystem): constant time whatever the volume
// holds or how many volumes the pool has.
func (d *Driver) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if err := checkVolumePath(req.GetVolumePath()); err != nil {
		return nil, err
	}
	v, u, err := d.nodes.VolumeStats(req.GetVolumeId(), req.GetVolumePath(), req.GetStagingTargetPath())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.NodeGetVolumeStatsResponse{
		Usage: []*csi.VolumeUsage{{
			Unit: csi.VolumeUsage_BYTES, Total: u.TotalBytes, Used: u.UsedBytes, Available: u.AvailableBytes,
		}},
	}
	legacyCondition(resp, d.volumeHealth(v))
	if u.HasInodes {
		resp.Usage = append(resp.Usage, &csi.VolumeUsage{
			Unit: csi.VolumeUsage_INODES, Total: u.TotalInodes, Used: u.UsedInodes, Available: u.FreeInodes,
		})
	}
	return resp, nil
}

// NodeExpandVolume grows the volume on the node that holds it: the btrfs
// limit, the loop image and its filesystem (online if mounted). Without a
// capacity_range (it is optional) there is no new size to apply, and the
// current size is reported.
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if err := checkVolumePath(req.GetVolumePath()); err != nil {
		return nil, err
	}
	if c := req.GetVolumeCapability(); c != nil {
		if _, _, err := checkCapability(c); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
		}
	}
	v, err := d.nodes.ExpandVolume(ctx, node.ExpandRequest{
		VolumeID: req.GetVolumeId(), VolumePath: req.GetVolumePath(), StagingPath: req.GetStagingTargetPath(),
		RequiredBytes: req.GetCapacityRange().GetRequiredBytes(), LimitBytes: req.GetCapacityRange().GetLimitBytes(),
		KeepSize: req.GetCapacityRange() == nil,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: v.CapacityBytes}, nil
}

func wrapInt64(n int64) *wrapperspb.Int64Value { return wrapperspb.Int64(n) }
