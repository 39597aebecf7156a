package driver

import (
	"context"
	"errors"

	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// toStatus maps a pkg/node error to the gRPC status the CSI spec names for
// it, keeping the message (which already names the volume, pool or field).
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, node.ErrElsewhere):
		// First: such an error may also wrap the reason this node cannot
		// serve it (ErrOutOfRange for this pool's size), but another node
		// may, so csi-provisioner must reschedule rather than give up.
		code = codes.ResourceExhausted
	case errors.Is(err, node.ErrInvalid), errors.Is(err, node.ErrUnsupported):
		code = codes.InvalidArgument
	case errors.Is(err, node.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, node.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, node.ErrOutOfRange):
		code = codes.OutOfRange
	case errors.Is(err, node.ErrNoSpace):
		code = codes.ResourceExhausted
	case errors.Is(err, node.ErrBusy):
		code = codes.Aborted
	case errors.Is(err, node.ErrInUse), errors.Is(err, node.ErrNotStaged), errors.Is(err, node.ErrWrongNode),
		errors.Is(err, node.ErrQuarantined), errors.Is(err, node.ErrPoolMissing), errors.Is(err, node.ErrWrongPath):
		code = codes.FailedPrecondition
	}
	return status.Error(code, err.Error())
}

// required returns InvalidArgument naming a missing field.
func required(field string) error {
	return status.Errorf(codes.InvalidArgument, "%s is required", field)
}
