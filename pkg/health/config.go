package health

import (
	"errors"
	"fmt"
	"time"
)

// Config is the probe and fencing policy shared by all pools of a Monitor.
// The driver exposes every field as a flag.
type Config struct {
	// Period is the time between the starts of two probes.
	Period time.Duration
	// Timeout bounds one probe (open, write, read back, compare).
	Timeout time.Duration
	// FailureThreshold consecutive failures fence the pool.
	FailureThreshold int
	// SuccessThreshold consecutive successes turn Failing back to Healthy.
	SuccessThreshold int
	// UnfenceThreshold consecutive successes unfence a pool, if AutoUnfence.
	UnfenceThreshold int
	// AutoUnfence lets the probe leave Fenced on its own; see the package doc
	// for why it is off by default.
	AutoUnfence bool
	// ProbeBytes is the size of the probe file and of each probe write; a
	// multiple of directIOAlign so O_DIRECT accepts it.
	ProbeBytes int
}

// directIOAlign is the buffer, offset and length alignment used for O_DIRECT.
// 4096 satisfies every logical block size in use (512 and 4096).
const directIOAlign = 4096

// maxProbeBytes keeps a typo in a flag from turning the probe into a load test.
const maxProbeBytes = 64 << 20

// DefaultConfig returns the seed liveness probe's settings: a 1 MiB write
// every 5 s, 1 s timeout, fenced after 3 consecutive failures.
func DefaultConfig() Config {
	return Config{
		Period:           5 * time.Second,
		Timeout:          1 * time.Second,
		FailureThreshold: 3,
		SuccessThreshold: 1,
		UnfenceThreshold: 60,
		AutoUnfence:      false,
		ProbeBytes:       1 << 20,
	}
}

// Validate reports every invalid field at once, so a wrong flag set is fixed
// in one round.
func (c Config) Validate() error {
	var errs []error
	if c.Period <= 0 {
		errs = append(errs, fmt.Errorf("period must be > 0, got %s", c.Period))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout must be > 0, got %s", c.Timeout))
	} else if c.Period > 0 && c.Timeout > c.Period {
		// A longer timeout would let the next tick find the previous probe
		// still running on every slow disk, i.e. a "stuck" failure that the
		// timeout was meant to allow.
		errs = append(errs, fmt.Errorf("timeout %s must not exceed period %s", c.Timeout, c.Period))
	}
	if c.FailureThreshold < 1 {
		errs = append(errs, fmt.Errorf("failureThreshold must be >= 1, got %d", c.FailureThreshold))
	}
	if c.SuccessThreshold < 1 {
		errs = append(errs, fmt.Errorf("successThreshold must be >= 1, got %d", c.SuccessThreshold))
	}
	if c.UnfenceThreshold < 1 {
		errs = append(errs, fmt.Errorf("unfenceThreshold must be >= 1, got %d", c.UnfenceThreshold))
	}
	if c.ProbeBytes < directIOAlign || c.ProbeBytes > maxProbeBytes || c.ProbeBytes%directIOAlign != 0 {
		errs = append(errs, fmt.Errorf("probeBytes must be a multiple of %d between %d and %d, got %d",
			directIOAlign, directIOAlign, maxProbeBytes, c.ProbeBytes))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid health config: %w", errors.Join(errs...))
	}
	return nil
}
