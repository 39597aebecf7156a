// Package app turns dhpp-driver's command line into a running driver: the
// flags, the wiring of pools, CSI services, kubelet registration, the trash
// purger and the HTTP endpoint. cmd/dhpp-driver only calls Parse and Run.
package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dhpp-io/dhpp/internal/cli"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Config is everything dhpp-driver runs with.
type Config struct {
	Endpoint          string
	NodeID            string
	Pools             []node.PoolConfig
	TrashRetention    time.Duration
	DefaultVolumeSize int64
	MaxVolumesPerNode int64
	MetricsAddress    string

	// Health is the disk health probe and fencing policy of every pool.
	Health health.Config
	// Orphans is the check of this node's volumes against the cluster's
	// PersistentVolumes (pkg/orphans).
	Orphans OrphanConfig
	// Kubeconfig, if set, is used instead of the in-cluster config (the
	// driver runs without Kubernetes when neither is available).
	Kubeconfig string

	KubeletRegistration     bool
	KubeletRegistrationPath string
	PluginRegistrationDir   string

	ShowVersion bool
}

// OrphanConfig sets the orphan and missing-volume check.
type OrphanConfig struct {
	// Grace: how long a volume lacks its PV (or a PV its volume) before
	// it counts, and the minimum age of an orphan.
	Grace time.Duration
	// Period between two listings of the PVs; 0 turns the check off.
	Period time.Duration
	// Trash moves orphans to the pool's trash; false only reports them.
	Trash bool
}

// poolFlag collects repeated --pool flags.
type poolFlag struct{ pools *[]node.PoolConfig }

func (f poolFlag) String() string {
	if f.pools == nil {
		return ""
	}
	var s []string
	for _, p := range *f.pools {
		s = append(s, fmt.Sprintf("%s=%s,backend=%s,fs=%s", p.Name, p.Path, p.Backend, p.FsType))
	}
	return strings.Join(s, " ")
}

func (f poolFlag) Set(v string) error {
	p, err := ParsePool(v)
	if err != nil {
		return err
	}
	*f.pools = append(*f.pools, p)
	return nil
}

// ParsePool parses "name=path[,backend=auto|btrfs|xfs|ext4|loop|dir][,fs=ext4|xfs][,btrfs-quota=qgroup|simple]";
// fs is the default filesystem of loop volumes, btrfs-quota how a btrfs
// pool whose quotas are off gets them (node.PoolConfig.BtrfsQuota).
func ParsePool(v string) (node.PoolConfig, error) {
	parts := strings.Split(v, ",")
	name, path, ok := strings.Cut(parts[0], "=")
	if !ok || name == "" || path == "" {
		return node.PoolConfig{}, fmt.Errorf("pool %q: want name=path[,backend=auto|btrfs|xfs|ext4|loop|dir][,fs=ext4|xfs]", v)
	}
	if err := node.ValidatePoolName(name); err != nil {
		return node.PoolConfig{}, fmt.Errorf("pool %q: %v", v, err)
	}
	if !strings.HasPrefix(path, "/") {
		return node.PoolConfig{}, fmt.Errorf("pool %q: path %q must be absolute", v, path)
	}
	pc := node.PoolConfig{Name: name, Path: path, Backend: node.BackendAuto}
	for _, opt := range parts[1:] {
		k, val, _ := strings.Cut(opt, "=")
		switch k {
		case "backend":
			b, err := node.ParseBackendKind(val)
			if err != nil {
				return node.PoolConfig{}, fmt.Errorf("pool %q: %v", v, err)
			}
			pc.Backend = b
		case "fs":
			if err := node.ValidateLoopFsType(val); err != nil {
				return node.PoolConfig{}, fmt.Errorf("pool %q: %v", v, err)
			}
			pc.FsType = val
		case "btrfs-quota":
			if val != node.BtrfsQuotaQgroup && val != node.BtrfsQuotaSimple {
				return node.PoolConfig{}, fmt.Errorf("pool %q: btrfs-quota=%q: want %s or %s", v, val, node.BtrfsQuotaQgroup, node.BtrfsQuotaSimple)
			}
			pc.BtrfsQuota = val
		default:
			return node.PoolConfig{}, fmt.Errorf("pool %q: unknown option %q (want backend=..., fs=... or btrfs-quota=...)", v, k)
		}
	}
	return pc, nil
}

// quantityFlag accepts Kubernetes quantities ("1Gi", "500M", "1073741824").
type quantityFlag struct{ v *int64 }

func (f quantityFlag) String() string {
	if f.v == nil {
		return ""
	}
	return resource.NewQuantity(*f.v, resource.BinarySI).String()
}

func (f quantityFlag) Set(s string) error {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return fmt.Errorf("%q is not a size (e.g. 1Gi)", s)
	}
	if q.Sign() <= 0 {
		return fmt.Errorf("%q must be positive", s)
	}
	*f.v = q.Value()
	return nil
}

