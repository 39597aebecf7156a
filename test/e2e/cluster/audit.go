package cluster

import (
	"fmt"
	"os"
	"path/filepath"
)

// auditPolicy logs every request at Metadata level (who, verb, resource,
// user agent; no bodies). RequestReceived is omitted: a request is counted
// from ResponseComplete, a watch from ResponseStarted (it completes only
// when it ends). Used by the scale benchmark (test/scale) to count API
// requests per client; off unless Config.Audit.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/livez*", "/readyz*"]
  - level: Metadata
`

// AuditLogPath is where the apiserver writes its audit log when Config.Audit
// is set.
func (c Config) AuditLogPath() string { return filepath.Join(c.logDir(), "audit.log") }

// auditFlags writes the policy and returns the apiserver flags that turn
// audit logging on, or nothing when cfg.Audit is off.
func auditFlags(cfg Config) ([]string, error) {
	if !cfg.Audit {
		return nil, nil
	}
	policy := filepath.Join(cfg.OutputDir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o644); err != nil {
		return nil, fmt.Errorf("audit policy: %w", err)
	}
	// The log backend writes each event as it happens (blocking mode), so a
	// window can be counted right after it closes; 500 MB before the
	// first rotation holds a whole benchmark run.
	return []string{"--audit-policy-file=" + policy, "--audit-log-path=" + cfg.AuditLogPath(),
		"--audit-log-format=json", "--audit-log-maxsize=500",
		"--audit-log-maxbackup=1"}, nil
}
