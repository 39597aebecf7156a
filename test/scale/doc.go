// Package scale measures what dhpp costs per node at cluster scale: the RSS
// and CPU of the DaemonSet's containers (dhpp-driver, csi-provisioner,
// csi-resizer, csi-snapshotter) and the API requests and watch traffic they cause, with 0,
// 1,000 and 5,000 PVCs and PVs in the cluster that are not dhpp's. It runs
// on the local cluster (test/e2e/cluster) with the apiserver's audit log on;
// `make bench-scale` runs it (docs/benchmarks.md, "Per-node cost at
// cluster scale").
package scale
