package poolstatus

import (
	"fmt"
	"math"
	"path/filepath"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
)

const mib = 1 << 20

// PoolInfo is what the publisher reads of one pool; *node.Pool gives it
// through poolInfo, tests give it directly.
type PoolInfo struct {
	Name, Path, Backend string
	// Missing is the pool's Missing() error, nil when the pool is open.
	Missing     error
	Capacity    node.Capacity
	CapacityErr error
	Volumes     int
	Quarantined int
	// Mount holds Path in the driver's mount namespace (MountOf); nil
	// when the mount table was unreadable.
	Mount *v1.Mount
}

// MountOf is the mount that holds path in a mount table (mountinfo.Read):
// its mount point and propagation; nil if no mount holds it.
func MountOf(infos []mount.MountInfo, path string) *v1.Mount {
	mi, _, ok := mountinfo.Holder(infos, filepath.Clean(path))
	if !ok {
		return nil
	}
	return &v1.Mount{Point: mi.MountPoint, Propagation: mountinfo.Propagation(mi)}
}

// FromPool reads p's figures.
func FromPool(p *node.Pool) PoolInfo {
	pi := PoolInfo{Name: p.Name, Path: p.Path, Backend: string(p.Backend()), Missing: p.Missing(),
		Volumes: p.VolumeCount(), Quarantined: len(p.Quarantined())}
	if pi.Missing == nil {
		pi.Capacity, pi.CapacityErr = p.Capacity()
	}
	return pi
}

// buildStatus is the status of one pool from its figures, its health, its
// RAID state and its trash. It reads no clock and does no I/O, so equal
// inputs give equal statuses and the publisher writes only on change.
func buildStatus(pi PoolInfo, hs health.Status, degraded bool, raidDetail string, trash v1.Trash, version string) v1.DhppPoolStatus {
	st := v1.DhppPoolStatus{
		Path:          pi.Path,
		Backend:       pi.Backend,
		SizeEnforced:  pi.Backend != string(node.BackendDir),
		Volumes:       pi.Volumes,
		Trash:         trash,
		RAID:          v1.RAID{Degraded: degraded, Detail: raidDetail},
		DriverVersion: version,
		Mount:         pi.Mount,
	}
	st.QuarantinedVolumes = pi.Quarantined
	switch {
	case pi.Missing != nil:
		st.Missing = pi.Missing.Error()
	case pi.CapacityErr != nil:
		klog.V(2).InfoS("Pool status: capacity unreadable", "pool", pi.Name, "err", pi.CapacityErr)
	default:
		c := pi.Capacity
		st.CapacityBytes = roundMiB(c.Total)
		st.ProvisionedBytes = roundMiB(c.Provisioned)
		st.UsedBytes = roundMiB(c.Total - c.Free)
		st.FreeBytes = roundMiB(c.Free)
		st.AvailableBytes = roundMiB(c.Available)
		st.Capacity, st.Provisioned = Bytes(st.CapacityBytes), Bytes(st.ProvisionedBytes)
		st.Used, st.Free, st.Available = Bytes(st.UsedBytes), Bytes(st.FreeBytes), Bytes(st.AvailableBytes)
	}
	if hs.State == health.Fenced {
		// What GetCapacity reports for a fenced pool: nothing goes there.
		st.AvailableBytes, st.Available = 0, Bytes(0)
	}
	st.Health = v1.Health{State: hs.State.String(), Reason: string(hs.Reason), Message: hs.LastError,
		Manual: hs.Manual, Since: metav1.NewTime(hs.Since.UTC().Truncate(time.Second))}
	if hs.Since.IsZero() {
		st.Health.Since = metav1.Time{}
	}
	if hs.LastDuration > 0 {
		d := oneDigit(hs.LastDuration)
		st.Health.ProbeLatency, st.Health.ProbeLatencyMicros = d.String(), d.Microseconds()
	}
	return st
}

func roundMiB(b int64) int64 { return max(b, 0) / mib * mib }

// oneDigit rounds d to one significant digit (2.34ms → 2ms, 870µs →
// 900µs): probe latency moves at every probe, and a figure that changes at
// every probe would make every publish a write.
func oneDigit(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	scale := time.Duration(math.Pow10(int(math.Floor(math.Log10(float64(d))))))
	return (d + scale/2) / scale * scale
}

// Bytes formats a byte count as kubectl users read sizes: binary units with
// up to three significant digits ("9.77Gi", "512Mi", "0").
func Bytes(b int64) string {
	if b < 1024 {
		return resource.NewQuantity(b, resource.BinarySI).String()
	}
	units := []string{"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	v, i := float64(b)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f%s", v, units[i])
	case v >= 10:
		return trimZero(fmt.Sprintf("%.1f", v)) + units[i]
	default:
		return trimZero(fmt.Sprintf("%.2f", v)) + units[i]
	}
}

func trimZero(s string) string {
	for len(s) > 0 && s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	if len(s) > 0 && s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return s
}
