package driver

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Volume health is reported two ways, because the CSI spec changed and
// Kubernetes has not caught up:
//
//   - CSI 1.13's alpha health API (ControllerGetVolumeHealth,
//     ControllerListVolumeHealth, NodeGetVolumeHealth, NodeGetStorageHealth);
//   - the VolumeCondition of CSI <= 1.12 (field 2 of NodeGetVolumeStats,
//     ControllerGetVolume and ListVolumes statuses, capability values 4 and
//     11), which is what the kubelet's CSIVolumeHealth feature and
//     external-health-monitor read. CSI 1.13 deleted it from the .proto, so
//     dhpp writes it onto the wire itself (legacyCondition). csi-test keeps
//     accepting those capability values for the same reason.
//
// dhpp knows two adverse conditions of a pool, and a volume inherits its
// pool's:
//
//   - fenced: the disk failed the health probe, no new volumes go there,
//     existing mounts are kept. VolumeHealth INACCESSIBLE (reason
//     PoolFenced), storage STORAGE_UNREACHABLE, legacy condition abnormal.
//   - degraded: an md array under the pool lost redundancy (a failed or
//     missing member) but still serves I/O, so the pool is NOT fenced and
//     keeps taking volumes. VolumeHealth DEGRADED (reason ArrayDegraded),
//     storage STORAGE_DEGRADED. The legacy VolumeCondition has no
//     "degraded": dhpp reports abnormal=false with a message naming the
//     degradation, because kubelet and external-health-monitor turn
//     abnormal into Warning events on every pod and PVC of the node, and the
//     pods' data is fully available; the operator signals for a degraded
//     array are the dhpp_pool_degraded metric, the driver's log and the
//     CSI 1.13 health RPCs.

// Capability values CSI 1.13 removed but Kubernetes 1.33 still asks for.
const (
	legacyControllerVolumeCondition csi.ControllerServiceCapability_RPC_Type = 11
	legacyNodeVolumeCondition       csi.NodeServiceCapability_RPC_Type       = 4
)

// Reason strings (CamelCase, for machines and `kubectl describe`).
const (
	reasonPoolFenced    = "PoolFenced"
	reasonArrayDegraded = "ArrayDegraded"
)

// volumeHealth returns the volume's adverse conditions (none when healthy),
// the most severe first.
func (d *Driver) volumeHealth(v *node.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: v.ID}
	if fenced, why := d.fenced(v.Pool); fenced {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status:  csi.VolumeHealthErrorType_INACCESSIBLE,
			Reason:  reasonPoolFenced,
			Message: fmt.Sprintf("pool %q on node %q is fenced after failing its disk health probe: %s; the volume's data is untouched, new volumes go elsewhere", v.Pool, d.nodeID, why),
		})
	}
	if degraded, why := d.degraded(v.Pool); degraded {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status:  csi.VolumeHealthErrorType_DEGRADED,
			Reason:  reasonArrayDegraded,
			Message: fmt.Sprintf("pool %q on node %q runs on a degraded RAID array: %s; the volume is fully usable, but another disk failure may lose its data", v.Pool, d.nodeID, why),
		})
	}
	return h
}

// conditionOf flattens health into the legacy (abnormal, message) pair.
// Only conditions worse than DEGRADED are abnormal (see the top of this
// file); a degradation still shows in the message.
func conditionOf(h *csi.VolumeHealth) (bool, string) {
	var worst, degraded *csi.VolumeHealth_VolumeHealthEntry
	for _, e := range h.GetHealthStatuses() {
		switch {
		case e.GetStatus() != csi.VolumeHealthErrorType_DEGRADED && worst == nil:
			worst = e
		case e.GetStatus() == csi.VolumeHealthErrorType_DEGRADED && degraded == nil:
			degraded = e
		}
	}
	switch {
	case worst != nil:
		return true, worst.GetReason() + ": " + worst.GetMessage()
	case degraded != nil:
		return false, "volume is usable, redundancy reduced: " + degraded.GetReason() + ": " + degraded.GetMessage()
	}
	return false, "volume is healthy"
}

// legacyCondition appends `VolumeCondition volume_condition = 2` (message
// VolumeCondition { bool abnormal = 1; string message = 2; }) to m's unknown
// fields, so peers built against CSI <= 1.12 decode it as the real field.
// Field 2 is reserved in 1.13, so nothing else can ever occupy it.
func legacyCondition(m proto.Message, h *csi.VolumeHealth) {
	abnormal, msg := conditionOf(h)
	var cond []byte
	if abnormal {
		cond = protowire.AppendTag(cond, 1, protowire.VarintType)
		cond = protowire.AppendVarint(cond, 1)
	}
	cond = protowire.AppendTag(cond, 2, protowire.BytesType)
	cond = protowire.AppendString(cond, msg)
	r := m.ProtoReflect()
	raw := append([]byte(nil), r.GetUnknown()...)
	raw = protowire.AppendTag(raw, 2, protowire.BytesType)
	raw = protowire.AppendBytes(raw, cond)
	r.SetUnknown(raw)
}

func (d *Driver) ControllerGetVolumeHealth(_ context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	v, err := d.nodes.GetVolume(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: d.volumeHealth(v)}, nil
}

// ControllerListVolumeHealth lists only volumes with adverse conditions, in
// volume-ID order, paged like ListVolumes.
func (d *Driver) ControllerListVolumeHealth(_ context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	var abnormal []*csi.VolumeHealth
	for _, v := range d.nodes.ListVolumes() {
		if h := d.volumeHealth(v); len(h.HealthStatuses) > 0 {
			abnormal = append(abnormal, h)
		}
	}
	entries, next, err := page(abnormal, (*csi.VolumeHealth).GetVolumeId, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerListVolumeHealthResponse{Entries: entries, NextToken: next}, nil
}

func (d *Driver) NodeGetVolumeHealth(_ context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, required("volume_id")
	}
	v, err := d.nodes.GetVolume(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: d.volumeHealth(v)}, nil
}

// NodeGetStorageHealth reports each fenced pool as unreachable storage and
// each pool on a degraded array as degraded storage (both, if both).
func (d *Driver) NodeGetStorageHealth(context.Context, *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	resp := &csi.NodeGetStorageHealthResponse{}
	for _, p := range d.nodes.Pools() {
		if fenced, why := d.fenced(p.Name); fenced {
			resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status:  csi.StorageHealthErrorType_STORAGE_UNREACHABLE,
				Reason:  reasonPoolFenced,
				Message: fmt.Sprintf("pool %q (%s) on node %q is fenced: %s", p.Name, p.Path, d.nodeID, why),
			})
		}
		if degraded, why := d.degraded(p.Name); degraded {
			resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status:  csi.StorageHealthErrorType_STORAGE_DEGRADED,
				Reason:  reasonArrayDegraded,
				Message: fmt.Sprintf("pool %q (%s) on node %q runs on a degraded RAID array: %s", p.Name, p.Path, d.nodeID, why),
			})
		}
	}
	return resp, nil
}
