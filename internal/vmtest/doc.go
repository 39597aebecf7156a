// Package vmtest runs a Go test's body inside a small qemu VM that boots the
// stock Debian kernel, for the kernel features this host's kernel lacks:
// ext4 and XFS quota, md RAID and device-mapper (dm-flakey, dm-error).
//
// A test opts in with one line and keeps its body as it is:
//
//	func TestRAID(t *testing.T) {
//		if !vmtest.Run(t, vmtest.Config{Disks: []int64{64 << 20, 64 << 20}}) {
//			return // on the host: the VM ran the body and its result is in t
//		}
//		// in the VM, as root: /dev/vda, /dev/vdb, mdadm, dmsetup, mkfs.xfs, ...
//	}
//
// # What Run does on the host
//
// Once per process (and once per machine, through an on-disk cache under
// $DHPP_VMTEST_CACHE or ~/.cache/dhpp-vmtest, serialised with flock so the
// test binaries of one `go test ./...` do not race):
//
//   - installs the Debian packages it needs with apt-get (qemu-system-x86,
//     linux-image-amd64, busybox-static, xfsprogs, e2fsprogs, quota, dmsetup,
//     xz-utils, kmod, util-linux); mdadm is only downloaded and unpacked
//     (apt-get download + dpkg -x), so the host gets no md udev rules,
//     monitor service or initramfs hook;
//   - extracts the uncompressed kernel (vmlinux) from /boot/vmlinuz-*: the
//     XZ stream after the "\xfd7zXZ\x00" magic. qemu boots that ELF through
//     its PVH entry point and so skips the kernel's self-decompression, which
//     alone costs seconds under emulation;
//   - builds the initramfs, a plain newc cpio written by this package: static
//     busybox with its applet links, the real tools at their host paths with
//     the libraries ldd names (mkfs.xfs, xfs_quota, xfs_io, mke2fs, chattr,
//     setquota, dmsetup, blockdev, losetup, mdadm, ...), /etc/mke2fs.conf,
//     passwd/group with root and nobody, the kernel modules in the order
//     `modprobe --show-depends -S <version>` gives, and /init (init.sh). The
//     cache key covers the kernel version, the tool packages' versions, the
//     module and tool lists and init.sh, so a second `go test` reuses it and
//     any upgrade rebuilds it.
//
// Then, per test: a private directory with sparse raw disk images (one per
// Config.Disks entry) and a share directory holding a hard link (or copy) of
// the running test binary and a run script. qemu boots with
//
//	-machine q35 -accel tcg -smp 1 -m 512 -nodefaults -display none
//	-serial stdio -no-reboot -bios qboot.rom -kernel vmlinux -initrd initramfs.cpio
//	-append "console=ttyS0 panic=-1 quiet" -device virtio-rng-pci
//	-virtfs local,path=<share>,mount_tag=work,security_model=none
//	-virtfs local,path=<package dir>,mount_tag=src,security_model=none,readonly=on
//	-drive file=diskN.img,format=raw,if=virtio,cache=unsafe ...
//
// and the guest runs `<binary> -test.run '^<t.Name()>$' -test.v` as root.
// Config.Tools adds host programs the image lacks (fio for test/benchio):
// linked into the share with the libraries ldd names that the initramfs
// does not have, on the guest's PATH and LD_LIBRARY_PATH, so they cost
// nothing to the VM tests that do not ask for them. Config.DiskCache
// replaces cache=unsafe (a benchmark uses "none": O_DIRECT on the image,
// guest flushes become fdatasync on the host), and Config.OutDir shares a
// host directory read-write at its own path (a benchmark's report).
// Every console line is passed to t.Log; the host test fails if the guest
// exits non-zero, leaves no exit code (panic, crash), never ran the test, or
// outlives Config.Timeout (qemu is killed). The guest's own -test.timeout is
// set shorter, so a hang prints its goroutines first.
//
// # Why these choices
//
//   - TCG, not KVM: /dev/kvm on these machines is kvm_pvm (software PVM, no
//     vmx/svm), where a normal guest kernel crawls or dies with "emulation
//     failure". TCG is slower for CPU-heavy work (5–10×), so VM tests use
//     small disks and short workloads.
//   - The stock Debian kernel: it has every module dhpp needs, and it is the
//     kernel production nodes run. Modules are loaded with insmod in
//     dependency order; the x86 crypto variants (crc32c-intel) are left out
//     because the emulated CPU lacks their instructions and the generic ones
//     work.
//   - q35: virtio-pci probes in tens of milliseconds instead of over a second
//     on the "pc" machine. -smp 1: under TCG a second vCPU costs more than it
//     gives. 512 MiB: the guest uses a few tens of MiB; qemu's RSS is about
//     330–370 MiB.
//   - 9p for the share: no image to build per test, the binary runs in place,
//     and the exit code comes back as a file (/work/vmtest-exit) rather than
//     parsed from the console.
//   - cache=unsafe sparse raw disks: nothing on them outlives the test, and
//     they cost no space until written.
//   - qboot (from qemu-system-data) instead of SeaBIOS when present: it
//     jumps straight to the PVH kernel and saves a second or more per boot.
//   - virtio-rng: Go's crypto/rand and mkfs UUIDs need entropy early.
//
// # Inside the guest
//
// /dev (devtmpfs), /proc, /sys are mounted, /tmp and /run are tmpfs, the
// share is at /work and the package directory is mounted read-only at its
// host path and is the working directory (testdata/ works). The environment
// has HOME=/root, TMPDIR=/tmp, PATH with the tools, DM_DISABLE_UDEV=1 and
// MDADM_NO_UDEV=1 (there is no udev: dmsetup and mdadm create their own
// device nodes), CI if the host has it, and Config.Env. The user nobody
// (NobodyUID/NobodyGID) exists; RunAs runs a program as any uid/gid, which
// tests need because ext4 lets root write past a quota. Directories from
// t.TempDir are 0700, so a test that writes as nobody makes its mount point
// elsewhere (e.g. os.MkdirTemp("/mnt", ...) and chmod 0755).
//
// Gotchas: XFS reports an exceeded project quota as ENOSPC, ext4 as EDQUOT;
// stop md arrays (mdadm --stop) before the test ends; suspend a dm device
// that has failing writes under a filesystem with --nolockfs.
//
// # The test binary
//
// It must run in the guest: a static binary (CGO_ENABLED=0, or a package
// that imports neither net nor os/user) always does; a cgo-linked one only
// if every library it needs is already in the initramfs, which Run checks,
// failing with "build it static: CGO_ENABLED=0 go test ..." otherwise.
// glibc and its loader are in the initramfs (the tools need them), so the
// usual cgo binary, linked against libc alone, runs too.
//
// # Privileges
//
// Installing packages and reading /boot/vmlinuz-* need root. If the VM
// cannot be prepared, the test is skipped with the reason when not root
// locally, and fails under CI=true (or as root): a VM test never passes
// without having run its body. Parallel VM tests (t.Parallel, -parallel N)
// each get their own disks and share directory.
package vmtest
