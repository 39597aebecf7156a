package health

import (
	"testing"
	"time"
)

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Healthy: "Healthy", Failing: "Failing", Fenced: "Fenced", State(7): "State(7)"} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestTransition(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	at := t0.Add(time.Minute)
	ok := Result{At: at, Duration: 3 * time.Millisecond}
	fail := func(r Reason) Result {
		return Result{At: at, Duration: time.Second, Reason: r, Err: string(r) + " happened"}
	}
	base := Config{FailureThreshold: 3, SuccessThreshold: 1, UnfenceThreshold: 4}
	auto := base
	auto.AutoUnfence = true
	st2 := base
	st2.SuccessThreshold = 2
	ft1 := base
	ft1.FailureThreshold = 1

	tests := []struct {
		name string
		cfg  Config
		in   Status
		r    Result
		want Status
	}{
		{"healthy stays healthy on success", base,
			Status{State: Healthy, ConsecutiveSuccesses: 5, Since: t0}, ok,
			Status{State: Healthy, ConsecutiveSuccesses: 6, Since: t0}},
		{"first failure makes failing", base,
			Status{State: Healthy, ConsecutiveSuccesses: 5, Since: t0}, fail(ReasonTimeout),
			Status{State: Failing, ConsecutiveFailures: 1, Reason: ReasonTimeout, LastError: "timeout happened", Since: at}},
		{"failures below threshold stay failing", base,
			Status{State: Failing, ConsecutiveFailures: 1, Reason: ReasonTimeout, Since: t0}, fail(ReasonStuck),
			Status{State: Failing, ConsecutiveFailures: 2, Reason: ReasonStuck, LastError: "stuck happened", Since: t0}},
		{"threshold failures fence", base,
			Status{State: Failing, ConsecutiveFailures: 2, Reason: ReasonReadOnly, Since: t0}, fail(ReasonReadOnly),
			Status{State: Fenced, ConsecutiveFailures: 3, Reason: ReasonReadOnly, LastError: "read_only happened", Since: at}},
		{"failure threshold 1 fences at once", ft1,
			Status{State: Healthy, Since: t0}, fail(ReasonIOError),
			Status{State: Fenced, ConsecutiveFailures: 1, Reason: ReasonIOError, LastError: "io_error happened", Since: at}},
		{"success heals failing and clears reason", base,
			Status{State: Failing, ConsecutiveFailures: 2, Reason: ReasonTimeout, LastError: "x", Since: t0}, ok,
			Status{State: Healthy, ConsecutiveSuccesses: 1, Since: at}},
		{"success below success threshold keeps failing but resets failures", st2,
			Status{State: Failing, ConsecutiveFailures: 2, Reason: ReasonTimeout, LastError: "x", Since: t0}, ok,
			Status{State: Failing, ConsecutiveSuccesses: 1, Reason: ReasonTimeout, LastError: "x", Since: t0}},
		{"success threshold reached heals", st2,
			Status{State: Failing, ConsecutiveSuccesses: 1, Reason: ReasonTimeout, LastError: "x", Since: t0}, ok,
			Status{State: Healthy, ConsecutiveSuccesses: 2, Since: at}},
		{"fenced stays fenced on success without auto-unfence", base,
			Status{State: Fenced, ConsecutiveSuccesses: 1000, Reason: ReasonIOError, LastError: "x", Since: t0}, ok,
			Status{State: Fenced, ConsecutiveSuccesses: 1001, Reason: ReasonIOError, LastError: "x", Since: t0}},
		{"auto-unfence below threshold stays fenced", auto,
			Status{State: Fenced, ConsecutiveSuccesses: 2, Reason: ReasonIOError, LastError: "x", Since: t0}, ok,
			Status{State: Fenced, ConsecutiveSuccesses: 3, Reason: ReasonIOError, LastError: "x", Since: t0}},
		{"auto-unfence at threshold heals", auto,
			Status{State: Fenced, ConsecutiveSuccesses: 3, Reason: ReasonIOError, LastError: "x", Since: t0}, ok,
			Status{State: Healthy, ConsecutiveSuccesses: 4, Since: at}},
		{"failure while fenced restarts the unfence count", auto,
			Status{State: Fenced, ConsecutiveSuccesses: 3, Reason: ReasonIOError, Since: t0}, fail(ReasonTimeout),
			Status{State: Fenced, ConsecutiveFailures: 1, Reason: ReasonTimeout, LastError: "timeout happened", Since: t0}},
		{"manual fence ignores auto-unfence", auto,
			Status{State: Fenced, Manual: true, ConsecutiveSuccesses: 99, Reason: ReasonManual, LastError: "disk swap", Since: t0}, ok,
			Status{State: Fenced, Manual: true, ConsecutiveSuccesses: 100, Reason: ReasonManual, LastError: "disk swap", Since: t0}},
		{"manual fence keeps its reason on failure", auto,
			Status{State: Fenced, Manual: true, Reason: ReasonManual, LastError: "disk swap", Since: t0}, fail(ReasonMissing),
			Status{State: Fenced, Manual: true, ConsecutiveFailures: 1, Reason: ReasonManual, LastError: "missing happened", Since: t0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := transition(tc.cfg, tc.in, tc.r)
			tc.want.LastProbe, tc.want.LastDuration = tc.r.At, tc.r.Duration
			if got != tc.want {
				t.Errorf("transition(%+v, %+v)\n got %+v\nwant %+v", tc.in, tc.r, got, tc.want)
			}
		})
	}
}

