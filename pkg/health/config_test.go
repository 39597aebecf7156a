package health

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigMatchesSeedProbe(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("DefaultConfig invalid: %v", err)
	}
	if c.Period != 5*time.Second || c.Timeout != time.Second || c.FailureThreshold != 3 ||
		c.SuccessThreshold != 1 || c.ProbeBytes != 1<<20 {
		t.Errorf("DefaultConfig = %+v, want the seed probe's 5s/1s/3/1 and 1 MiB", c)
	}
	if c.AutoUnfence {
		t.Errorf("AutoUnfence is on by default; the package doc says manual unfence is the default")
	}
}

func TestConfigValidate(t *testing.T) {
	mod := func(f func(*Config)) Config { c := DefaultConfig(); f(&c); return c }
	tests := []struct {
		name    string
		cfg     Config
		wantErr []string // substrings; nil means valid
	}{
		{"default", DefaultConfig(), nil},
		{"timeout equal to period", mod(func(c *Config) { c.Timeout = c.Period }), nil},
		{"small probe", mod(func(c *Config) { c.ProbeBytes = 4096 }), nil},
		{"zero period", mod(func(c *Config) { c.Period = 0 }), []string{"period must be > 0"}},
		{"negative timeout", mod(func(c *Config) { c.Timeout = -1 }), []string{"timeout must be > 0"}},
		{"timeout above period", mod(func(c *Config) { c.Timeout = 6 * time.Second }), []string{"must not exceed period"}},
		{"zero failure threshold", mod(func(c *Config) { c.FailureThreshold = 0 }), []string{"failureThreshold"}},
		{"zero success threshold", mod(func(c *Config) { c.SuccessThreshold = 0 }), []string{"successThreshold"}},
		{"zero unfence threshold", mod(func(c *Config) { c.UnfenceThreshold = 0 }), []string{"unfenceThreshold"}},
		{"unaligned probe size", mod(func(c *Config) { c.ProbeBytes = 1000 }), []string{"probeBytes"}},
		{"huge probe size", mod(func(c *Config) { c.ProbeBytes = 1 << 30 }), []string{"probeBytes"}},
		{"all errors reported at once", Config{}, []string{"period", "timeout", "failureThreshold", "successThreshold", "unfenceThreshold", "probeBytes"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want error containing %q", tc.wantErr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}
