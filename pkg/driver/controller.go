package driver

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var controllerCapabilities = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
	legacyControllerVolumeCondition,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
}

func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	caps := make([]*csi.ControllerServiceCapability, len(controllerCapabilities))
	for i, t := range controllerCapabilities {
		caps[i] = &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}}
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume carves a volume on this node. A request whose topology
// requirements exclude this node, or whose pool is fenced or full, gets
// ResourceExhausted: csi-provisioner then reschedules the PVC elsewhere.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, required("name")
	}
	access, fsType, err := checkCapabilities("volume_capabilities", req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	params, err := ParseParameters(req.GetParameters())
	if err != nil {
		return nil, toStatus(err)
	}
	src, err := contentSource(req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	if err := d.checkRequisite(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}
	v, err := d.nodes.CreateVolume(ctx, node.CreateRequest{
		Name: req.GetName(), Pool: params.Pool,
		RequiredBytes: req.GetCapacityRange().GetRequiredBytes(), LimitBytes: req.GetCapacityRange().GetLimitBytes(),
		AccessType: access, FsType: fsType, Mode: params.Mode, Labels: params.Labels,
		Preallocate: params.Preallocate, Admit: d.refuseFenced, Source: src,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

// refuseFenced refuses a fenced pool with ResourceExhausted: another node
// may take the volume.
func (d *Driver) refuseFenced(pool string) error {
	if fenced, why := d.fenced(pool); fenced {
		return status.Errorf(codes.ResourceExhausted, "pool %q on node %q is fenced after failing its disk health probe: %s", pool, d.nodeID, why)
	}
	return nil
}

func (d *Driver) csiVolume(v *node.Volume) *csi.Volume {
	return &csi.Volume{
		VolumeId:      v.ID,
		CapacityBytes: v.CapacityBytes,
		VolumeContext: map[string]string{
			dhpp.ContextPool:    v.Pool,
			dhpp.ContextBackend: string(v.Backend),
		},
		AccessibleTopology: []*csi.Topology{d.topology()},
		ContentSource:      csiContentSource(v.ContentSource),
	}
}

// checkRequisite refuses requests whose requisite topologies exclude this
// node. Preferred topologies are only preferences: this node is the only
// place this driver instance can put a volume.
func (d *Driver) checkRequisite(reqs *csi.TopologyRequirement) error {
	if len(reqs.GetRequisite()) == 0 {
		return nil
	}
	for _, t := range reqs.GetRequisite() {
		if d.topologyMatches(t) {
			return nil
		}
	}
	return status.Errorf(codes.ResourceExhausted, "accessibility_requirements.requisite does not include node %q (%s=%s); this driver instance can only provision there",
		d.nodeID, dhpp.TopologyKey, d.nodeID)
}

// topologyMatches reports whether a topology is satisfied by this node: it
// must name this node under dhpp's key and carry no key dhpp does not know.
func (d *Driver) topologyMatches(t *csi.Topology) bool {
	segs := t.GetSegments()
	if len(segs) == 0 {
		return false
	}
	for k, v := range segs {
		if k != dhpp.TopologyKey || v != d.nodeID {
			return false
		}
	}
	return true
}

func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if err := d.nodes.DeleteVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *Driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, required("volume_capabilities")
	}
	v, err := d.nodes.GetVolume(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	if _, err := ParseParameters(req.GetParameters()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	for i, c := range req.GetVolumeCapabilities() {
		access, fsType, err := checkCapability(c)
		if err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume_capabilities[%d]: %v", i, err)}, nil
		}
		if access != v.AccessType {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume_capabilities[%d]: volume %q is a %s volume, not %s", i, v.ID, v.AccessType, access)}, nil
		}
		if have := d.nodes.FsTypeOf(v); access == node.AccessMount && fsType != "" && have != "" && fsType != have {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume_capabilities[%d]: volume %q has filesystem %s, not %s", i, v.ID, have, fsType)}, nil
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ListVolumes pages through this node's volumes in volume-ID order (see page).
func (d *Driver) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	vols, next, err := page(d.nodes.ListVolumes(), func(v *node.Volume) string { return v.ID }, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols {
		st := &csi.ListVolumesResponse_VolumeStatus{}
		legacyCondition(st, d.volumeHealth(v))
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: d.csiVolume(v), Status: st})
	}
	return resp, nil
}

// GetCapacity reports what a new volume may get from the pool the
// parameters name. It is 0 for a pool not configured here, for another
// node's topology, for capabilities the pool cannot serve (an fs_type it
// cannot make), and for a fenced pool, so the scheduler (through
// CSIStorageCapacity) sends PVCs elsewhere; also for a pool whose
// directory is missing.
func (d *Driver) GetCapacity(_ context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	params, err := ParseParameters(req.GetParameters())
	if err != nil {
		return nil, toStatus(err)
	}
	pool, err := d.nodes.Pool(params.Pool)
	if err != nil {
		// Not configured on this node (other nodes may have it): nothing
		// here, so the scheduler sends claims for it elsewhere.
		return &csi.GetCapacityResponse{}, nil
	}
	if t := req.GetAccessibleTopology(); t != nil && !d.topologyMatches(t) {
		return &csi.GetCapacityResponse{}, nil
	}
	if pool.Missing() != nil {
		return &csi.GetCapacityResponse{}, nil // its disk is not there: send PVCs elsewhere
	}
	for _, c := range req.GetVolumeCapabilities() {
		access, fsType, err := checkCapability(c)
		if err != nil || !pool.Serves(access, fsType) {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	if fenced, _ := d.fenced(pool.Name); fenced {
		return &csi.GetCapacityResponse{}, nil
	}
	c, err := pool.Capacity()
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: c.Available,
		MaximumVolumeSize: wrapInt64(c.Available),
	}, nil
}

func (d *Driver) ControllerGetVolume(_ context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	v, err := d.nodes.GetVolume(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	st := &csi.ControllerGetVolumeResponse_VolumeStatus{}
	legacyCondition(st, d.volumeHealth(v))
	return &csi.ControllerGetVolumeResponse{Volume: d.csiVolume(v), Status: st}, nil
}

// ControllerExpandVolume validates the new size and leaves the work to the
// owning node's NodeExpandVolume. csi-resizer has no node-deployment mode:
// one leader calls this on whichever node it runs, which is usually not the
// node holding the volume. The kubelet of the right node always follows up
// with NodeExpandVolume, where the quota or image actually grows.
func (d *Driver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	if req.GetCapacityRange() == nil {
		return nil, required("capacity_range")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if _, _, err := checkCapability(c); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
		}
	}
	size, err := d.nodes.CheckExpansion(req.GetVolumeId(), req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: true}, nil
}
