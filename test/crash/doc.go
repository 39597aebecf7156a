// Package crash holds the kill -9 crash loop test of dhpp: the real
// cmd/dhpp-driver runs as a subprocess on loop-backed btrfs and ext4 disks,
// concurrent workers drive it as a CSI client (create, delete, expand,
// stage, publish, write through the mounts), and the driver's whole process
// group is SIGKILLed at random moments. After every restart the test checks
// that the disk state and the driver's answers match a model of what the
// driver promised: nothing acknowledged is lost, nothing deleted comes back,
// no fsynced byte changes, and an operation cut off by the kill converges
// when it is retried. It needs root; see crash_test.go for the flags.
package crash
