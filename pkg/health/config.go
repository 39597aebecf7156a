package health

import (
	"fmt"
	"strings"
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
// in one round; fields are named as in Go, starting lower case ("period").
func (c Config) Validate() error {
	if p := c.Problems(nil); len(p) > 0 {
		return fmt.Errorf("invalid health config: %s", strings.Join(p, "\n"))
	}
	return nil
}

// Problems describes every invalid field, naming each field f of Config
// ("Period", "FailureThreshold", ...) as rename(f), so a caller names them
// the way its user set them (the driver: by flag). Where rename is nil or
// returns "", the field is named as in Go, starting lower case ("period").
func (c Config) Problems(rename func(field string) string) []string {
	name := func(field string) string {
		if rename != nil {
			if n := rename(field); n != "" {
				return n
			}
		}
		return strings.ToLower(field[:1]) + field[1:]
	}
	var p []string
	if c.Period <= 0 {
		p = append(p, fmt.Sprintf("%s must be > 0, got %s", name("Period"), c.Period))
	}
	if c.Timeout <= 0 {
		p = append(p, fmt.Sprintf("%s must be > 0, got %s", name("Timeout"), c.Timeout))
	} else if c.Period > 0 && c.Timeout > c.Period {
		// Each pool's probes run one after another (a probe returns within
		// Timeout, and a tick that comes while one runs is dropped), so a
		// timeout longer than the period would stretch the probe interval
		// on a slow disk beyond Period, and with it the promised time to
		// fence (about Period×FailureThreshold+Timeout). Keeping Timeout <=
		// Period makes the configured period the real one.
		p = append(p, fmt.Sprintf("%s %s must not exceed %s %s", name("Timeout"), c.Timeout, name("Period"), c.Period))
	}
	for _, t := range []struct {
		field string
		v     int
	}{{"FailureThreshold", c.FailureThreshold}, {"SuccessThreshold", c.SuccessThreshold}, {"UnfenceThreshold", c.UnfenceThreshold}} {
		if t.v < 1 {
			p = append(p, fmt.Sprintf("%s must be >= 1, got %d", name(t.field), t.v))
		}
	}
	if c.ProbeBytes < directIOAlign || c.ProbeBytes > maxProbeBytes || c.ProbeBytes%directIOAlign != 0 {
		p = append(p, fmt.Sprintf("%s must be a multiple of %d between %d and %d, got %d",
			name("ProbeBytes"), directIOAlign, directIOAlign, maxProbeBytes, c.ProbeBytes))
	}
	return p
}
