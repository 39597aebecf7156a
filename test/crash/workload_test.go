package crash

import (
	"crypto/sha256"
	"fmt"
	"google.golang.org/grpc/codes"
	"math/rand/v2"
	"slices"
)

// Workload shape: each worker keeps a few volumes of its own and moves each
// through the kubelet's life cycle at random. Volumes never change hands,
// so two calls on one volume are never concurrent (that would only earn
// Aborted), while the workers together keep several calls in flight.
const (
	volsPerWorker = 3
	minVolMiB     = 16 // the loop backend's ext4 minimum
	maxVolMiB     = 32
	growMaxMiB    = 160 // no expansion past this
	filesPerVol   = 24
	maxFileBytes  = 32 << 10
	// Block volumes are written in fixed slots, one write per slot alive.
	blockSlots     = 16
	blockSlotBytes = 256 << 10
)

type worker struct {
	h     *harness
	id    int
	rng   *rand.Rand
	seq   int
	vols  []*vol
	snaps []*snap
}

// run takes steps until the run is over; each step is one operation on one
// volume and runs while the gate is open.
func (w *worker) run() {
	for w.h.gate.enter() {
		w.step()
		w.h.gate.exit()
	}
}

// pick returns a choice by weight.
func (w *worker) pick(weights ...int) int {
	total := 0
	for _, x := range weights {
		total += x
	}
	n := w.rng.IntN(total)
	for i, x := range weights {
		if n < x {
			return i
		}
		n -= x
	}
	return len(weights) - 1
}

func (w *worker) step() {
	// Forget volumes that are gone or no longer to be touched. A volume
	// with a pending call is resolved by the checker before the gate
	// reopens, so none is seen here.
	w.vols = slices.DeleteFunc(w.vols, func(v *vol) bool { return v.broken || v.exists == no || v.deleted == yes })
	if s := w.liveSnap(); s != nil && w.rng.IntN(12) == 0 {
		w.deleteSnap(s)
		return
	}
	if len(w.vols) < volsPerWorker && (len(w.vols) == 0 || w.rng.IntN(3) == 0) {
		w.create()
		return
	}
	v := w.vols[w.rng.IntN(len(w.vols))]
	switch {
	case v.pub == yes:
		switch w.pick(45, 15, 40, 10) {
		case 0:
			w.write(v)
		case 1:
			w.expand(v, true)
		case 3:
			if !v.block {
				w.snapshot(v)
			}
		default:
			w.unpublish(v)
		}
	case v.staged == yes:
		switch w.pick(60, 25, 15) {
		case 0:
			w.publish(v)
		case 1:
			w.unstage(v)
		default:
			w.expand(v, false)
		}
	default:
		switch w.pick(65, 35) {
		case 0:
			w.stage(v)
		default:
			w.delete(v)
		}
	}
}

func (w *worker) create() {
	if s := w.liveSnap(); s != nil && w.rng.IntN(3) == 0 {
		w.restore(s)
		return
	}
	h := w.h
	w.seq++
	p := h.pools[w.rng.IntN(len(h.pools))]
	size := int64(minVolMiB+w.rng.IntN(maxVolMiB-minVolMiB+1)) << 20
	// A quarter of the volumes are raw block devices (on the btrfs pool an
	// image in the pool): their loop device is attached at stage without
	// AutoClear.
	block := *flagBlock && w.rng.IntN(4) == 0
	v := h.newVol(fmt.Sprintf("w%d-%03d", w.id, w.seq), p.name, block, size)
	w.vols = append(w.vols, v)
	w.createVol(v)
}

// createVol asks for the modelled volume v and records the outcome.
func (w *worker) createVol(v *vol) {
	h := w.h
	o, got, err := h.create(v)
	switch o {
	case ok:
		v.exists = yes
		if got.GetVolumeId() != v.id || got.GetCapacityBytes() < v.reqBytes {
			h.fail(v, "CreateVolume answered volume %q of %d bytes; want ID %q and at least %d bytes", got.GetVolumeId(), got.GetCapacityBytes(), v.id, v.reqBytes)
			return
		}
		v.capMin, v.capMax = got.GetCapacityBytes(), got.GetCapacityBytes()
	case uncertain:
		v.exists, v.pending = maybe, "create"
	case failed:
		v.exists = no
		if codeOf(err) != codes.ResourceExhausted {
			h.fail(v, "CreateVolume failed: %v", err)
		}
	}
}

// transition is how one CSI call moves a volume's model: on OK the field
// becomes to (and then runs), a call cut by a kill leaves it maybe with the
// call pending for the checker, and an error fails the run.
type transition struct {
	call    func(*vol) (outcome, error)
	field   func(*vol) *tri
	to      tri
	pending string // the call's name in the checker's resolution
	then    func(*vol)
	failure string // what must not fail, for the message
}

func (w *worker) apply(v *vol, tr transition) {
	switch o, err := tr.call(v); o {
	case ok:
		*tr.field(v) = tr.to
		if tr.then != nil {
			tr.then(v)
		}
	case uncertain:
		*tr.field(v), v.pending = maybe, tr.pending
	case failed:
		w.h.fail(v, "%s failed: %v", tr.failure, err)
	}
}

