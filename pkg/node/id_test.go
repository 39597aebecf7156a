package node

import (
	"errors"
	"strings"
	"testing"
)

func TestParseVolumeID(t *testing.T) {
	tests := []struct {
		in      string
		want    VolumeID
		wantErr string
	}{
		{in: "node-1/default/pvc-0b4e", want: VolumeID{"node-1", "default", "pvc-0b4e"}},
		{in: "Worker.Example.com/fast-1/a_b.c-d", want: VolumeID{"Worker.Example.com", "fast-1", "a_b.c-d"}},
		{in: "", wantErr: "not of the form"},
		{in: "node/pool", wantErr: "not of the form"},
		{in: "node/pool/name/extra", wantErr: "not of the form"},
		{in: "/pool/name", wantErr: "node ID is empty"},
		{in: "node//name", wantErr: "pool name is empty"},
		{in: "node/pool/", wantErr: "volume name is empty"},
		{in: "node/pool/..", wantErr: "may only contain"},
		{in: "node/pool/.hidden", wantErr: "may only contain"},
		{in: "node/../name", wantErr: "DNS label"},
		{in: "node/Pool/name", wantErr: "DNS label"},
		{in: "node/pool/na\x00me", wantErr: "may only contain"},
		{in: "node/pool/name@123", wantErr: "may only contain"},
		{in: "node/pool/na me", wantErr: "may only contain"},
		{in: "-node/pool/name", wantErr: "DNS subdomain"},
		{in: "node/pool/" + strings.Repeat("a", 120), wantErr: "limit is 128"},
		{in: strings.Repeat("n", 60) + "/pool/" + strings.Repeat("a", 70), wantErr: "volume ID is 136 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseVolumeID(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseVolumeID(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseVolumeID(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Fatalf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

// FuzzParseVolumeID checks that whatever the input, a parsed ID round-trips
// and its name can never step outside a directory.
func FuzzParseVolumeID(f *testing.F) {
	for _, s := range []string{"n/p/v", "node-1/default/pvc-1", "../../etc", "n/p/..", "n/p/a/b", "n\x00/p/v", "n/p/v@1", "/abs/path", strings.Repeat("x", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseVolumeID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if id.String() != s {
			t.Fatalf("round trip %q -> %q", s, id.String())
		}
		for _, part := range []string{id.Node, id.Pool, id.Name} {
			if part == "" || part == "." || part == ".." || strings.ContainsAny(part, "/\x00") || strings.HasPrefix(part, ".") {
				t.Fatalf("unsafe component %q accepted in %q", part, s)
			}
		}
		if len(s) > MaxIDLength {
			t.Fatalf("over-long ID accepted: %d bytes", len(s))
		}
	})
}

func TestVolumeKey(t *testing.T) {
	long := strings.Repeat("a", 128)
	tests := []struct {
		node, pool, name string
		wantHashed       bool
	}{
		{"node-1", "default", "pvc-0b4e7c1a-7d2e-4a55-9a5e-1c9b4a3f2e10", false},
		{"node-1", "default", long, true},
		{strings.Repeat("n", 60), "pool", strings.Repeat("v", 62), false}, // exactly 128
		{strings.Repeat("n", 60), "pool", strings.Repeat("v", 63), true},
	}
	for _, tt := range tests {
		key := volumeKey(tt.node, tt.pool, tt.name)
		if hashed := key != tt.name; hashed != tt.wantHashed {
			t.Errorf("volumeKey(%d-byte name) = %q, hashed = %v", len(tt.name), key, hashed)
		}
		id := VolumeID{Node: tt.node, Pool: tt.pool, Name: key}
		if err := id.Validate(); err != nil {
			t.Errorf("key %q gives an invalid ID: %v", key, err)
		}
		if again := volumeKey(tt.node, tt.pool, tt.name); again != key {
			t.Errorf("volumeKey is not deterministic: %q vs %q", key, again)
		}
	}
}
