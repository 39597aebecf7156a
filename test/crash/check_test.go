package crash

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"golang.org/x/sys/unix"
)

// The invariants, checked after every restart while the workers are
// paused. Each check reports the volume's history when it fails.

// checkAfterRestart is the whole post-restart check: the recovered state
// first (before anything is retried), then the retries of every call the
// kill cut off, then the state they converge to.
func (h *harness) checkAfterRestart() {
	h.checking = true
	defer func() { h.checking = false }()
	h.checkTmpEmpty()
	listed := h.listVolumes()
	for _, v := range h.allVols() {
		h.checkRecovered(v, listed)
	}
	h.checkNoStrangers(listed)
	h.checkSnapshotsRecovered()
	for _, v := range h.allVols() {
		h.checkNotFrozen(v)
	}
	for _, v := range h.allVols() {
		if v.pending != "" && !v.broken {
			h.resolve(v)
		}
	}
	h.resolveSnapshots()
	for _, v := range h.allVols() {
		if v.live() && !v.broken {
			h.checkUsable(v)
		}
	}
	listed = h.listVolumes()
	h.checkListedExactly(listed)
	h.checkCapacity(listed)
	h.checkLoopDevices()
	h.checkMounts()
}

// checkTmpEmpty: recovery moves every interrupted creation out of
// .dhpp/tmp before the driver serves.
func (h *harness) checkTmpEmpty() {
	for _, p := range h.pools {
		tmp := filepath.Join(p.path, ".dhpp", "tmp")
		names, err := dirEntries(tmp)
		if err != nil {
			h.failf("pool %s: read %s: %v", p.name, tmp, err)
			continue
		}
		if len(names) > 0 {
			h.failf("pool %s: %s holds %s after recovery; interrupted creations must be moved to the trash", p.name, tmp, strings.Join(names, ", "))
		}
	}
}

// listVolumes pages through ListVolumes with a small page size, so that
// pagination across the restart-rebuilt index is exercised too.
func (h *harness) listVolumes() map[string]*csi.Volume {
	inc := h.d.current()
	out := map[string]*csi.Volume{}
	token := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		resp, err := inc.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 7, StartingToken: token})
		cancel()
		if err != nil {
			h.t.Fatalf("ListVolumes after restart #%d: %v", h.kills.Load(), err)
		}
		for _, e := range resp.GetEntries() {
			id := e.GetVolume().GetVolumeId()
			if _, dup := out[id]; dup {
				h.failf("ListVolumes lists %s twice", id)
			}
			out[id] = e.GetVolume()
		}
		if token = resp.GetNextToken(); token == "" {
			return out
		}
	}
}

// checkRecovered compares what the restarted driver lists with what it
// promised before the kill.
func (h *harness) checkRecovered(v *vol, listed map[string]*csi.Volume) {
	got, isListed := listed[v.id]
	switch {
	case v.deleted == yes:
		if isListed {
			h.fail(v, "volume %s was deleted (DeleteVolume answered OK) but is listed again after restart #%d", v.id, h.kills.Load())
		} else if !v.broken && !trashedWithRecord(h.poolPath(v.pool), v.name) {
			// (An interrupted create of the same name may have left a
			// second entry, without a record.)
			h.fail(v, "volume %s was deleted, but no entry of its pool's trash holds its record after restart #%d (the data must stay for --trash-retention)", v.id, h.kills.Load())
		}
	case v.exists == no:
		if isListed {
			h.fail(v, "CreateVolume of %s failed, yet the volume is listed after restart #%d", v.id, h.kills.Load())
		}
	case v.broken:
	case v.exists == maybe:
		h.stats.note(fmt.Sprintf("create:%s", presence(isListed)))
		if isListed {
			h.checkComplete(v, got, "its CreateVolume was cut off by the kill")
		} else if onDisk(h.poolPath(v.pool), v.name) {
			h.fail(v, "volume %s is not listed after restart #%d but volumes/%s exists in pool %s: a half-made volume was left in place", v.id, h.kills.Load(), v.name, v.pool)
		}
	case v.deleted == maybe:
		h.stats.note(fmt.Sprintf("delete:%s", presence(isListed)))
		if isListed {
			h.checkComplete(v, got, "its DeleteVolume was cut off by the kill")
		} else if onDisk(h.poolPath(v.pool), v.name) {
			h.fail(v, "volume %s is not listed after restart #%d but volumes/%s is still in pool %s", v.id, h.kills.Load(), v.name, v.pool)
		}
	case !isListed:
		h.fail(v, "volume %s was created (CreateVolume answered OK) and never deleted, but is not listed after restart #%d", v.id, h.kills.Load())
	default:
		h.checkComplete(v, got, "")
	}
}

