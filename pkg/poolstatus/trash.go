package poolstatus

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// trashDir is where pkg/node moves deleted volumes (docs/design.md), and
// recordFile the record each keeps.
const (
	trashDir   = ".dhpp/trash"
	recordFile = "volume.json"
	// maxRecordBytes bounds what is read of a record: a real one is < 1 KiB.
	maxRecordBytes = 64 << 10
)

// trashedRecord is the part of a volume record the trash listing shows.
type trashedRecord struct {
	ID            string            `json:"id"`
	CSIName       string            `json:"csiName"`
	Name          string            `json:"name"`
	CapacityBytes int64             `json:"capacityBytes"`
	Labels        map[string]string `json:"labels"`
}

// ReadTrash lists the trash of the pool at poolPath, read-only and through
// an os.Root on the pool (nothing planted on the disk leads outside it).
// PurgeAt is the deletion time plus retention, when the purger may remove
// an entry. A pool without a trash directory has an empty trash.
func ReadTrash(poolPath string, retention time.Duration) (v1.Trash, error) {
	root, err := os.OpenRoot(poolPath)
	if err != nil {
		return v1.Trash{}, err
	}
	defer root.Close()
	dir, err := root.Open(trashDir)
	if errors.Is(err, fs.ErrNotExist) {
		return v1.Trash{}, nil
	}
	if err != nil {
		return v1.Trash{}, err
	}
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return v1.Trash{}, err
	}
	var t v1.Trash
	for _, n := range names {
		deleted, ok := parseTrashName(n)
		if !ok {
			continue // not an entry pkg/node made; pkg/node leaves it alone too
		}
		e := v1.TrashEntry{Entry: n, DeletedAt: metav1.NewTime(deleted.UTC()), PurgeAt: metav1.NewTime(deleted.Add(retention).UTC())}
		if r, err := readRecord(root, path.Join(trashDir, n, recordFile)); err == nil {
			e.VolumeID, e.SizeBytes = r.ID, r.CapacityBytes
			e.PV, e.Namespace, e.Claim = r.Labels["pv"], r.Labels["namespace"], r.Labels["pvc"]
			if e.PV == "" {
				e.PV = r.CSIName
			}
		}
		t.Entries++
		t.Bytes += e.SizeBytes
		t.Items = append(t.Items, e)
	}
	sort.Slice(t.Items, func(i, j int) bool {
		a, b := t.Items[i], t.Items[j]
		if !a.DeletedAt.Equal(&b.DeletedAt) {
			return a.DeletedAt.After(b.DeletedAt.Time)
		}
		return a.Entry < b.Entry
	})
	if len(t.Items) > v1.MaxTrashItems {
		t.Items = t.Items[:v1.MaxTrashItems]
	}
	if t.Entries > 0 {
		t.Size = Bytes(t.Bytes)
	}
	return t, nil
}

// parseTrashName reads the deletion time from "<name>@<unix nanos>".
func parseTrashName(entry string) (time.Time, bool) {
	i := strings.LastIndexByte(entry, '@')
	if i <= 0 {
		return time.Time{}, false
	}
	ns, err := strconv.ParseInt(entry[i+1:], 10, 64)
	if err != nil || ns <= 0 {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}

func readRecord(root *os.Root, rel string) (*trashedRecord, error) {
	f, err := root.Open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, maxRecordBytes))
	if err != nil {
		return nil, err
	}
	r := &trashedRecord{}
	if err := json.Unmarshal(buf, r); err != nil {
		return nil, err
	}
	return r, nil
}