func deletedOf(v *vol) *tri { return &v.deleted }
func stagedOf(v *vol) *tri  { return &v.staged }
func pubOf(v *vol) *tri     { return &v.pub }

func (w *worker) delete(v *vol) {
	w.apply(v, transition{call: w.h.delete, field: deletedOf, to: yes, pending: "delete",
		failure: "DeleteVolume of an unpublished, unstaged volume"})
}

func (w *worker) stage(v *vol) {
	w.apply(v, transition{call: w.h.stage, field: stagedOf, to: yes, pending: "stage",
		then: w.h.finishDeferredGrow, failure: "NodeStageVolume"})
}

func (w *worker) unstage(v *vol) {
	w.apply(v, transition{call: w.h.unstage, field: stagedOf, to: no, pending: "unstage",
		failure: "NodeUnstageVolume"})
}

func (w *worker) publish(v *vol) {
	w.apply(v, transition{call: w.h.publish, field: pubOf, to: yes, pending: "publish",
		then: func(v *vol) { w.h.checkData(v, v.target) }, failure: "NodePublishVolume of a staged volume"})
}

func (w *worker) unpublish(v *vol) {
	w.apply(v, transition{call: w.h.unpublish, field: pubOf, to: no, pending: "unpublish",
		failure: "NodeUnpublishVolume"})
}

// write adds a file of random content through the published target and
// fsyncs it (a block volume: writes a range of the device, replacing what
// an earlier write put there); from then on it must read back unchanged.
func (w *worker) write(v *vol) {
	if len(v.files) >= filesPerVol && !v.block {
		w.h.checkData(v, v.target)
		return
	}
	v.fileSeq++
	data := make([]byte, 1+w.rng.IntN(maxFileBytes))
	for i := range data {
		data[i] = byte(w.rng.Uint32())
	}
	f := file{name: fmt.Sprintf("f%03d", v.fileSeq), size: len(data), sum: sha256.Sum256(data)}
	var err error
	if v.block {
		slot := w.rng.IntN(blockSlots)
		f.name, f.off = fmt.Sprintf("slot %d", slot), int64(slot)*blockSlotBytes
		v.files = slices.DeleteFunc(v.files, func(old file) bool { return old.off == f.off })
		err = writeBlock(v.target, f.off, data)
	} else {
		err = writeFile(v.target, f.name, data)
	}
	w.h.note(v, fmt.Sprintf("write+fsync %s (%d bytes)", f.name, f.size), err)
	if err != nil {
		w.h.fail(v, "writing %s through the published target %s: %v", f.name, v.target, err)
		return
	}
	v.files = append(v.files, f)
}

// expand grows the volume by a few MiB at its publish target, or (not
// published) at its staging path, where the kubelet expands right after
// NodeStageVolume. Without CAP_SYS_RESOURCE an ext4 loop volume cannot
// grow while mounted: the driver answers so, keeps the grown image, and
// grows the filesystem offline at the next stage (deferGrow).
func (w *worker) expand(v *vol, atTarget bool) {
	h := w.h
	if v.capMin >= growMaxMiB<<20 {
		return
	}
	size := v.capMin + int64(4+w.rng.IntN(13))<<20
	if h.deferredGrow(v) {
		// Larger steps: more block groups for resize2fs to add at the
		// next stage, so a longer window for a kill to split.
		size = v.capMin + int64(16+w.rng.IntN(33))<<20
	}
	at := v.staging
	if atTarget {
		at = v.target
	}
	o, got, err := h.expand(v, size, at)
	switch o {
	case ok:
		if got < size {
			h.fail(v, "NodeExpandVolume to %d bytes answered %d bytes", size, got)
			return
		}
		v.capMin, v.capMax = got, max(v.capMax, got)
		if atTarget {
			h.checkGrown(v)
		}
	case uncertain:
		v.capMax = max(v.capMax, size)
		v.expandTo, v.expandAt, v.pending = size, at, "expand"
	case failed:
		h.expandFailed(v, size, err)
	}
}

// finishDeferredGrow completes, after a stage, an expansion whose
// filesystem growth waited for it: the stage grew the filesystem offline,
// so the kubelet's retried NodeExpandVolume now succeeds.
func (h *harness) finishDeferredGrow(v *vol) {
	v.growPending = false
	if v.deferredTo == 0 {
		return
	}
	size := v.deferredTo
	switch o, got, err := h.expand(v, size, v.staging); o {
	case ok:
		if got < size {
			h.fail(v, "NodeExpandVolume to %d bytes answered %d bytes", size, got)
			return
		}
		v.capMin, v.capMax, v.deferredTo = got, max(v.capMax, got), 0
	case uncertain:
		v.expandTo, v.expandAt, v.pending = size, v.staging, "expand"
	case failed:
		h.fail(v, "NodeExpandVolume after the stage that grew the filesystem offline: %v", err)
	}
}
