package node

import (
	"errors"
	"testing"
)

func TestResolveSize(t *testing.T) {
	const Mi, Gi = 1 << 20, 1 << 30
	tests := []struct {
		name                          string
		required, limit, def, minSize int64
		want                          int64
		wantErr                       error
	}{
		{"nothing set gives default", 0, 0, Gi, Mi, Gi, nil},
		{"only limit below default", 0, 100 * Mi, Gi, Mi, 100 * Mi, nil},
		{"required exact", 10 * Mi, 0, Gi, Mi, 10 * Mi, nil},
		{"required rounded up to MiB", 10*Mi + 1, 0, Gi, Mi, 11 * Mi, nil},
		{"required below minimum raised", 1, 0, Gi, 16 * Mi, 16 * Mi, nil},
		{"required equals limit", 5 * Mi, 5 * Mi, Gi, Mi, 5 * Mi, nil},
		{"rounding beyond limit", 5*Mi + 1, 5*Mi + 100, Gi, Mi, 0, ErrOutOfRange},
		{"minimum beyond limit", 1, Mi, Gi, 16 * Mi, 0, ErrOutOfRange},
		{"limit below required", 10 * Mi, 5 * Mi, Gi, Mi, 0, ErrInvalid},
		{"negative required", -1, 0, Gi, Mi, 0, ErrInvalid},
		{"negative limit", 0, -1, Gi, Mi, 0, ErrInvalid},
		{"huge required saturates", 1<<63 - 1, 0, Gi, Mi, 1<<63 - 1 - (1<<63-1)%Mi, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveSize(tt.required, tt.limit, tt.def, tt.minSize)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ResolveSize = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func TestFitsRange(t *testing.T) {
	tests := []struct {
		size, required, limit int64
		want                  bool
	}{
		{10, 10, 0, true}, {10, 5, 10, true}, {10, 11, 0, false}, {10, 0, 9, false}, {10, 0, 0, true},
	}
	for _, tt := range tests {
		if got := FitsRange(tt.size, tt.required, tt.limit); got != tt.want {
			t.Errorf("FitsRange(%d, %d, %d) = %v", tt.size, tt.required, tt.limit, got)
		}
	}
}

func TestComputeCapacity(t *testing.T) {
	tests := []struct {
		name                               string
		total, free, provisioned, promised int64
		wantAvail                          int64
	}{
		{"empty pool", 100, 100, 0, 0, 100},
		{"thin volumes, nothing written", 100, 100, 60, 60, 40},
		{"volumes half written", 100, 70, 60, 30, 40},
		{"foreign data on the disk", 100, 30, 20, 20, 10},
		{"foreign data and written volumes", 100, 20, 40, 10, 10},
		{"full disk never negative", 100, 5, 50, 40, 0},
		{"over-reported usage capped by provisioned", 100, 90, 60, 0, 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := computeCapacity(tt.total, tt.free, tt.provisioned, tt.promised)
			if c.Available != tt.wantAvail {
				t.Fatalf("Available = %d, want %d (%+v)", c.Available, tt.wantAvail, c)
			}
		})
	}
}
