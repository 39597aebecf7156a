package crash

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"google.golang.org/grpc/codes"
)

// rpcTimeout bounds one call: a hung driver fails the test, it is not
// mistaken for a kill.
const rpcTimeout = 2 * time.Minute

// maxErrors stops the loop early: after that many reported problems the
// rest would mostly be consequences.
const maxErrors = 8

var (
	mountCap = &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	blockCap = &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
)

// capability is how the volume is asked for and used: a filesystem, or
// the raw block device.
func (v *vol) capability() *csi.VolumeCapability {
	if v.block {
		return blockCap
	}
	return mountCap
}

// pool is one --pool of the driver under test.
type pool struct {
	name, path, backend string
}

// harness is the shared state of one crash loop: the driver, the model of
// every volume, the gate that pauses the workers, and the counters.
type harness struct {
	t       *testing.T
	d       *driverProc
	nodeID  string
	pools   []pool
	volsDir string // the kubelet's side: <volsDir>/<name>/{staging,target}
	// onlineLoopGrow: ext4 inside loop images can grow while mounted
	// (needs CAP_SYS_RESOURCE); without it loop volumes grow offline only.
	onlineLoopGrow bool
	gate           *gate
	stats          *stats
	aim            *aim
	begin          time.Time
	kills          atomic.Int32
	errs           atomic.Int32
	// checking is set while the checker runs (workers paused): its calls,
	// retries and repeats, are counted apart from the workers'.
	checking bool

	mu   sync.Mutex
	vols []*vol // every volume ever asked for, in creation order
	// snaps is every snapshot ever asked for.
	snaps snapList
}

func (h *harness) poolPath(name string) string {
	for _, p := range h.pools {
		if p.name == name {
			return p.path
		}
	}
	panic("unknown pool " + name)
}

func (h *harness) addVol(v *vol) {
	h.mu.Lock()
	h.vols = append(h.vols, v)
	h.mu.Unlock()
}

func (h *harness) allVols() []*vol {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*vol(nil), h.vols...)
}

// newVol makes the model of a volume not yet asked for. Its kubelet-side
// directory is made at its first stage.
func (h *harness) newVol(name, pool string, block bool, reqBytes int64) *vol {
	dir := filepath.Join(h.volsDir, name)
	v := &vol{
		name: name, pool: pool, id: h.nodeID + "/" + pool + "/" + name, reqBytes: reqBytes, block: block,
		staging: filepath.Join(dir, "staging"), target: filepath.Join(dir, "target"),
	}
	h.addVol(v)
	return v
}

// call runs one RPC against the current incarnation and classifies the
// result: an error from an incarnation that was killed meanwhile is
// uncertain, any other error is a real answer.
func (h *harness) call(v *vol, rpc, what string, f func(ctx context.Context, inc *incarnation) error) (outcome, error) {
	inc := h.d.current()
	kill := int(h.kills.Load())
	kind := rpc
	if rpc == "NodeStageVolume" && v.growPending {
		kind += "+grow"
	}
	if rpc == "CreateVolume" && v.source != nil {
		kind += "+restore"
	}
	if !h.checking {
		h.aim.starting(kind)
	}
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	begin := time.Now()
	err := f(ctx, inc)
	cancel()
	if err == nil {
		h.aim.took(kind, time.Since(begin))
	}
	o := ok
	if err != nil {
		o = failed
		if inc.killed.Load() {
			o = uncertain
		}
	}
	if h.checking {
		h.stats.countCheck(o)
	} else {
		h.stats.count(rpc, o)
	}
	h.record(v, kill, rpc+what, o, err)
	return o, err
}

func (h *harness) record(v *vol, kill int, what string, o outcome, err error) {
	e := event{at: time.Since(h.begin), kill: kill, what: what, outcome: o}
	if err != nil {
		e.err = err.Error()
	}
	v.history = append(v.history, e)
}

// note adds a non-RPC step (a file write, a check) to the history.
func (h *harness) note(v *vol, what string, err error) {
	o := ok
	if err != nil {
		o = failed
	}
	h.record(v, int(h.kills.Load()), what, o, err)
}

// fail reports a broken promise about v with its whole history, and
// leaves the volume alone from then on.
func (h *harness) fail(v *vol, format string, args ...any) {
	h.t.Helper()
	h.errs.Add(1)
	v.broken = true
	h.t.Errorf("%s\n%s  driver log lines naming %s (last %d):\n%s", fmt.Sprintf(format, args...), v.historyText(), v.name, logLines, h.d.logsMentioning(v.name, logLines))
}

// logLines is how many driver log lines a failure message quotes.
const logLines = 30

// failf reports a problem that is not about one volume.
func (h *harness) failf(format string, args ...any) {
	h.t.Helper()
	h.errs.Add(1)
	h.t.Errorf(format, args...)
}

func (h *harness) tooManyErrors() bool { return h.errs.Load() >= maxErrors }

// The requests, built in one place so that a retry is the same request.

func (h *harness) createReq(v *vol) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:                v.name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: v.reqBytes},
		VolumeCapabilities:  []*csi.VolumeCapability{v.capability()},
		Parameters:          map[string]string{dhpp.ParamPool: v.pool},
		VolumeContentSource: v.source,
	}
}

