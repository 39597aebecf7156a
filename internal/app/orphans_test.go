package app

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/dhpp"
	"github.com/dhpp-io/dhpp/pkg/health"
	"github.com/dhpp-io/dhpp/pkg/node"
	"github.com/dhpp-io/dhpp/pkg/orphans"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestOrphanCheckWired runs the whole driver against a fake API server with
// a short orphan grace: of three volumes, the one with a PV stays, the
// orphan goes to the pool's trash (Event on the Node, counter on /metrics),
// and the orphan a pod still mounts is refused by the Manager and stays,
// counted by dhpp_orphan_volumes.
func TestOrphanCheckWired(t *testing.T) {
	testdisk.RequireRoot(t) // the mounted orphan is a real bind mount
	pool := t.TempDir()
	d := startDriverConfig(t, true, Config{
		Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"), NodeID: "n1", TrashRetention: time.Hour,
		Pools:             []node.PoolConfig{{Name: "default", Path: pool, Backend: node.BackendDir}},
		DefaultVolumeSize: 64 << 20, MetricsAddress: "127.0.0.1:0", Health: health.DefaultConfig(),
		Orphans: OrphanConfig{Grace: 2 * time.Second, Period: 200 * time.Millisecond, Trash: true},
	})
	ctx := context.Background()
	kept, err := d.create("pvc-kept")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.create("pvc-orphan"); err != nil {
		t.Fatal(err)
	}
	mountedID, target := d.publishRunning(t, "pvc-mounted")
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pvc-kept"},
		Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{
			CSI: &corev1.CSIPersistentVolumeSource{Driver: dhpp.DriverName, VolumeHandle: kept.GetVolume().GetVolumeId()}}},
	}
	if _, err := d.kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testdisk.WaitFor(t, "the orphan in the trash", func() bool {
		v, _ := d.gauge("dhpp_orphan_volumes_trashed_total", map[string]string{"pool": "default"})
		return v == 1
	})
	t.Logf("orphan trashed %s after the PV listing began (grace 2s)", time.Since(start).Round(10*time.Millisecond))
	trash, err := os.ReadDir(filepath.Join(pool, ".dhpp", "trash"))
	if err != nil || len(trash) != 1 || !strings.HasPrefix(trash[0].Name(), "pvc-orphan@") {
		t.Fatalf("trash %v (%v), want pvc-orphan@...", trash, err)
	}
	for _, v := range []string{"pvc-kept", "pvc-mounted"} {
		if _, err := os.Stat(filepath.Join(pool, "volumes", v, "volume.json")); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	if _, err := os.Stat(target); err != nil {
		t.Errorf("the mounted orphan's target: %v", err)
	}
	testdisk.WaitFor(t, "the mounted orphan counted", func() bool {
		v, _ := d.gauge("dhpp_orphan_volumes", map[string]string{"pool": "default"})
		return v == 1
	})
	var orphanEvents []string
	testdisk.WaitFor(t, "two OrphanVolume Events on the Node", func() bool {
		orphanEvents = nil
		for _, e := range d.nodeEvents() {
			if e.Reason == orphans.ReasonOrphanVolume && e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == "n1" {
				orphanEvents = append(orphanEvents, e.Message)
			}
		}
		return len(orphanEvents) == 2
	})
	joined := strings.Join(orphanEvents, "\n")
	if !strings.Contains(joined, "volume n1/default/pvc-orphan") || !strings.Contains(joined, mountedID) {
		t.Errorf("events %q do not name both orphans", joined)
	}
	// The kept volume is never touched, however many rounds run.
	time.Sleep(time.Second)
	if _, err := os.Stat(filepath.Join(pool, "volumes", "pvc-kept", "volume.json")); err != nil {
		t.Errorf("pvc-kept: %v", err)
	}
}
