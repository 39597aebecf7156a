package driver

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/pkg/node"
)

// TestCreateSnapshotRecordsMetadata: csi-snapshotter's metadata lands in
// the snapshot's record on disk; a repeated request (idempotency by name)
// returns the same snapshot and leaves the record as it was.
func TestCreateSnapshotRecordsMetadata(t *testing.T) {
	d, pool := inputDriver(t, nil)
	ctx := context.Background()
	vol, err := d.CreateVolume(ctx, createReq("src", nil))
	if err != nil {
		t.Fatal(err)
	}
	params := map[string]string{
		"csi.storage.k8s.io/volumesnapshot/name":        "db-snap",
		"csi.storage.k8s.io/volumesnapshot/namespace":   "prod",
		"csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-1234",
	}
	want := map[string]string{node.SnapshotLabelName: "db-snap", node.SnapshotLabelNamespace: "prod", node.SnapshotLabelContent: "snapcontent-1234"}
	req := &csi.CreateSnapshotRequest{Name: "snapshot-1234", SourceVolumeId: vol.Volume.VolumeId, Parameters: params}
	first, err := d.CreateSnapshot(ctx, req)
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	record := filepath.Join(pool, "snapshots", "snapshot-1234", "snapshot.json")
	if got := recordLabels(t, record); !maps.Equal(got, want) {
		t.Fatalf("record labels = %v, want %v", got, want)
	}
	req.Parameters = map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "other"}
	again, err := d.CreateSnapshot(ctx, req)
	if err != nil || again.Snapshot.SnapshotId != first.Snapshot.SnapshotId {
		t.Fatalf("repeated CreateSnapshot = %v, %v; want %s", again, err, first.Snapshot.SnapshotId)
	}
	if got := recordLabels(t, record); !maps.Equal(got, want) {
		t.Errorf("record labels after a repeat = %v, want unchanged %v", got, want)
	}
	s, err := d.nodes.GetSnapshot(first.Snapshot.SnapshotId)
	if err != nil || !maps.Equal(s.Labels, want) {
		t.Errorf("GetSnapshot labels = %v, %v; want %v", s, err, want)
	}
}

func recordLabels(t *testing.T, record string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Labels map[string]string `json:"labels"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", record, err)
	}
	return r.Labels
}
