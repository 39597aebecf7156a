package driver

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/dhpp-io/dhpp/internal/testdisk"
	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// twoPoolDriver serves pools "a" and "b" (dir backend, temp dirs) with
// three volumes each; health decides which pools are fenced.
func twoPoolDriver(t *testing.T, health fakeHealth) (*Driver, map[string][]string) {
	t.Helper()
	m, err := node.New(node.Config{NodeID: "node-a", DefaultSize: 1 << 20, Pools: []node.PoolConfig{
		{Name: "a", Path: t.TempDir(), Backend: node.BackendDir},
		{Name: "b", Path: t.TempDir(), Backend: node.BackendDir},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	d, err := New(Config{Manager: m, Health: health})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string][]string{}
	for _, pool := range []string{"a", "b"} {
		for i := range 3 {
			r, err := d.CreateVolume(context.Background(), createReq(fmt.Sprintf("%s-vol-%d", pool, i), func(r *csi.CreateVolumeRequest) {
				r.Parameters = map[string]string{"pool": pool}
			}))
			if err != nil {
				t.Fatal(err)
			}
			ids[pool] = append(ids[pool], r.GetVolume().GetVolumeId())
		}
	}
	return d, ids
}

// TestHealthPerPool: fencing one pool marks only its volumes, its capacity
// and its storage backend; the other pool keeps working.
func TestHealthPerPool(t *testing.T) {
	health := fakeHealth{}
	d, ids := twoPoolDriver(t, health)
	ctx := context.Background()
	health["b"] = "state Fenced, reason io_error, last probe error: input/output error"

	tests := []struct {
		pool         string
		wantAbnormal bool
	}{
		{"a", false},
		{"b", true},
	}
	for _, tt := range tests {
		t.Run(tt.pool, func(t *testing.T) {
			capa, err := d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": tt.pool}})
			if err != nil {
				t.Fatal(err)
			}
			if (capa.GetAvailableCapacity() == 0) != tt.wantAbnormal {
				t.Errorf("GetCapacity = %d, fenced %v", capa.GetAvailableCapacity(), tt.wantAbnormal)
			}
			_, err = d.CreateVolume(ctx, createReq("new-in-"+tt.pool, func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"pool": tt.pool} }))
			if gotFenced := status.Code(err) == codes.ResourceExhausted; gotFenced != tt.wantAbnormal || (!tt.wantAbnormal && err != nil) {
				t.Errorf("CreateVolume in %s: %v", tt.pool, err)
			}
			for _, id := range ids[tt.pool] {
				nh, err := d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
				if err != nil {
					t.Fatal(err)
				}
				hs := nh.GetVolumeHealth().GetHealthStatuses()
				if (len(hs) == 1) != tt.wantAbnormal {
					t.Errorf("NodeGetVolumeHealth(%s) = %v", id, hs)
				}
				if tt.wantAbnormal && (hs[0].GetReason() != reasonPoolFenced || !strings.Contains(hs[0].GetMessage(), "input/output error") || !strings.Contains(hs[0].GetMessage(), `"b"`)) {
					t.Errorf("health entry %v does not name the pool and the error", hs[0])
				}
			}
		})
	}

	sh, err := d.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sh.GetBackendHealth()) != 1 || !strings.Contains(sh.GetBackendHealth()[0].GetMessage(), `pool "b"`) {
		t.Errorf("NodeGetStorageHealth = %v, want only pool b", sh.GetBackendHealth())
	}

	// ListVolumes carries the legacy condition per entry.
	lv, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range lv.GetEntries() {
		abnormal, msg := testdisk.LegacyCondition(t, e.GetStatus())
		if want := e.GetVolume().GetVolumeContext()["dhpp.io/pool"] == "b"; abnormal != want {
			t.Errorf("ListVolumes %s: abnormal %v (%q), want %v", e.GetVolume().GetVolumeId(), abnormal, msg, want)
		}
	}
}

// TestControllerListVolumeHealth pages through the abnormal volumes only.
func TestControllerListVolumeHealth(t *testing.T) {
	health := fakeHealth{}
	d, ids := twoPoolDriver(t, health)
	ctx := context.Background()

	list := func(max int32) ([]string, int) {
		t.Helper()
		var got []string
		pages, token := 0, ""
		for {
			r, err := d.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{MaxEntries: max, StartingToken: token})
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, e := range r.GetEntries() {
				got = append(got, e.GetVolumeId())
			}
			if token = r.GetNextToken(); token == "" {
				return got, pages
			}
			if pages > 10 {
				t.Fatal("paging does not end")
			}
		}
	}
	tests := []struct {
		name      string
		fenced    []string
		max       int32
		want      []string
		wantPages int
	}{
		{name: "nothing fenced", max: 0, want: nil, wantPages: 1},
		{name: "one pool, one page", fenced: []string{"b"}, max: 0, want: ids["b"], wantPages: 1},
		{name: "one pool, pages of 2", fenced: []string{"b"}, max: 2, want: ids["b"], wantPages: 2},
		{name: "both pools, pages of 4", fenced: []string{"a", "b"}, max: 4, want: append(append([]string{}, ids["a"]...), ids["b"]...), wantPages: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clear(health)
			for _, p := range tt.fenced {
				health[p] = "fenced for the test"
			}
			got, pages := list(tt.max)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || pages != tt.wantPages {
				t.Fatalf("got %v in %d pages, want %v in %d", got, pages, tt.want, tt.wantPages)
			}
		})
	}

	bad := []struct {
		name string
		req  *csi.ControllerListVolumeHealthRequest
		code codes.Code
	}{
		{"negative max_entries", &csi.ControllerListVolumeHealthRequest{MaxEntries: -1}, codes.InvalidArgument},
		{"foreign token", &csi.ControllerListVolumeHealthRequest{StartingToken: "not-a-token"}, codes.Aborted},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := d.ControllerListVolumeHealth(ctx, tt.req); status.Code(err) != tt.code {
				t.Fatalf("err = %v, want %s", err, tt.code)
			}
		})
	}
}