// TestTransitionFlappingDisk plays a RAID10 that flaps: short good windows
// between bursts of failures. With auto-unfence and hysteresis it must stay
// fenced until a window as long as UnfenceThreshold; without auto-unfence it
// must stay fenced for good.
func TestTransitionFlappingDisk(t *testing.T) {
	// F = failure, . = success
	const pattern = "FFF...F....F...FF......" // the last window is 6 long
	tests := []struct {
		name        string
		auto        bool
		unfence     int
		wantFinal   State
		wantFencedI int // index of the probe that first fences
		wantHealedI int // index that unfences, -1 if never
	}{
		{"manual policy never unfences", false, 4, Fenced, 2, -1},
		{"auto-unfence with hysteresis 6 heals only after the long window", true, 6, Healthy, 2, 22},
		// After healing at 10, the later bursts (1 and 2 failures) stay below
		// FailureThreshold, so the pool ends healthy.
		{"auto-unfence with hysteresis 4 heals in the first 4-long window", true, 4, Healthy, 2, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{FailureThreshold: 3, SuccessThreshold: 1, UnfenceThreshold: tc.unfence, AutoUnfence: tc.auto}
			s := Status{State: Healthy}
			fencedAt, healedAt := -1, -1
			for i, c := range pattern {
				r := Result{At: time.Unix(int64(i), 0)}
				if c == 'F' {
					r.Reason = ReasonIOError
				}
				prev := s.State
				s = transition(cfg, s, r)
				if s.State == Fenced && prev != Fenced && fencedAt < 0 {
					fencedAt = i
				}
				if prev == Fenced && s.State == Healthy && healedAt < 0 {
					healedAt = i
				}
			}
			if fencedAt != tc.wantFencedI || healedAt != tc.wantHealedI || s.State != tc.wantFinal {
				t.Errorf("fenced at %d (want %d), healed at %d (want %d), final %s (want %s)",
					fencedAt, tc.wantFencedI, healedAt, tc.wantHealedI, s.State, tc.wantFinal)
			}
		})
	}
}

func TestManualFenceAndUnfence(t *testing.T) {
	t0 := time.Unix(100, 0)
	now := time.Unix(200, 0)
	tests := []struct {
		name string
		in   Status
		f    func(Status) Status
		want Status
	}{
		{"unfence fenced pool resets counters", Status{State: Fenced, Reason: ReasonIOError, LastError: "x", ConsecutiveFailures: 9, ConsecutiveSuccesses: 2, Since: t0},
			func(s Status) Status { return unfenced(s, now) },
			Status{State: Healthy, Since: now}},
		{"unfence clears manual", Status{State: Fenced, Manual: true, Reason: ReasonManual, Since: t0},
			func(s Status) Status { return unfenced(s, now) },
			Status{State: Healthy, Since: now}},
		{"fence healthy pool", Status{State: Healthy, ConsecutiveSuccesses: 3, Since: t0},
			func(s Status) Status { return fenced(s, "maintenance", now) },
			Status{State: Fenced, Manual: true, Reason: ReasonManual, LastError: "maintenance", ConsecutiveSuccesses: 3, Since: now}},
		{"fence already fenced pool keeps since", Status{State: Fenced, Reason: ReasonTimeout, Since: t0},
			func(s Status) Status { return fenced(s, "maintenance", now) },
			Status{State: Fenced, Manual: true, Reason: ReasonManual, LastError: "maintenance", Since: t0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.f(tc.in); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
