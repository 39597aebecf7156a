package node

// Growing a loop volume's filesystem to its image: online where the driver
// may (xfs always; ext4 with CAP_SYS_RESOURCE), else offline before the
// next mount, with a durable intent record so that a grow killed halfway is
// repaired and finished by the next stage. These work on any volumeDir,
// like the rest of the image machinery.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
)

// errNoOnlineGrow: ext4 cannot grow mounted here. Online growth
// (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which the driver lacks; the
// filesystem grows offline at the next NodeStage after a NodeUnstage.
var errNoOnlineGrow = errors.New("online ext4 growth needs CAP_SYS_RESOURCE, which the driver lacks; the filesystem grows offline at the next NodeStage after a NodeUnstage")

// growFs grows a mounted filesystem up to its device, if it is smaller.
func (b *loopBackend) growFs(dev, mountPoint, fsType string) error {
	need, err := b.needsGrow(dev)
	if err != nil || !need {
		return err
	}
	if fsType == "ext4" && !growsOnline() {
		return fmt.Errorf("grow filesystem on %s mounted at %s: %w", dev, mountPoint, errNoOnlineGrow)
	}
	if _, err := mount.NewResizeFs(b.st.exec).Resize(dev, mountPoint); err != nil {
		return fmt.Errorf("grow filesystem on %s mounted at %s (online ext4 growth needs CAP_SYS_RESOURCE; it also happens offline at the next stage): %w", dev, mountPoint, err)
	}
	return nil
}

// catchUpStaged grows the filesystem of a volume found staged already up
// to its image, expanded meanwhile, where that can be done mounted. When
// it cannot (errNoOnlineGrow) the volume is usable at the staging path all
// the same, which is NodeStage's job: a repeated stage (a second pod, a
// kubelet retry) succeeds and the grow waits for the offline one. Any
// other error (reading the device, a failed resize) fails the stage.
func (b *loopBackend) catchUpStaged(dev, stagingPath string, v *Volume) error {
	err := b.growFs(dev, stagingPath, v.FsType)
	if errors.Is(err, errNoOnlineGrow) {
		klog.InfoS("Volume staged already; its filesystem waits to grow to the expanded image", "device", dev, "stagingPath", stagingPath, "reason", err)
		return nil
	}
	return err
}

// needsGrow reports whether the device is larger than its filesystem.
func (b *loopBackend) needsGrow(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	devBytes, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return false, err
	}
	fsType := b.fsTypeOf(f)
	if fsType == "" {
		return false, nil // block volume or unknown: nothing to grow
	}
	fsBytes, err := filesystemBytes(f, fsType)
	if err != nil {
		return false, err
	}
	return fsBytes < devBytes, nil
}

func (*loopBackend) fsTypeOf(r io.ReaderAt) string {
	for t := range loopFsTypes {
		if _, err := filesystemBytes(r, t); err == nil {
			return t
		}
	}
	return ""
}

// growIntentName marks, in a loop volume's directory, an offline grow of
// its ext4 filesystem that may have started: see growOffline.
const growIntentName = "offline-grow"

// growsOnline reports whether ext4 can be grown mounted, through
// EXT4_IOC_RESIZE_FS, which needs CAP_SYS_RESOURCE (a privileged DaemonSet
// has it). A variable so that tests can force the offline path.
var growsOnline = sync.OnceValue(hasCapSysResource)

func hasCapSysResource() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_RESOURCE/32].Effective&(1<<(unix.CAP_SYS_RESOURCE%32)) != 0
}

// growOffline brings an unmounted ext4 filesystem up to its device's size
// before it is mounted, when it cannot grow online, and finishes an
// offline grow that was interrupted.
//
// Online growth is preferred whenever the driver may use it: it is
// journaled, so a kill or power loss in the middle leaves a filesystem the
// next mount or grow simply continues. Stage then mounts first and growFs
// grows the mounted filesystem.
//
// resize2fs on an unmounted filesystem is not journaled: killed halfway it
// leaves the filesystem inconsistent, and the `e2fsck -p` that precedes a
// grow then refuses it ("UNEXPECTED INCONSISTENCY") on every later stage.
// e2fsck and resize2fs both rewrite the primary superblock last, a few
// changed bytes at a time: killed then they leave it with a checksum that
// does not match, which `e2fsck -p` does not repair either.
// So the intent is recorded first: the file growIntentName in the volume's
// directory, created through the pool's root and fsynced with its
// directory before the first tool that may write to the device (the
// preliminary e2fsck), removed only once resize2fs has succeeded. A stage
// that finds it knows the damage can be an interrupted e2fsck or resize of
// ours, repairs (repairInterruptedGrow) and runs resize2fs again (which
// finishes the grow, or finds nothing to do).
func (b *loopBackend) growOffline(ctx context.Context, dir volumeDir, dev, fsType string) error {
	if fsType != "ext4" {
		return nil // xfs can only grow mounted: growFs does it
	}
	intent, err := b.hasGrowIntent(dir)
	if err != nil {
		return err
	}
	if !intent {
		if growsOnline() {
			return nil
		}
		need, err := b.needsGrow(dev)
		if err != nil || !need {
			return err
		}
		if err := b.setGrowIntent(dir); err != nil {
			return err
		}
		// -p repairs only what is safe without a human, and exits 1 when
		// it did; anything else it found is not ours to force: the record
		// goes, so no later stage forces it with -y either.
		if out, err := runFsTool(ctx, "e2fsck", "-f", "-p", dev); exitStatus(err) > 1 {
			if exitStatus(err) < 128 {
				if cerr := b.clearGrowIntent(dir); cerr != nil {
					klog.ErrorS(cerr, "Keeping the offline grow record", "image", dir.abs(imageName))
				}
			}
			return fmt.Errorf("e2fsck %s before growing: %w: %s", dev, err, out)
		}
	} else {
		klog.InfoS("Finishing an interrupted offline grow: repairing the filesystem with e2fsck -f -y first", "image", dir.abs(imageName), "device", dev)
		if err := repairInterruptedGrow(ctx, dev); err != nil {
			return err
		}
	}
	if out, err := runFsTool(ctx, "resize2fs", dev); err != nil {
		return fmt.Errorf("resize2fs %s: %w: %s", dev, err, out)
	}
	return b.clearGrowIntent(dir)
}

