package driver

import (
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node"
)

func TestParseParameters(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]string
		want    Parameters
		wantErr string
	}{
		{name: "none", in: nil, want: Parameters{Mode: DefaultMode}},
		{name: "pool and mode", in: map[string]string{"pool": "fast", "mode": "0750"}, want: Parameters{Pool: "fast", Mode: 0o750}},
		{name: "three digit mode", in: map[string]string{"mode": "700"}, want: Parameters{Mode: 0o700}},
		{name: "provisioner metadata kept as labels", in: map[string]string{
			"csi.storage.k8s.io/pvc/name": "data-es-0", "csi.storage.k8s.io/pvc/namespace": "search",
			"csi.storage.k8s.io/pv/name": "pvc-1", "csi.storage.k8s.io/fstype": "ext4",
		}, want: Parameters{Mode: DefaultMode, Labels: map[string]string{"pvc": "data-es-0", "namespace": "search", "pv": "pvc-1"}}},
		{name: "unknown key", in: map[string]string{"pool": "a", "size": "1"}, wantErr: `unknown parameter(s) "size"`},
		{name: "typo with space", in: map[string]string{"pool ": "a"}, wantErr: `unknown parameter(s) "pool "`},
		{name: "bad pool", in: map[string]string{"pool": "../x"}, wantErr: "DNS label"},
		{name: "empty pool", in: map[string]string{"pool": ""}, wantErr: "pool name is empty"},
		{name: "mode not octal", in: map[string]string{"mode": "0789"}, wantErr: "not octal"},
		{name: "mode setuid", in: map[string]string{"mode": "4755"}, wantErr: "beyond 0777"},
		{name: "mode too short", in: map[string]string{"mode": "77"}, wantErr: "3 or 4 octal digits"},
		{name: "mode symbolic", in: map[string]string{"mode": "rwx"}, wantErr: "not octal"},
		{name: "preallocate", in: map[string]string{"preallocate": "true"}, want: Parameters{Mode: DefaultMode, Preallocate: true}},
		{name: "preallocate off", in: map[string]string{"preallocate": "false"}, want: Parameters{Mode: DefaultMode}},
		{name: "preallocate not a bool", in: map[string]string{"preallocate": "yes"}, wantErr: `"preallocate" must be "true" or "false", not "yes"`},
		{name: "node loss policy is the controller's", in: map[string]string{"nodeLossPolicy": "recreate"}, want: Parameters{Mode: DefaultMode}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseParameters(tt.in)
			if tt.wantErr != "" {
				wantInvalid(t, err, tt.wantErr)
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// FuzzParseParameters: any accepted parameter set yields a valid pool name
// and a plain permission; any refusal is InvalidArgument.
func FuzzParseParameters(f *testing.F) {
	f.Add("pool", "default", "mode", "0750")
	f.Add("mode", "4777", "pool", "../etc")
	f.Add("csi.storage.k8s.io/pvc/name", "x", "other", "y")
	f.Add("pool", "a\x00", "mode", "")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		p, err := ParseParameters(map[string]string{k1: v1, k2: v2})
		if err != nil {
			if !errors.Is(err, node.ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		if p.Pool != "" && node.ValidatePoolName(p.Pool) != nil {
			t.Fatalf("accepted invalid pool %q", p.Pool)
		}
		if p.Mode&^fs.ModePerm != 0 {
			t.Fatalf("accepted mode with special bits: %v", p.Mode)
		}
	})
}

func TestParseSnapshotParameters(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]string
		want    map[string]string
		wantErr string
	}{
		{name: "none", in: nil, want: nil},
		{name: "snapshotter metadata kept as labels", in: map[string]string{
			"csi.storage.k8s.io/volumesnapshot/name":        "db-snap",
			"csi.storage.k8s.io/volumesnapshot/namespace":   "prod",
			"csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-1",
		}, want: map[string]string{node.SnapshotLabelName: "db-snap", node.SnapshotLabelNamespace: "prod", node.SnapshotLabelContent: "snapcontent-1"}},
		{name: "other Kubernetes keys accepted, not kept", in: map[string]string{
			"csi.storage.k8s.io/volumesnapshot/name": "db-snap", "csi.storage.k8s.io/snapshotter-secret-name": "s",
		}, want: map[string]string{node.SnapshotLabelName: "db-snap"}},
		{name: "empty metadata not kept", in: map[string]string{"csi.storage.k8s.io/volumesnapshot/namespace": ""}, want: nil},
		{name: "a StorageClass key", in: map[string]string{"pool": "fast"}, wantErr: `unknown VolumeSnapshotClass parameter(s) "pool"`},
		{name: "unknown keys named, sorted", in: map[string]string{"z": "1", "a": "2", "csi.storage.k8s.io/volumesnapshot/name": "s"},
			wantErr: `"a", "z"; dhpp takes no snapshot parameters of its own, only keys under "csi.storage.k8s.io/"`},
		{name: "prefix without its slash", in: map[string]string{"csi.storage.k8s.io": "x"}, wantErr: `"csi.storage.k8s.io"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSnapshotParameters(tt.in)
			if tt.wantErr != "" {
				wantInvalid(t, err, tt.wantErr)
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// wantInvalid fails the test unless err contains want and wraps
// node.ErrInvalid (what errors.go turns into InvalidArgument).
func wantInvalid(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want one containing %q", err, want)
	}
	if !errors.Is(err, node.ErrInvalid) {
		t.Fatalf("err %v does not wrap ErrInvalid (it must become InvalidArgument)", err)
	}
}
