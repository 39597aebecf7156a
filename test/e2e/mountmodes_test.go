//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestMountModes covers the ways a pod can use a dhpp volume besides the
// plain read-write mount: a read-only claim, a non-root pod given the
// volume through fsGroup, and a raw block device on the loop backend.
func TestMountModes(t *testing.T) {
	e := dhppCluster(t)
	ctx := testCtx(t, 15*time.Minute)
	ns := e.namespace(t, "modes")

	// One per backend: a btrfs subvolume bind mount, and a loop volume's
	// own filesystem bind-mounted read-only from its rw staging mount.
	for _, node := range []string{btrfsNode, loopNode} {
		t.Run("readOnly claim cannot be written/"+nodeFS(node), func(t *testing.T) {
			readOnlyCheck(t, e, ctx, ns, node)
		})
	}

	t.Run("non-root pod with fsGroup writes", func(t *testing.T) {
		e.applyYAML(t, ctx, pvcYAML(ns, "nonroot", "64Mi", false))
		e.applyYAML(t, ctx, podWithClaimYAML(ns, "nonroot", "nonroot", podOpts{
			securityContext: "{runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}",
		}))
		p := e.waitPodReady(t, ctx, ns, "nonroot", "", 3*time.Minute)
		out := e.sh(t, ctx, ns, "nonroot", "id -u && echo data > /data/f && cat /data/f && stat -c '%g' /data /data/f")
		// uid 1000 wrote; the kubelet gave the volume root to the fsGroup
		// (fsGroupPolicy File) and its setgid bit hands the group on.
		if want := "1000\ndata\n2000\n2000"; out != want {
			t.Errorf("non-root pod on %s: got\n%s\nwant\n%s", p.Spec.NodeName, out, want)
		}
	})

	t.Run("Block volume on the loop node is a block device", func(t *testing.T) {
		e.applyYAML(t, ctx, pvcYAML(ns, "block", "64Mi", true))
		e.applyYAML(t, ctx, podWithClaimYAML(ns, "block", "block", podOpts{node: loopNode, block: true}))
		e.waitPodReady(t, ctx, ns, "block", "", 3*time.Minute)
		out := e.sh(t, ctx, ns, "block", `test -b /dev/xvda && echo block
dd if=/dev/urandom of=/tmp/p bs=1M count=4 2>/dev/null
dd if=/tmp/p of=/dev/xvda bs=1M seek=8 conv=fsync 2>/dev/null
dd if=/dev/xvda of=/tmp/r bs=1M skip=8 count=4 2>/dev/null
cmp /tmp/p /tmp/r && echo same
blockdev --getsize64 /dev/xvda 2>/dev/null || true`)
		lines := strings.Split(out, "\n")
		if len(lines) < 2 || lines[0] != "block" || lines[1] != "same" {
			t.Fatalf("block device check in the pod:\n%s", out)
		}
		if len(lines) > 2 && lines[2] != "67108864" {
			t.Errorf("block device size %s, want 67108864", lines[2])
		}
		t.Logf("block volume on %s: %s", loopNode, strings.Join(lines, ", "))
	})
}

// readOnlyCheck: a writer puts a file on a claim on node, then a reader
// mounts the same claim read-only on the same node (RWO allows both there)
// and can read but not write it, while the writer still can.
func readOnlyCheck(t *testing.T, e *env, ctx context.Context, ns, node string) {
	claim, writer, reader := "ro-"+nodeFS(node), "ro-writer-"+nodeFS(node), "ro-reader-"+nodeFS(node)
	e.applyYAML(t, ctx, pvcYAML(ns, claim, "64Mi", false))
	e.applyYAML(t, ctx, podWithClaimYAML(ns, writer, claim, podOpts{node: node}))
	e.waitPodReady(t, ctx, ns, writer, "", 3*time.Minute)
	e.sh(t, ctx, ns, writer, "echo before > /data/f && sync")
	e.applyYAML(t, ctx, podWithClaimYAML(ns, reader, claim, podOpts{node: node, claimReadOnly: true}))
	e.waitPodReady(t, ctx, ns, reader, "", 3*time.Minute)
	if got := e.sh(t, ctx, ns, reader, "cat /data/f"); got != "before" {
		t.Errorf("read-only pod reads %q, want %q", got, "before")
	}
	for _, cmd := range []string{"echo x > /data/f", "touch /data/new", "mkdir /data/d"} {
		_, err := e.exec(ctx, ns, reader, "sh", "-c", cmd)
		if err == nil {
			t.Errorf("%q succeeded on a read-only mount", cmd)
		} else if !strings.Contains(err.Error(), "Read-only file system") {
			t.Errorf("%q failed, but not with EROFS: %v", cmd, err)
		}
	}
	mounts := e.sh(t, ctx, ns, reader, "grep ' /data ' /proc/mounts")
	if opts := strings.Fields(mounts); len(opts) < 4 || !strings.HasPrefix(opts[3], "ro") {
		t.Errorf("/data is not mounted ro in the reader: %s", mounts)
	}
	// The writer's mount of the same volume stays writable.
	e.sh(t, ctx, ns, writer, "echo after > /data/f")
	t.Logf("%s: reader mount %s", node, mounts)
}