// backupSuperblocks are where the first backup superblock of an ext4 made
// by mkfs.ext4 with default groups lies, by block size: in group 1, whose
// first block is 8 × block size blocks in (a block bitmap's bits), plus
// the boot block's offset for 1 KiB blocks (mkfs picks those for small
// images like ours). The list is tried in order and a wrong guess fails
// harmlessly (e2fsck finds no superblock there), so neither the damaged
// primary superblock nor the image size has to be believed to find it.
var backupSuperblocks = []struct{ block, blockSize int }{
	{32768, 4096}, {8193, 1024}, {16384, 2048},
}

// fsRepairedFromBackup, if set (by tests), is called when an interrupted
// grow was repaired from a backup superblock.
var fsRepairedFromBackup func(dev string)

// repairInterruptedGrow runs `e2fsck -f -y` on a filesystem an offline grow
// of ours was killed in. Exit 1 and 2 mean errors were corrected; 4 that
// some were not. Exit 8 means e2fsck could not even open it: a torn
// primary superblock. e2fsck falls back to a backup superblock by itself
// only for some open errors, so then each backupSuperblocks candidate is
// tried explicitly; the backups are written before the primary, so they
// describe the filesystem as it was before the tool that tore it, and
// e2fsck rewrites the primary from the one it used.
func repairInterruptedGrow(ctx context.Context, dev string) error {
	out, err := runFsTool(ctx, "e2fsck", "-f", "-y", dev)
	if exitStatus(err) <= 2 {
		if strings.Contains(out, "trying backup blocks") && fsRepairedFromBackup != nil {
			fsRepairedFromBackup(dev)
		}
		return nil
	}
	if exitStatus(err) != 8 {
		return fmt.Errorf("e2fsck -f -y %s to finish an interrupted grow: %w: %s", dev, err, out)
	}
	for _, sb := range backupSuperblocks {
		bout, berr := runFsTool(ctx, "e2fsck", "-f", "-y", "-b", strconv.Itoa(sb.block), "-B", strconv.Itoa(sb.blockSize), dev)
		if exitStatus(berr) <= 2 {
			klog.InfoS("Repaired an interrupted offline grow from a backup superblock", "device", dev, "superblock", sb.block, "blockSize", sb.blockSize)
			if fsRepairedFromBackup != nil {
				fsRepairedFromBackup(dev)
			}
			return nil
		}
		if exitStatus(berr) != 8 {
			return fmt.Errorf("e2fsck -f -y -b %d %s to finish an interrupted grow: %w: %s", sb.block, dev, berr, bout)
		}
	}
	return fmt.Errorf("e2fsck -f -y %s to finish an interrupted grow, nor any backup superblock, can open it: %w: %s", dev, err, out)
}

func (b *loopBackend) hasGrowIntent(dir volumeDir) (bool, error) {
	_, err := dir.st.root.Lstat(path.Join(dir.rel, growIntentName))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// setGrowIntent creates the marker durably: the file and its directory
// entry are fsynced before e2fsck or resize2fs may touch the filesystem.
func (b *loopBackend) setGrowIntent(dir volumeDir) error {
	f, err := dir.st.root.OpenFile(path.Join(dir.rel, growIntentName), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("record the offline grow: %w", err)
	}
	_, err = f.WriteString("offline grow of disk.img started (e2fsck, resize2fs); the next stage runs e2fsck -f -y and resize2fs again\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("record the offline grow: %w", err)
	}
	return syncDir(dir.st.root, dir.rel)
}

func (b *loopBackend) clearGrowIntent(dir volumeDir) error {
	if err := dir.st.root.Remove(path.Join(dir.rel, growIntentName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clear the offline grow record: %w", err)
	}
	return syncDir(dir.st.root, dir.rel)
}

// fsToolStarted, if set (by tests), is called with each filesystem tool
// growOffline starts, once it runs, and its arguments.
var fsToolStarted func(name string, args []string, p *os.Process)

// runFsTool runs e2fsck or resize2fs on a volume's device and returns its
// trimmed output. The tool is not tied to the request's context: stopping
// it halfway is what leaves a filesystem to repair. It is tied to the
// driver instead (Pdeathsig, from a thread locked until it exits), so a
// killed driver leaves no tool running unobserved on the device while its
// successor repairs it.
func runFsTool(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(context.WithoutCancel(ctx), name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return "", err
	}
	if fsToolStarted != nil {
		fsToolStarted(name, args, cmd.Process)
	}
	err := cmd.Wait()
	return strings.TrimSpace(out.String()), err
}

// exitStatus is a finished command's exit status: 0 on success, the
// process's status if it exited, 128 for anything else (killed, not run).
func exitStatus(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode()
	}
	return 128
}
