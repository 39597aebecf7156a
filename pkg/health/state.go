package health

import (
	"fmt"
	"strings"
	"time"
)

// State is a pool's health as the driver acts on it.
type State int

const (
	// Healthy: the last probes succeeded; the pool takes new volumes.
	Healthy State = iota
	// Failing: at least one recent probe failed, not yet FailureThreshold in
	// a row; the pool still takes new volumes (one slow write is not a fault).
	Failing
	// Fenced: the pool takes no new volumes until it is unfenced.
	Fenced
)

// States lists every State, e.g. to set one gauge per state.
var States = []State{Healthy, Failing, Fenced}

func (s State) String() string {
	switch s {
	case Healthy:
		return "Healthy"
	case Failing:
		return "Failing"
	case Fenced:
		return "Fenced"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Reason classifies a failed probe; it is the "reason" label of
// dhpp_health_probe_failures_total, so the set is small and fixed.
type Reason string

const (
	// ReasonTimeout: the probe I/O did not finish within Timeout.
	ReasonTimeout Reason = "timeout"
	// ReasonStuck: the previous probe I/O is still outstanding, so no new I/O
	// was started.
	ReasonStuck Reason = "stuck"
	// ReasonIOError: the device reported an error (EIO, ENXIO, EUCLEAN...).
	ReasonIOError Reason = "io_error"
	// ReasonReadOnly: the filesystem is read-only (EROFS), e.g. ext4
	// errors=remount-ro after a device error.
	ReasonReadOnly Reason = "read_only"
	// ReasonNoSpace: ENOSPC/EDQUOT while writing the preallocated probe file.
	ReasonNoSpace Reason = "no_space"
	// ReasonMismatch: the data read back differs from the data written.
	ReasonMismatch Reason = "mismatch"
	// ReasonMissing: the probe file or its directory is gone (ENOENT), e.g.
	// the data disk was unmounted or the pool directory deleted.
	ReasonMissing Reason = "missing"
	// ReasonOther: anything else.
	ReasonOther Reason = "other"
	// ReasonManual is the Reason of a pool fenced with Monitor.Fence; it is
	// not a probe failure and is not counted in the failure metric.
	ReasonManual Reason = "manual"
)

// Reasons lists every probe failure Reason (not ReasonManual), so metrics can
// start each series at zero.
var Reasons = []Reason{ReasonTimeout, ReasonStuck, ReasonIOError, ReasonReadOnly,
	ReasonNoSpace, ReasonMismatch, ReasonMissing, ReasonOther}

// Status is a snapshot of one pool's health.
type Status struct {
	Pool  string
	State State
	// Reason and LastError describe the most recent failure; they stay set
	// while the pool is Failing or Fenced (so a refused CreateVolume can name
	// the error that fenced the pool) and are cleared on return to Healthy.
	Reason    Reason
	LastError string
	// LastProbe is when the last probe started; LastDuration how long its
	// I/O took (for a timeout: until it was abandoned).
	LastProbe            time.Time
	LastDuration         time.Duration
	ConsecutiveFailures  int
	ConsecutiveSuccesses int
	// Since is when State was entered.
	Since time.Time
	// Manual is true for a pool fenced with Monitor.Fence; only Unfence
	// clears it, whatever AutoUnfence says.
	Manual bool
}

// Result is the outcome of one probe, fed to transition.
type Result struct {
	At       time.Time
	Duration time.Duration
	// Reason is empty for a successful probe.
	Reason Reason
	Err    string
}

// OK reports whether the probe succeeded.
func (r Result) OK() bool { return r.Reason == "" }

// transition is the whole fencing policy as a pure function: the status
// after probe result r, given the status before. It does no I/O and reads no
// clock, so the table in state_test.go pins the policy down.
func transition(cfg Config, s Status, r Result) Status {
	n := s
	n.LastProbe = r.At
	n.LastDuration = r.Duration
	if r.OK() {
		n.ConsecutiveFailures = 0
		n.ConsecutiveSuccesses++
		switch {
		case s.State == Failing && n.ConsecutiveSuccesses >= cfg.SuccessThreshold:
			n.State = Healthy
		case s.State == Fenced && !s.Manual && cfg.AutoUnfence && n.ConsecutiveSuccesses >= cfg.UnfenceThreshold:
			n.State = Healthy
		}
		if n.State == Healthy {
			n.Reason, n.LastError = "", ""
		}
	} else {
		n.ConsecutiveSuccesses = 0
		n.ConsecutiveFailures++
		n.LastError = r.Err
		if !s.Manual {
			// A manual fence keeps its reason: the operator's word is what
			// keeps the pool fenced, not the latest probe.
			n.Reason = r.Reason
		}
		switch {
		case s.State == Fenced:
		case n.ConsecutiveFailures >= cfg.FailureThreshold:
			n.State = Fenced
		default:
			n.State = Failing
		}
	}
	if n.State != s.State {
		n.Since = r.At
	}
	return n
}

// unfenced is the status after a manual Unfence: Healthy with fresh counters,
// so a still-broken disk needs FailureThreshold new failures to be fenced
// again rather than being re-fenced by the first one.
func unfenced(s Status, now time.Time) Status {
	n := s
	n.State = Healthy
	n.Manual = false
	n.Reason, n.LastError = "", ""
	n.ConsecutiveFailures, n.ConsecutiveSuccesses = 0, 0
	if s.State != Healthy {
		n.Since = now
	}
	return n
}

// fenced is the status after a manual Fence.
func fenced(s Status, msg string, now time.Time) Status {
	n := s
	n.State = Fenced
	n.Manual = true
	n.Reason = ReasonManual
	n.LastError = msg
	if s.State != Fenced {
		n.Since = now
	}
	return n
}

// Describe says in one line what a status means: the state, since when, the
// reason and the last error, e.g. "state Fenced since 2026-11-21T20:00:00Z,
// reason read_only after 3 consecutive failed probes, last probe error: ...".
func (s Status) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "state %s", s.State)
	if !s.Since.IsZero() {
		fmt.Fprintf(&b, " since %s", s.Since.UTC().Format(time.RFC3339))
	}
	if s.Reason != "" {
		fmt.Fprintf(&b, ", reason %s", s.Reason)
	}
	switch {
	case s.Manual:
		// A manual fence's LastError is the operator's (or the restore's)
		// message until a probe fails.
		if s.LastError != "" {
			fmt.Fprintf(&b, " (fenced by hand), last error: %s", s.LastError)
		}
	default:
		if s.ConsecutiveFailures > 0 {
			fmt.Fprintf(&b, " after %d consecutive failed probes", s.ConsecutiveFailures)
		}
		if s.LastError != "" {
			fmt.Fprintf(&b, ", last probe error: %s", s.LastError)
		}
	}
	return b.String()
}