func (h *harness) create(v *vol) (outcome, *csi.Volume, error) {
	var got *csi.Volume
	kind := "mount"
	if v.block {
		kind = "block"
	}
	o, err := h.call(v, "CreateVolume", fmt.Sprintf("(%s, %s, %dMi)", v.pool, kind, v.reqBytes>>20), func(ctx context.Context, inc *incarnation) error {
		resp, err := inc.ctl.CreateVolume(ctx, h.createReq(v))
		got = resp.GetVolume()
		return err
	})
	return o, got, err
}

func (h *harness) delete(v *vol) (outcome, error) {
	return h.call(v, "DeleteVolume", "", func(ctx context.Context, inc *incarnation) error {
		_, err := inc.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
		return err
	})
}

func (h *harness) stage(v *vol) (outcome, error) {
	// The kubelet creates the staging directory before NodeStageVolume.
	if err := os.MkdirAll(v.staging, 0o750); err != nil {
		return failed, err
	}
	return h.call(v, "NodeStageVolume", "", func(ctx context.Context, inc *incarnation) error {
		_, err := inc.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: v.capability()})
		return err
	})
}

func (h *harness) unstage(v *vol) (outcome, error) {
	return h.call(v, "NodeUnstageVolume", "", func(ctx context.Context, inc *incarnation) error {
		_, err := inc.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
		return err
	})
}

func (h *harness) publish(v *vol) (outcome, error) {
	return h.call(v, "NodePublishVolume", "", func(ctx context.Context, inc *incarnation) error {
		_, err := inc.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
			VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: v.capability(),
		})
		return err
	})
}

func (h *harness) unpublish(v *vol) (outcome, error) {
	return h.call(v, "NodeUnpublishVolume", "", func(ctx context.Context, inc *incarnation) error {
		_, err := inc.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
		return err
	})
}

// expand is what csi-resizer and the kubelet do: ControllerExpandVolume,
// then NodeExpandVolume on the node at volumePath. It returns the size
// NodeExpandVolume reported.
func (h *harness) expand(v *vol, size int64, volumePath string) (outcome, int64, error) {
	rng := &csi.CapacityRange{RequiredBytes: size}
	o, err := h.call(v, "ControllerExpandVolume", fmt.Sprintf("(%dMi)", size>>20), func(ctx context.Context, inc *incarnation) error {
		_, err := inc.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.id, CapacityRange: rng, VolumeCapability: v.capability()})
		return err
	})
	if o != ok {
		return o, 0, err
	}
	var got int64
	where := "target"
	if volumePath == v.staging {
		where = "staging"
	}
	o, err = h.call(v, "NodeExpandVolume", fmt.Sprintf("(%dMi at %s)", size>>20, where), func(ctx context.Context, inc *incarnation) error {
		resp, err := inc.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
			VolumeId: v.id, VolumePath: volumePath, StagingTargetPath: v.staging, CapacityRange: rng, VolumeCapability: v.capability(),
		})
		got = resp.GetCapacityBytes()
		return err
	})
	return o, got, err
}

// deferredGrow reports whether expanding v grows only its image now and
// its filesystem at the next stage: an ext4 loop volume, with a driver
// that lacks CAP_SYS_RESOURCE for online growth.
func (h *harness) deferredGrow(v *vol) bool {
	return h.isLoop(v) && !v.block && !h.onlineLoopGrow
}

// expandFailed judges an expansion the driver refused. A full pool is an
// answer, not a bug. An ext4 loop volume that cannot grow online (see
// deferredGrow) gets an error naming CAP_SYS_RESOURCE, and the grown
// image waits for the next stage; anything else is a bug.
func (h *harness) expandFailed(v *vol, size int64, err error) {
	switch {
	case codeOf(err) == codes.ResourceExhausted, codeOf(err) == codes.OutOfRange:
	case h.deferredGrow(v) && strings.Contains(err.Error(), "CAP_SYS_RESOURCE"):
		v.capMax = max(v.capMax, size)
		v.deferredTo = max(v.deferredTo, size)
		v.growPending = true
	default:
		h.fail(v, "expanding to %d bytes failed: %v", size, err)
	}
}

// gate pauses the workers between a kill and the end of the checks that
// follow the restart, so the checker sees a model nobody is changing.
type gate struct {
	mu     sync.Mutex
	cond   *sync.Cond
	closed bool
	done   bool
	active int
}

func newGate() *gate {
	g := &gate{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// enter waits until the gate is open; false means the run is over.
func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.closed && !g.done {
		g.cond.Wait()
	}
	if g.done {
		return false
	}
	g.active++
	return true
}

func (g *gate) exit() {
	g.mu.Lock()
	g.active--
	g.cond.Broadcast()
	g.mu.Unlock()
}

// close stops new steps; those under way go on (and meet the kill).
func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// drain waits for the steps under way to end.
func (g *gate) drain() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.active > 0 {
		g.cond.Wait()
	}
}

func (g *gate) open() {
	g.mu.Lock()
	g.closed = false
	g.cond.Broadcast()
	g.mu.Unlock()
}

// finish ends the run: workers return from enter, steps under way end.
func (g *gate) finish() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.done = true
	g.cond.Broadcast()
	for g.active > 0 {
		g.cond.Wait()
	}
}