func presence(listed bool) string {
	if listed {
		return "present"
	}
	return "absent"
}

// checkComplete: a listed volume is whole: its size is one the driver
// promised, ControllerGetVolume finds it, and its record on disk parses
// and names it.
func (h *harness) checkComplete(v *vol, got *csi.Volume, why string) {
	if why != "" {
		why = " (" + why + ")"
	}
	if c := got.GetCapacityBytes(); v.exists == yes && (c < v.capMin || c > v.capMax) {
		h.fail(v, "ListVolumes after restart #%d gives %s %d bytes, want between %d and %d%s", h.kills.Load(), v.id, c, v.capMin, v.capMax, why)
		return
	}
	if _, err := h.getVolume(v); err != nil {
		h.fail(v, "volume %s is listed but ControllerGetVolume fails after restart #%d: %v%s", v.id, h.kills.Load(), err, why)
		return
	}
	r, err := readRecord(h.poolPath(v.pool), v.name)
	if err != nil {
		h.fail(v, "volume %s is listed but its record is unreadable after restart #%d: %v%s", v.id, h.kills.Load(), err, why)
		return
	}
	if r.ID != v.id || r.Pool != v.pool {
		h.fail(v, "volume.json of %s names id %q pool %q%s", v.id, r.ID, r.Pool, why)
	}
}

func (h *harness) getVolume(v *vol) (*csi.Volume, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	resp, err := h.d.current().ctl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: v.id})
	return resp.GetVolume(), err
}

// checkNoStrangers: the driver lists only volumes the test asked for.
func (h *harness) checkNoStrangers(listed map[string]*csi.Volume) {
	known := map[string]bool{}
	for _, v := range h.allVols() {
		known[v.id] = true
	}
	for id := range listed {
		if !known[id] {
			h.failf("after restart #%d the driver lists %s, which the test never created", h.kills.Load(), id)
		}
	}
}

// resolve retries the call a kill cut off, as a CO retries until it gets
// an answer, and requires that it converges: the same request now
// succeeds and leaves the volume as a completed call would have.
func (h *harness) resolve(v *vol) {
	op := v.pending
	v.pending = ""
	switch op {
	case "create":
		o, got, err := h.create(v)
		if o != ok {
			h.fail(v, "retried CreateVolume after restart #%d: %v", h.kills.Load(), err)
			return
		}
		if got.GetVolumeId() != v.id || got.GetCapacityBytes() < v.reqBytes {
			h.fail(v, "retried CreateVolume answered %q of %d bytes, want %q of at least %d", got.GetVolumeId(), got.GetCapacityBytes(), v.id, v.reqBytes)
			return
		}
		v.exists, v.capMin, v.capMax = yes, got.GetCapacityBytes(), got.GetCapacityBytes()
	case "delete":
		if o, err := h.delete(v); o != ok {
			h.fail(v, "retried DeleteVolume after restart #%d: %v", h.kills.Load(), err)
			return
		}
		v.deleted = yes
	case "stage":
		if o, err := h.stage(v); o != ok {
			h.fail(v, "retried NodeStageVolume after restart #%d: %v", h.kills.Load(), err)
			return
		}
		v.staged = yes
		h.finishDeferredGrow(v)
	case "unstage":
		if o, err := h.unstage(v); o != ok {
			h.fail(v, "retried NodeUnstageVolume after restart #%d: %v", h.kills.Load(), err)
			return
		}
		v.staged = no
	case "publish":
		if o, err := h.publish(v); o != ok {
			h.fail(v, "retried NodePublishVolume after restart #%d: %v", h.kills.Load(), err)
			return
		}
		v.pub = yes
	case "unpublish":
		if o, err := h.unpublish(v); o != ok {
			h.fail(v, "retried NodeUnpublishVolume after restart #%d: %v", h.kills.Load(), err)
			return
		}
		v.pub = no
	case "expand":
		o, got, err := h.expand(v, v.expandTo, v.expandAt)
		if o != ok {
			h.expandFailed(v, v.expandTo, err)
			return
		}
		if got < v.expandTo {
			h.fail(v, "retried NodeExpandVolume to %d bytes answered %d", v.expandTo, got)
			return
		}
		v.capMin, v.capMax = got, max(v.capMax, got)
	default:
		panic("unknown pending call " + op)
	}
}

