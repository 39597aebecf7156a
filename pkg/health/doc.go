// Package health is dhpp's in-driver disk write probe and the fencing state
// of each pool.
//
// # What it replaces
//
// Operators used to paste `dd if=/dev/urandom of=/data/health bs=1M count=1`
// as a liveness probe (period 5 s, timeout 1 s, failureThreshold 3) into every
// stateful pod, so a failing RAID10 restarted every pod on it, forever. That
// dd wrote into the page cache and never read back, so it mostly measured the
// page cache. This package does the check once per pool, inside the driver,
// and does it honestly:
//
//   - every Period it writes ProbeBytes of fresh random data to the pool's
//     probe file with O_DIRECT|O_DSYNC (the data and a cache flush reach the
//     device), reads it back with O_DIRECT (the device, not the page cache,
//     answers) and compares. Where O_DIRECT is refused with EINVAL (tmpfs,
//     some FUSE) it falls back to write + fdatasync + fadvise(DONTNEED) + read.
//   - a probe that errors, mismatches, or takes longer than Timeout fails.
//
// # States and the policy
//
//	Healthy ──1st failure──▶ Failing ──FailureThreshold consecutive failures──▶ Fenced
//	   ▲                        │                                                  │
//	   └──SuccessThreshold──────┘                                                  │
//	   └──────── Unfence() (manual), or UnfenceThreshold successes if AutoUnfence ─┘
//
// Fenced only means "take no new volumes": the driver refuses CreateVolume,
// reports zero capacity and an abnormal VolumeCondition. Existing mounts and
// running pods are left alone, because pulling a disk out from under a
// database is worse than a slow disk.
//
// Defaults: Period 5 s, Timeout 1 s, FailureThreshold 3 and SuccessThreshold 1
// are the seed liveness probe's numbers, so operators get the sensitivity they
// already tuned. AutoUnfence is OFF by default and UnfenceThreshold is 60
// (five minutes of clean probes) for clusters that turn it on. Why manual by
// default — think of a RAID10 whose controller flaps:
//
//   - A flapping array has good minutes between bad ones. With automatic
//     unfencing every good window reopens the pool, and any PVC provisioned in
//     that window is pinned to this node's disk for its whole life by the PV's
//     node affinity. The mistake cannot be undone by the driver later.
//   - Staying fenced too long costs little: the scheduler places new PVCs on
//     other nodes (capacity reads 0), and running pods keep running.
//   - Storage convention agrees: md marks a member faulty and ZFS a device
//     FAULTED until an operator clears it. The operator who replaced the disk
//     or fixed the cable knows the fault is gone; the probe only knows that the
//     last N writes worked.
//
// So a fenced pool stays fenced until someone calls Unfence (the driver wires
// that to an annotation: kubectl annotate node NODE unfence.dhpp.io/POOL=now). While fenced the probe keeps
// running and Status counts ConsecutiveSuccesses, so the operator can see
// "fenced, 240 clean probes since" before deciding. Unfencing a disk that is
// still broken is safe: it is fenced again after FailureThreshold failures.
// Clusters that prefer self-healing (e.g. disks that stall during a nightly
// scrub) set AutoUnfence; the hysteresis of UnfenceThreshold consecutive
// successes (any failure restarts the count) keeps a flapping disk fenced.
// A pool fenced by Fence (maintenance, or state restored from the node label
// after a driver restart) is never unfenced automatically.
//
// # Failure modes the prober guards against
//
//   - A write that hangs forever (dead controller, throttled cgroup) must not
//     hang the prober or pile up goroutines. Each pool has one loop goroutine
//     and at most one outstanding probe I/O goroutine. The loop waits at most
//     Timeout for it; after that the probe is a "timeout" failure, and while
//     the I/O is still stuck each later tick is a "stuck" failure that starts
//     no new I/O.
//   - A full disk is not a failed disk. The probe file is created once,
//     marked NOCOW (btrfs), preallocated with fallocate and written in full,
//     then always overwritten in place and never truncated, so ENOSPC caused
//     by other data does not fence the pool.
//   - A vanished disk must not be probed on the wrong filesystem. After the
//     probe file exists it is never created again by the prober: if the data
//     disk is (lazily) unmounted, the path resolves onto the root filesystem,
//     and re-creating the file there would report the root disk as healthy.
//     A missing probe file is a "missing" failure; Unfence re-creates it only
//     if its directory is still on the device where it was first created.
//
// Failure reasons (see Reason) are classified from errno for metrics:
// timeout, stuck, io_error, read_only, no_space, mismatch, missing, other.
//
// # Wiring
//
// The driver creates one Monitor per node, calls AddPool for each pool
// (probe file <pool>/.dhpp/health), Register for metrics, OnChange for
// Events and node labels, then Run. The driver asks PoolFenced (CreateVolume,
// GetCapacity, the volume health RPCs). RAID degradation, which is reported
// but never fenced, is pkg/raid's.
package health
