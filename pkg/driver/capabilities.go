package driver

import (
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// singleNodeModes are the access modes dhpp serves: a volume lives on one
// node's disk, and any number of pods on that node may share it.
var singleNodeModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

// checkCapability validates one capability and returns its access type and
// (for mount) filesystem type. The error says what is wrong and why.
func checkCapability(c *csi.VolumeCapability) (node.AccessType, string, error) {
	if c == nil {
		return "", "", fmt.Errorf("volume capability is empty")
	}
	mode := c.GetAccessMode().GetMode()
	if c.GetAccessMode() == nil || mode == csi.VolumeCapability_AccessMode_UNKNOWN {
		return "", "", fmt.Errorf("volume capability has no access mode")
	}
	if !singleNodeModes[mode] {
		return "", "", fmt.Errorf("access mode %s is not supported: a dhpp volume lives on one node's disk (use ReadWriteOnce or ReadWriteOncePod)", mode)
	}
	switch t := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Mount:
		return node.AccessMount, t.Mount.GetFsType(), nil
	case *csi.VolumeCapability_Block:
		return node.AccessBlock, "", nil
	}
	return "", "", fmt.Errorf("volume capability has no access type (mount or block)")
}

// checkCapabilities validates a request's capabilities (field names the
// request field) and returns the one access type they agree on.
func checkCapabilities(field string, caps []*csi.VolumeCapability) (node.AccessType, string, error) {
	if len(caps) == 0 {
		return "", "", required(field)
	}
	var access node.AccessType
	var fsType string
	for i, c := range caps {
		a, f, err := checkCapability(c)
		if err != nil {
			return "", "", status.Errorf(codes.InvalidArgument, "%s[%d]: %v", field, i, err)
		}
		if access != "" && a != access {
			return "", "", status.Errorf(codes.InvalidArgument, "%s mixes block and mount access types", field)
		}
		if fsType != "" && f != "" && f != fsType {
			return "", "", status.Errorf(codes.InvalidArgument, "%s asks for two filesystem types (%s, %s)", field, fsType, f)
		}
		access = a
		if f != "" {
			fsType = f
		}
	}
	return access, fsType, nil
}

func isReadOnlyMode(c *csi.VolumeCapability) bool {
	return c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}