// checkUsable: after the restart the volume is usable where the kubelet
// left it: staging and publishing again at the same paths succeed (the
// kubelet repeats them after a driver restart), the mounts are there, and
// every fsynced file reads back. Repeating CreateVolume answers the same
// volume (idempotency across a restart).
func (h *harness) checkUsable(v *vol) {
	o, got, err := h.create(v)
	if o != ok || got.GetVolumeId() != v.id {
		h.fail(v, "repeating CreateVolume of live volume %s after restart #%d: %v (answered %q)", v.id, h.kills.Load(), err, got.GetVolumeId())
		return
	}
	if r, err := readRecord(h.poolPath(v.pool), v.name); err != nil {
		h.fail(v, "record of live volume %s after restart #%d: %v", v.id, h.kills.Load(), err)
		return
	} else if v.capMin == v.capMax && (r.Phase != "Ready" || r.CapacityBytes != v.capMin) {
		h.fail(v, "once every call converged after restart #%d, the record of %s says phase %s, %d bytes; want Ready, %d bytes", h.kills.Load(), v.id, r.Phase, r.CapacityBytes, v.capMin)
		return
	}
	// Also while a deferred grow waits (growPending): the volume is usable
	// at the staging path, so NodeStage succeeds and the grow waits for the
	// next stage after an unstage.
	if v.staged == yes {
		if o, err := h.stage(v); o != ok {
			h.fail(v, "repeating NodeStageVolume at the same path after restart #%d: %v", h.kills.Load(), err)
			return
		}
		if h.isLoop(v) && !v.block && !isMounted(v.staging) {
			h.fail(v, "loop volume %s is staged but %s is not a mount point after restart #%d", v.id, v.staging, h.kills.Load())
			return
		}
		if h.isLoop(v) && !v.block && v.pub != yes {
			h.checkData(v, v.staging) // the volume's own filesystem, mounted at stage
		}
	}
	if v.pub == yes {
		if o, err := h.publish(v); o != ok {
			h.fail(v, "repeating NodePublishVolume at the same paths after restart #%d: %v", h.kills.Load(), err)
			return
		}
		if !isMounted(v.target) {
			h.fail(v, "volume %s is published but %s is not a mount point after restart #%d", v.id, v.target, h.kills.Load())
			return
		}
		h.checkData(v, v.target)
		if v.capMin > v.reqBytes {
			h.checkGrown(v)
		}
		if err := h.volumeStats(v); err != nil {
			h.fail(v, "NodeGetVolumeStats at the publish target after restart #%d: %v", h.kills.Load(), err)
		}
	}
}

// volumeStats asks NodeGetVolumeStats at the publish target, as the
// kubelet does every minute, and checks the answer is a sane usage.
func (h *harness) volumeStats(v *vol) error {
	var resp *csi.NodeGetVolumeStatsResponse
	o, err := h.call(v, "NodeGetVolumeStats", "", func(ctx context.Context, inc *incarnation) error {
		var err error
		resp, err = inc.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: v.target, StagingTargetPath: v.staging})
		return err
	})
	if o != ok {
		return err
	}
	for _, u := range resp.GetUsage() {
		if u.GetUnit() == csi.VolumeUsage_BYTES && (u.GetTotal() <= 0 || u.GetUsed() < 0 || u.GetUsed() > u.GetTotal()) {
			return fmt.Errorf("bytes usage total=%d used=%d available=%d", u.GetTotal(), u.GetUsed(), u.GetAvailable())
		}
	}
	return nil
}

