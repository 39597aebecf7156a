package node

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// snapshotDir reads every regular file and symlink under dir, so a test
// can prove that nothing of a quarantined volume was changed.
func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			out[rel] = "-> " + target
			return err
		case info.Mode().IsRegular():
			b, err := os.ReadFile(p)
			out[rel] = string(b)
			return err
		default:
			out[rel] = info.Mode().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rewriteRecord edits a volume's record as JSON, bypassing writeRecord.
func rewriteRecord(t *testing.T, pool, name string, edit func(v map[string]any)) {
	t.Helper()
	file := filepath.Join(pool, "volumes", name, recordFile)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	edit(v)
	if b, err = json.Marshal(v); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeRaw(t *testing.T, file string, data []byte) {
	t.Helper()
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestQuarantinedRecords damages the record of one volume in each way a
// disk or a person can, restarts, and checks that the volume is
// quarantined: not listed, every request on it refused with ErrQuarantined
// naming the record and the problem, its name reserved, and nothing of it
// changed. A neighbouring volume is unaffected throughout.
func TestQuarantinedRecords(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, pool, record string)
		// problem is in the error; "" means the volume must NOT be quarantined.
		problem string
	}{
		{"empty", func(t *testing.T, _, record string) { writeRaw(t, record, nil) }, "is empty"},
		{"whitespace", func(t *testing.T, _, record string) { writeRaw(t, record, []byte("\n \n")) }, "is empty"},
		{"truncated", func(t *testing.T, _, record string) {
			b, _ := os.ReadFile(record)
			writeRaw(t, record, b[:len(b)/2])
		}, "is not a valid record (unexpected end of JSON input)"},
		{"garbage", func(t *testing.T, _, record string) { writeRaw(t, record, []byte("\x00\xff\x13garbage")) }, "is not a valid record"},
		{"wrong JSON type", func(t *testing.T, _, record string) { writeRaw(t, record, []byte(`["a list"]`)) }, "is not a valid record"},
		{"missing", func(t *testing.T, _, record string) {
			if err := os.Remove(record); err != nil {
				t.Fatal(err)
			}
		}, "cannot be read (no such file or directory)"},
		{"unreadable: a directory", func(t *testing.T, _, record string) {
			if err := os.Remove(record); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(record, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "cannot be read"},
		{"wrong id", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["id"] = "node-a/default/neighbour" })
		}, `has volume ID "node-a/default/neighbour", but where it lies its ID is "node-a/default/victim"`},
		{"wrong node", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["id"] = "node-b/default/victim" })
		}, `has volume ID "node-b/default/victim"`},
		{"wrong pool", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["pool"], v["id"] = "fast", "node-a/fast/victim" })
		}, `names pool "fast", but lies in pool "default"`},
		{"wrong name", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["name"] = "neighbour" })
		}, `names volume "neighbour", but lies in directory "victim"`},
		{"csi name of another key", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["csiName"] = strings.Repeat("x", 120) })
		}, "which is not stored under directory"},
		{"future version", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["version"] = 2 })
		}, "has version 2, this driver reads version 1"},
		{"phase Creating", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["phase"] = "Creating" })
		}, `has phase "Creating"`},
		{"unknown backend", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["backend"] = "zfs" })
		}, `names backend "zfs"`},
		{"no size", func(t *testing.T, pool, _ string) {
			rewriteRecord(t, pool, "victim", func(v map[string]any) { v["capacityBytes"] = 0 })
		}, "has size 0 bytes"},
		{"symlink to another volume", func(t *testing.T, pool, _ string) {
			dir := filepath.Join(pool, "volumes/victim")
			if err := os.Rename(dir, filepath.Join(t.TempDir(), "moved")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("neighbour", dir); err != nil {
				t.Fatal(err)
			}
		}, `names volume "neighbour", but lies in directory "victim"`},
		// A crash inside writeRecord, before its rename, leaves a torn
		// temporary file next to the whole record: not a reason to doubt it.
		{"leftover torn volume.json.tmp", func(t *testing.T, _, record string) {
			writeRaw(t, record+".tmp", []byte(`{"version":1,"id":"node-a/def`))
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			pool := t.TempDir()
			clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			m := dirManager(t, pool, clock)
			victim := mustCreate(t, m, "victim", mib)
			mustCreate(t, m, "neighbour", mib)
			if err := os.WriteFile(filepath.Join(pool, "volumes/victim/data/precious"), []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			m.Close()
			tt.damage(t, pool, filepath.Join(pool, "volumes/victim", recordFile))
			before := snapshotDir(t, filepath.Join(pool, "volumes"))

			m = dirManager(t, pool, clock)
			var listed []string
			for _, v := range m.ListVolumes() {
				listed = append(listed, v.Name)
			}
			if tt.problem == "" {
				if !slices.Equal(listed, []string{"neighbour", "victim"}) || len(m.Pools()[0].Quarantined()) != 0 {
					t.Fatalf("listed %v, quarantined %v; want both volumes live", listed, m.Pools()[0].Quarantined())
				}
				return
			}
			if !slices.Equal(listed, []string{"neighbour"}) {
				t.Fatalf("listed %v, want only the neighbour", listed)
			}
			q := m.Pools()[0].Quarantined()
			if len(q) != 1 || q[0].Name != "victim" || !strings.Contains(q[0].Problem, tt.problem) {
				t.Fatalf("quarantined = %+v, want victim with %q", q, tt.problem)
			}
			record := filepath.Join(pool, "volumes/victim", recordFile)
			calls := []struct {
				name string
				call func() error
			}{
				{"CreateVolume", func() error {
					_, err := m.CreateVolume(ctx, CreateRequest{Name: "victim", RequiredBytes: mib, Mode: 0o777})
					return err
				}},
				{"DeleteVolume", func() error { return m.DeleteVolume(ctx, victim.ID) }},
				{"GetVolume", func() error { _, err := m.GetVolume(victim.ID); return err }},
				{"CheckExpansion", func() error { _, err := m.CheckExpansion(victim.ID, 2*mib, 0); return err }},
				{"ExpandVolume", func() error {
					_, err := m.ExpandVolume(ctx, ExpandRequest{VolumeID: victim.ID, RequiredBytes: 2 * mib})
					return err
				}},
				{"StageVolume", func() error {
					return m.StageVolume(ctx, StageRequest{VolumeID: victim.ID, StagingPath: filepath.Join(t.TempDir(), "s"), AccessType: AccessMount})
				}},
				{"UnstageVolume", func() error { return m.UnstageVolume(ctx, victim.ID, filepath.Join(t.TempDir(), "s")) }},
				{"PublishVolume", func() error {
					return m.PublishVolume(ctx, PublishRequest{VolumeID: victim.ID, TargetPath: filepath.Join(t.TempDir(), "t"), AccessType: AccessMount})
				}},
				{"VolumeStats", func() error { _, _, err := m.VolumeStats(victim.ID, "", ""); return err }},
				{"UnpublishVolume", func() error { return m.UnpublishVolume(ctx, victim.ID, filepath.Join(t.TempDir(), "t")) }},
			}
			for _, c := range calls {
				err := c.call()
				if !errors.Is(err, ErrQuarantined) || !strings.Contains(err.Error(), record) || !strings.Contains(err.Error(), tt.problem) {
					t.Errorf("%s = %v; want ErrQuarantined naming %s and %q", c.name, err, record, tt.problem)
				}
			}
			// Another pool's lookup, the purge and a recheck change nothing.
			m.RecheckQuarantined()
			clock.Add(time.Hour)
			if _, err := m.PurgeTrash(ctx, time.Minute); err != nil {
				t.Fatal(err)
			}
			if after := snapshotDir(t, filepath.Join(pool, "volumes")); !mapsEqual(before, after) {
				t.Fatalf("a quarantined volume was changed:\nbefore %v\nafter  %v", before, after)
			}
			if _, err := m.GetVolume("node-a/default/neighbour"); err != nil {
				t.Fatalf("neighbour: %v", err)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestQuarantineRelease: the two ways an operator releases a quarantined
// volume take effect at the next recheck (every trash-purge round), with
// no restart: a repaired record makes it live again, a directory moved
// out of volumes/ frees the name.
func TestQuarantineRelease(t *testing.T) {
	ctx := context.Background()
	pool := t.TempDir()
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := dirManager(t, pool, clock)
	fixed := mustCreate(t, m, "fixed", mib)
	moved := mustCreate(t, m, "moved", mib)
	m.Close()
	good, err := os.ReadFile(filepath.Join(pool, "volumes/fixed", recordFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"fixed", "moved"} {
		writeRaw(t, filepath.Join(pool, "volumes", name, recordFile), []byte("{"))
	}
	m = dirManager(t, pool, clock)
	if n := len(m.Pools()[0].Quarantined()); n != 2 {
		t.Fatalf("%d quarantined, want 2", n)
	}
	capBefore, _ := m.Pools()[0].Capacity()

	// Still broken: a recheck changes nothing.
	m.RecheckQuarantined()
	if n := len(m.Pools()[0].Quarantined()); n != 2 {
		t.Fatalf("%d quarantined after a recheck of broken records, want 2", n)
	}
	writeRaw(t, filepath.Join(pool, "volumes/fixed", recordFile), good)
	if err := os.Rename(filepath.Join(pool, "volumes/moved"), filepath.Join(t.TempDir(), "kept-by-operator")); err != nil {
		t.Fatal(err)
	}
	m.RecheckQuarantined()
	if q := m.Pools()[0].Quarantined(); len(q) != 0 {
		t.Fatalf("still quarantined after release: %+v", q)
	}
	if v, err := m.GetVolume(fixed.ID); err != nil || v.CapacityBytes != mib {
		t.Fatalf("repaired volume = %+v, %v", v, err)
	}
	if c, _ := m.Pools()[0].Capacity(); c.Provisioned != capBefore.Provisioned+mib {
		t.Fatalf("provisioned %d, want the repaired volume counted (%d + %d)", c.Provisioned, capBefore.Provisioned, mib)
	}
	// The moved one's name is free: deleting it is a no-op, creating makes a new one.
	if err := m.DeleteVolume(ctx, moved.ID); err != nil {
		t.Fatalf("DeleteVolume of a released name: %v", err)
	}
	mustCreate(t, m, "moved", mib)
}
