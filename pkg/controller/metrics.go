package controller

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Action kinds and results, the labels of dhpp_controller_actions_total.
const (
	ActionDeleteClaim  = "delete_claim"
	ActionEvictPod     = "evict_pod"
	ActionDeleteVolume = "delete_volume"
	ActionWarnKeep     = "warn_keep"
	// ActionSelectNode: a restore or clone pointed at its source's node.
	ActionSelectNode = "select_node"
	// ActionLabelContent: a pre-provisioned VolumeSnapshotContent handed
	// to its node's csi-snapshotter.
	ActionLabelContent = "label_content"

	ResultSuccess = "success"
	ResultError   = "error"
	// ResultBlocked: the Eviction API refused (429) because of a
	// PodDisruptionBudget; retried later.
	ResultBlocked = "blocked"
	// ResultDryRun: --dry-run logged the action instead of doing it.
	ResultDryRun = "dry_run"
)

// Metrics are the controller's Prometheus series (dhpp_controller_ prefix).
type Metrics struct {
	actions *prometheus.CounterVec
	leader  prometheus.Gauge
}

// NewMetrics registers the controller's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dhpp_controller_actions_total",
			Help: "Actions taken, by kind (on lost volumes: delete_claim, evict_pod, delete_volume, warn_keep; on snapshots: select_node for a restore or clone, label_content for a pre-provisioned content) and result (success, error, blocked by a PodDisruptionBudget, dry_run).",
		}, []string{"action", "result"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dhpp_controller_leader",
			Help: "1 while this replica holds the leader Lease and acts, 0 while it stands by.",
		}),
	}
	reg.MustRegister(m.actions, m.leader)
	return m
}

func (m *Metrics) count(action, result string) {
	if m != nil {
		m.actions.WithLabelValues(action, result).Inc()
	}
}

// SetLeader records whether this replica leads.
func (m *Metrics) SetLeader(leading bool) {
	if m == nil {
		return
	}
	v := 0.0
	if leading {
		v = 1
	}
	m.leader.Set(v)
}