// checkCapacity: after a restart no pool offers more than its size minus
// the sizes of its volumes (reservations of creates cut off by the kill
// must not have turned into space promised twice).
func (h *harness) checkCapacity(listed map[string]*csi.Volume) {
	for _, p := range h.pools {
		var sum int64
		for _, cv := range listed {
			if cv.GetVolumeContext()[dhpp.ContextPool] == p.name {
				sum += cv.GetCapacityBytes()
			}
		}
		var st unix.Statfs_t
		if err := unix.Statfs(p.path, &st); err != nil {
			h.failf("statfs %s: %v", p.path, err)
			continue
		}
		total := int64(st.Blocks) * st.Bsize
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		resp, err := h.d.current().ctl.GetCapacity(ctx, &csi.GetCapacityRequest{
			VolumeCapabilities: []*csi.VolumeCapability{mountCap}, Parameters: map[string]string{dhpp.ParamPool: p.name},
		})
		cancel()
		switch {
		case err != nil:
			h.failf("GetCapacity of pool %s after restart #%d: %v", p.name, h.kills.Load(), err)
		case resp.GetAvailableCapacity() > total-sum:
			h.failf("after restart #%d pool %s offers %d bytes, more than its %d bytes minus the %d bytes of its volumes", h.kills.Load(), p.name, resp.GetAvailableCapacity(), total, sum)
		}
	}
}

// checkListedExactly: once every cut-off call is resolved, the driver
// lists exactly the live volumes.
func (h *harness) checkListedExactly(listed map[string]*csi.Volume) {
	for _, v := range h.allVols() {
		_, isListed := listed[v.id]
		switch {
		case v.broken:
		case v.live() && !isListed:
			h.fail(v, "volume %s is live but not listed once the retries after restart #%d are done", v.id, h.kills.Load())
		case !v.live() && isListed:
			h.fail(v, "volume %s is listed once the retries after restart #%d are done, but is not live", v.id, h.kills.Load())
		}
	}
}

// loopSettle bounds how long a loop device may stay bound after the
// unmount that released it. The kernel detaches an AutoClear device on its
// last close, but when the unmount ran in a process that was being killed
// the last reference goes through a deferred fput: the device stays bound,
// opened by no process, for a moment (seen here: tens of milliseconds).
const loopSettle = 3 * time.Second

