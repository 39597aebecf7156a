package raid

import (
	"testing"

	"github.com/dhpp-io/dhpp/internal/testdisk"
)

type fakeArrays []PoolArrays

func (f fakeArrays) PoolArrays() []PoolArrays { return f }

func TestArrayCollector(t *testing.T) {
	member := func(name, state string) ArrayMember { return ArrayMember{Name: name, State: state} }
	src := fakeArrays{
		{Pool: "plain"},
		{Pool: "optimal", Arrays: []Array{{Name: "md0", Level: "raid10", State: "clean", RaidDisks: 4, SyncAction: "idle",
			Members: []ArrayMember{member("vda", "in_sync"), member("vdb", "in_sync"), member("vdc", "in_sync"), member("vdd", "in_sync,write_mostly")}}}},
		{Pool: "failed", Arrays: []Array{{Name: "md1", Level: "raid10", State: "active", RaidDisks: 4, Degraded: 1, SyncAction: "idle",
			Members: []ArrayMember{member("vda", "in_sync"), member("vdb", "faulty"), member("vdc", "in_sync"), member("vdd", "in_sync")}}}},
		{Pool: "rebuilding", Arrays: []Array{
			{Name: "md2", Level: "raid1", State: "clean", RaidDisks: 2, SyncAction: "idle", Members: []ArrayMember{member("sda", "in_sync"), member("sdb", "in_sync")}},
			{Name: "md3", Level: "raid1", State: "clean", RaidDisks: 2, Degraded: 1, SyncAction: "recover", Members: []ArrayMember{member("sdc", "in_sync"), member("sdd", "spare")}},
		}},
	}
	mfs := testdisk.Gather(t, NewCollector(src))
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
		absent bool
	}{
		{"dhpp_pool_degraded", map[string]string{"pool": "plain"}, 0, false},
		{"dhpp_pool_degraded", map[string]string{"pool": "optimal"}, 0, false},
		{"dhpp_pool_degraded", map[string]string{"pool": "failed"}, 1, false},
		{"dhpp_pool_degraded", map[string]string{"pool": "rebuilding"}, 1, false},
		{"dhpp_pool_array_degraded_devices", map[string]string{"pool": "plain"}, 0, true},
		{"dhpp_pool_array_degraded_devices", map[string]string{"pool": "optimal", "array": "md0", "level": "raid10"}, 0, false},
		{"dhpp_pool_array_degraded_devices", map[string]string{"pool": "failed", "array": "md1"}, 1, false},
		{"dhpp_pool_array_members", map[string]string{"pool": "optimal", "array": "md0", "state": "in_sync"}, 4, false},
		{"dhpp_pool_array_members", map[string]string{"pool": "optimal", "array": "md0", "state": "faulty"}, 0, false},
		{"dhpp_pool_array_members", map[string]string{"pool": "failed", "array": "md1", "state": "in_sync"}, 3, false},
		{"dhpp_pool_array_members", map[string]string{"pool": "failed", "array": "md1", "state": "faulty"}, 1, false},
		{"dhpp_pool_array_members", map[string]string{"pool": "rebuilding", "array": "md3", "state": "spare"}, 1, false},
		{"dhpp_pool_array_members", map[string]string{"pool": "rebuilding", "array": "md2", "state": "other"}, 0, false},
		{"dhpp_pool_array_rebuilding", map[string]string{"pool": "rebuilding", "array": "md3"}, 1, false},
		{"dhpp_pool_array_rebuilding", map[string]string{"pool": "rebuilding", "array": "md2"}, 0, false},
		{"dhpp_pool_array_rebuilding", map[string]string{"pool": "failed", "array": "md1"}, 0, false},
	}
	for _, tt := range tests {
		got, ok := testdisk.Gauge(t, mfs, tt.name, tt.labels)
		if ok == tt.absent || got != tt.want {
			t.Errorf("%s%v = %v (present %v), want %v (present %v)", tt.name, tt.labels, got, ok, tt.want, !tt.absent)
		}
	}
	// Every class is reported for every array, zeros included, so an
	// alert on faulty > 0 has a series before the first failure.
	if n := len(mfs["dhpp_pool_array_members"].GetMetric()); n != 4*len(MemberClasses) {
		t.Errorf("dhpp_pool_array_members has %d series, want %d", n, 4*len(MemberClasses))
	}
}

func TestRebuilding(t *testing.T) {
	for action, want := range map[string]bool{"recover": true, "resync": true, "reshape": true, "idle": false, "check": false, "repair": false, "frozen": false, "": false} {
		if got := rebuilding(action); got != want {
			t.Errorf("rebuilding(%q) = %v, want %v", action, got, want)
		}
	}
}
