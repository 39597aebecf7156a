// Package benchio measures dhpp's data path: the same fio workloads run in a
// plain directory of a filesystem (what a bare hostPath or
// local-path-provisioner gives) and inside dhpp volumes of each backend made
// through pkg/node's Manager, and the figures are reported as ratios to the
// plain directory.
//
// The package holds what has no side effects (fio command lines, parsing of
// fio's JSON, medians and ratios, the Markdown table and the PNG chart); the
// disks, volumes and the run itself are in the tests: BenchmarkIO is `make
// bench-io`, TestSmoke keeps the harness from rotting in `make test`.
// Method and figures: docs/benchmarks.md.
package benchio