// checkLoopDevices: no loop device is bound to a trashed image, and every
// loop device on a volume's image belongs to a staged volume, whose
// filesystem is mounted unless it is a block volume (one device per image:
// two would mean two filesystems or writers on the same image). Problems must persist for
// loopSettle to count.
func (h *harness) checkLoopDevices() {
	deadline := time.Now().Add(loopSettle)
	for {
		problems := h.loopProblems()
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range problems {
				if p.v != nil {
					h.fail(p.v, "after restart #%d and %s: %s", h.kills.Load(), loopSettle, p.msg)
				} else {
					h.failf("after restart #%d and %s: %s", h.kills.Load(), loopSettle, p.msg)
				}
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// problem is a broken invariant, about one volume if v is set.
type problem struct {
	v   *vol
	msg string
}

func (h *harness) loopProblems() []problem {
	mt, err := mountTable()
	if err != nil {
		h.t.Fatal(err)
	}
	mountedDev := map[string]bool{}
	for _, src := range mt {
		mountedDev[src] = true
	}
	var out []problem
	byImage := map[string][]string{}
	for dev, img := range loopBacking() {
		for _, p := range h.pools {
			if strings.HasPrefix(img, filepath.Join(p.path, ".dhpp", "trash")+"/") {
				out = append(out, problem{msg: fmt.Sprintf("%s is bound to %s, an image in the trash", loopInfo(dev, mt), img)})
			} else if strings.HasPrefix(img, p.path+"/") {
				byImage[img] = append(byImage[img], dev)
			}
		}
	}
	for _, v := range h.allVols() {
		if !h.isLoop(v) {
			continue
		}
		img := filepath.Join(h.poolPath(v.pool), "volumes", v.name, "disk.img")
		devs := byImage[img]
		delete(byImage, img)
		sort.Strings(devs)
		switch {
		case v.broken:
		case v.staged != yes && len(devs) > 0:
			out = append(out, problem{v, fmt.Sprintf("volume %s is not staged but its image is bound to %s", v.id, loopInfo(devs[0], mt))})
		case v.staged == yes && len(devs) != 1:
			out = append(out, problem{v, fmt.Sprintf("staged volume %s has %d loop devices on its image (%s), want 1", v.id, len(devs), strings.Join(devs, ", "))})
		case v.staged == yes && !v.block && !mountedDev[devs[0]]:
			out = append(out, problem{v, fmt.Sprintf("the loop device of staged volume %s is mounted nowhere: %s", v.id, loopInfo(devs[0], mt))})
		}
	}
	for img, devs := range byImage {
		out = append(out, problem{msg: fmt.Sprintf("%s is bound to %s, which is no volume's image", loopInfo(devs[0], mt), img)})
	}
	return out
}

// checkMounts: the only mounts on the kubelet's side are the staging
// mounts of staged loop volumes and the targets of published volumes.
func (h *harness) checkMounts() {
	mt, err := mountTable()
	if err != nil {
		h.t.Fatal(err)
	}
	want := map[string]bool{}
	for _, v := range h.allVols() {
		if v.broken {
			continue
		}
		if v.live() && v.staged == yes && h.isLoop(v) && !v.block {
			want[v.staging] = true
		}
		if v.live() && v.pub == yes {
			want[v.target] = true
		}
	}
	byPath := map[string]*vol{}
	for _, v := range h.allVols() {
		byPath[v.staging], byPath[v.target] = v, v
	}
	for mp := range mt {
		if !strings.HasPrefix(mp, h.volsDir+"/") || want[mp] {
			continue
		}
		if v := byPath[mp]; v != nil {
			if !v.broken {
				h.fail(v, "after restart #%d %s is mounted, but the volume is not staged/published there", h.kills.Load(), mp)
			}
			continue
		}
		h.failf("after restart #%d unexpected mount at %s", h.kills.Load(), mp)
	}
}

// checkData reads back every fsynced file of the volume through dir.
func (h *harness) checkData(v *vol, dir string) {
	err := checkFiles(dir, v.block && dir == v.target, v.files)
	h.note(v, fmt.Sprintf("read back %d files", len(v.files)), err)
	h.stats.mu.Lock()
	h.stats.files += len(v.files)
	h.stats.mu.Unlock()
	if err != nil {
		h.fail(v, "data written and fsynced through the mount is not what was written: %v", err)
	}
}

// checkGrown: a loop volume's own filesystem has grown to (most of) the
// size the driver confirmed. ext4 metadata with 1 KiB blocks takes 8-17%
// of a 16-128 MiB filesystem (measured: 46 MiB gives 38895 KiB), so less
// than 78% means the filesystem was not grown.
func (h *harness) checkGrown(v *vol) {
	if !h.isLoop(v) {
		return
	}
	if v.block {
		if got, err := deviceBytes(v.target); err != nil || got < v.capMin {
			h.fail(v, "block volume %s is %d bytes but the device at %s has %d bytes (%v)", v.id, v.capMin, v.target, got, err)
		}
		return
	}
	got, err := fsBytes(v.target)
	if err != nil {
		h.fail(v, "statfs %s: %v", v.target, err)
		return
	}
	if got < v.capMin*78/100 {
		h.fail(v, "volume %s is %d bytes but its filesystem at %s has only %d bytes", v.id, v.capMin, v.target, got)
	}
}

// isLoop reports whether the volume is an image on a loop device: every
// volume of the loop pool, and a Block volume of any pool.
func (h *harness) isLoop(v *vol) bool {
	return v.block || h.poolBackend(v) == "loop"
}

// poolBackend is the backend of the volume's pool.
func (h *harness) poolBackend(v *vol) string {
	for _, p := range h.pools {
		if p.name == v.pool {
			return p.backend
		}
	}
	return ""
}

func isMounted(path string) bool {
	mt, err := mountTable()
	if err != nil {
		return false
	}
	_, ok := mt[path]
	return ok
}