// Parse parses the command line. Errors are one line, suitable for stderr
// before exiting with status 2; --help output goes to out.
func Parse(args []string, out io.Writer, getenv func(string) string) (Config, error) {
	c := Config{DefaultVolumeSize: node.DefaultVolumeSize, Health: health.DefaultConfig()}
	fs := flag.NewFlagSet("dhpp-driver", flag.ContinueOnError)
	fs.StringVar(&c.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix socket) the sidecars and kubelet connect to")
	fs.StringVar(&c.NodeID, "node-id", "", "this node's name (default: $NODE_NAME, then the hostname); must match the Kubernetes node name")
	fs.Var(poolFlag{&c.Pools}, "pool", "a storage pool: name=path[,backend=auto|btrfs|xfs|ext4|loop|dir][,fs=ext4|xfs]; repeatable, the first is the default")
	fs.DurationVar(&c.TrashRetention, "trash-retention", 15*time.Minute, "how long a deleted volume's data stays in the pool's trash before it is purged (> 0)")
	fs.Var(quantityFlag{&c.DefaultVolumeSize}, "default-volume-size", "size of a volume whose claim names none")
	fs.Int64Var(&c.MaxVolumesPerNode, "max-volumes-per-node", 0, "volumes the scheduler may place on this node (0 = no limit)")
	fs.StringVar(&c.MetricsAddress, "metrics-address", ":9808", "address of the HTTP endpoint with /metrics, /healthz and /readyz (empty = off)")
	fs.DurationVar(&c.Health.Period, "health-period", c.Health.Period, "time between two disk health probes of a pool (each writes, reads back and compares 1 MiB with O_DIRECT)")
	fs.DurationVar(&c.Health.Timeout, "health-timeout", c.Health.Timeout, "a probe slower than this fails (<= --health-period)")
	fs.IntVar(&c.Health.FailureThreshold, "health-failure-threshold", c.Health.FailureThreshold, "consecutive failed probes that fence a pool (no new volumes; existing ones untouched)")
	fs.IntVar(&c.Health.SuccessThreshold, "health-success-threshold", c.Health.SuccessThreshold, "consecutive good probes that return a Failing (not yet fenced) pool to Healthy")
	fs.IntVar(&c.Health.UnfenceThreshold, "health-unfence-threshold", c.Health.UnfenceThreshold, "consecutive good probes that unfence a pool, only with --health-auto-unfence")
	fs.BoolVar(&c.Health.AutoUnfence, "health-auto-unfence", c.Health.AutoUnfence, "let a fenced pool unfence itself after --health-unfence-threshold good probes; off: only `kubectl annotate node NODE unfence.dhpp.io/POOL=now` unfences")
	fs.DurationVar(&c.Orphans.Grace, "orphan-grace", time.Hour, "a volume whose PV has been gone this long (and that is this old) is an orphan: reported and moved to the trash; a Bound PV whose volume has been missing this long is reported on its claim")
	fs.DurationVar(&c.Orphans.Period, "orphan-check-period", 10*time.Minute, "time between two listings of the PersistentVolumes for the orphan check (0 = no check)")
	fs.BoolVar(&c.Orphans.Trash, "orphan-trash", true, "move orphaned volumes to the pool's trash (purged after --trash-retention); false: only report them")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig for Node Events/labels/conditions (default: in-cluster config; none outside a cluster)")
	fs.BoolVar(&c.KubeletRegistration, "kubelet-registration", true, "register with the kubelet's plugin watcher (turn off when running node-driver-registrar)")
	fs.StringVar(&c.KubeletRegistrationPath, "kubelet-registration-path", "/var/lib/kubelet/plugins/"+dhpp.DriverName+"/csi.sock", "the CSI socket path as the kubelet sees it on the host")
	fs.StringVar(&c.PluginRegistrationDir, "plugin-registration-dir", "/var/lib/kubelet/plugins_registry", "the kubelet's plugin registration directory (as mounted into this container)")
	fs.BoolVar(&c.ShowVersion, "version", false, "print the version and exit")
	if err := cli.Parse(fs, args, out, "dhpp-driver --pool=NAME=PATH[,backend=...] [flags]"); err != nil {
		return c, err
	}
	if c.ShowVersion {
		return c, nil
	}
	if c.NodeID == "" {
		c.NodeID = getenv("NODE_NAME")
	}
	if c.NodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("--node-id not set, $NODE_NAME empty and hostname unknown: %v", err)
		}
		c.NodeID = h
	}
	return c, c.Validate()
}

// Validate checks a Config for the mistakes flags alone cannot catch.
func (c Config) Validate() error {
	if err := node.ValidateNodeID(c.NodeID); err != nil {
		return fmt.Errorf("--node-id: %v", err)
	}
	if len(c.Pools) == 0 {
		return errors.New("no --pool given: at least one pool (name=path) is required")
	}
	if c.TrashRetention <= 0 {
		return fmt.Errorf("--trash-retention must be positive (got %s): deleted data always gets a grace period", c.TrashRetention)
	}
	if c.MaxVolumesPerNode < 0 {
		return fmt.Errorf("--max-volumes-per-node must not be negative (got %d)", c.MaxVolumesPerNode)
	}
	if c.Orphans.Period < 0 || (c.Orphans.Period > 0 && c.Orphans.Grace <= 0) {
		return fmt.Errorf("--orphan-check-period must not be negative and --orphan-grace must be positive (got %s, %s): an orphan always gets a grace period", c.Orphans.Period, c.Orphans.Grace)
	}
	if p := c.Health.Problems(healthFlag); len(p) > 0 {
		return fmt.Errorf("health flags: %s", strings.Join(p, "; "))
	}
	if c.KubeletRegistration && !strings.HasPrefix(c.KubeletRegistrationPath, "/") {
		return fmt.Errorf("--kubelet-registration-path %q must be absolute", c.KubeletRegistrationPath)
	}
	return nil
}

// healthFlags are the flags that set health.Config's fields.
var healthFlags = map[string]string{
	"Period": "--health-period", "Timeout": "--health-timeout",
	"FailureThreshold": "--health-failure-threshold", "SuccessThreshold": "--health-success-threshold",
	"UnfenceThreshold": "--health-unfence-threshold",
}

// healthFlag names a health.Config field in an error by its flag ("" for
// a field no flag sets: health.Config's own name).
func healthFlag(field string) string { return healthFlags[field] }
