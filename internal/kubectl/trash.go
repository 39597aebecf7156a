package kubectl

import (
	"context"
	"fmt"
	"sort"
	"time"

	v1 "github.com/dhpp-io/dhpp/pkg/apis/dhpp/v1alpha1"
	"github.com/dhpp-io/dhpp/pkg/poolstatus"
)

// TrashItem is one row of `kubectl dhpp trash`.
type TrashItem struct {
	Node string `json:"node"`
	Pool string `json:"pool"`
	v1.TrashEntry
}

func trash(ctx context.Context, env Env, o Options) error {
	ps, err := listPools(ctx, env, o.Node)
	if err != nil {
		return err
	}
	if o.Node != "" && len(ps) == 0 {
		return fmt.Errorf("no pools published for node %q: is dhpp's driver running there? (kubectl dhpp doctor)", o.Node)
	}
	var items []TrashItem
	truncated := 0
	for _, p := range ps {
		for _, e := range p.Status.Trash.Items {
			items = append(items, TrashItem{Node: p.Spec.Node, Pool: p.Spec.Pool, TrashEntry: e})
		}
		truncated += p.Status.Trash.Entries - len(p.Status.Trash.Items)
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].DeletedAt.After(items[j].DeletedAt.Time) })
	if o.Output == "json" || o.Output == "yaml" {
		return structured(env.Out, o.Output, map[string]any{"items": items})
	}
	if len(items) == 0 {
		fmt.Fprintln(env.Out, "The trash is empty: no deleted volume or snapshot is waiting to be purged.")
		return nil
	}
	// NAME is the claim of a volume, the VolumeSnapshot of a snapshot.
	headers := []string{"NODE", "POOL", "KIND", "ENTRY", "NAMESPACE", "NAME", "SIZE", "DELETED", "PURGED"}
	if o.Output == "wide" {
		headers = append(headers, "PV", "ID", "SOURCE", "DELETED-AT", "PURGE-AT")
	}
	now := env.Now()
	rows := make([][]string, 0, len(items))
	for _, it := range items {
		rows = append(rows, trashRow(it, now, o.Output == "wide"))
	}
	if err := table(env.Out, headers, rows); err != nil {
		return err
	}
	if truncated > 0 {
		fmt.Fprintf(env.Out, "(%d older entries not listed: each pool publishes its newest %d)\n", truncated, v1.MaxTrashItems)
	}
	return nil
}

func trashRow(it TrashItem, now time.Time, wide bool) []string {
	size := ""
	if it.SizeBytes > 0 {
		size = poolstatus.Bytes(it.SizeBytes)
	}
	purge := age(now, it.PurgeAt.Time)
	if !it.PurgeAt.After(now) {
		purge = "due" // the next purge round removes it
	}
	kind, name, id := v1.KindOf(it.TrashEntry), it.Claim, it.VolumeID
	if kind == v1.TrashKindSnapshot {
		name, id = it.VolumeSnapshot, it.SnapshotID
	}
	r := []string{it.Node, it.Pool, kind, it.Entry, it.Namespace, name, size, age(now, it.DeletedAt.Time) + " ago", purge}
	if wide {
		r = append(r, it.PV, id, it.SourceVolumeID, it.DeletedAt.UTC().Format("2006-01-02T15:04:05Z"), it.PurgeAt.UTC().Format("2006-01-02T15:04:05Z"))
	}
	return r
}
