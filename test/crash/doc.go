// Package crash holds the kill -9 crash loop test of dhpp: the real
// cmd/dhpp-driver runs as a subprocess on loop-backed btrfs and ext4 disks,
// concurrent workers drive it as a CSI client (create, delete, expand,
// stage, publish, fsynced writes through the mounts, snapshots, restores
// of them and their deletion), and the driver's
// whole process group is SIGKILLed, half the time at a random moment and
// half the time aimed into a chosen kind of call. After every restart the
// test checks that the disk state and the driver's answers match a model
// of what the driver promised: nothing acknowledged is lost, nothing
// deleted comes back, no fsynced byte changes, and a call cut off by the
// kill converges when it is retried.
//
// Files: crash_test.go (the test, its flags, the kill loop), driver_test.go
// (the subprocess), harness_test.go (calls and their outcomes),
// workload_test.go (the workers), target_test.go (aimed kills),
// check_test.go (the invariants), model_test.go (the model and summary),
// host_test.go (mounts, loop devices, data and records on the host),
// snapshot_test.go (the snapshot model, calls and checks).
//
// It needs root. Flags: -crash.kills (default 100, env DHPP_CRASH_KILLS),
// -crash.workers, -crash.seed (to replay a schedule), -crash.max-delay,
// -crash.block (raw block volumes too, on every pool; on by default).
package crash
