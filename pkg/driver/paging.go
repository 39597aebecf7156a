package driver

import (
	"sort"

	"github.com/dhpp-io/dhpp/pkg/node"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// page cuts one page out of items, which are sorted by volume ID (id
// returns it), for the list RPCs. The token is the ID to continue from, so
// it stays valid when that volume is deleted in between; a malformed token
// gets Aborted and a negative max_entries InvalidArgument, as the spec says.
func page[T any](items []T, id func(T) string, startingToken string, maxEntries int32) (entries []T, nextToken string, err error) {
	return pageBy(items, id, func(s string) error { _, err := node.ParseVolumeID(s); return err }, startingToken, maxEntries)
}

// pageBy is page for items sorted by an ID that parseID validates (a
// snapshot ID for ListSnapshots).
func pageBy[T any](items []T, id func(T) string, parseID func(string) error, startingToken string, maxEntries int32) (entries []T, nextToken string, err error) {
	if maxEntries < 0 {
		return nil, "", status.Errorf(codes.InvalidArgument, "max_entries is negative (%d)", maxEntries)
	}
	start := 0
	if startingToken != "" {
		if err := parseID(startingToken); err != nil {
			return nil, "", status.Errorf(codes.Aborted, "starting_token %q is not one this driver issued: %v", startingToken, err)
		}
		start = sort.Search(len(items), func(i int) bool { return id(items[i]) >= startingToken })
	}
	end := len(items)
	if n := int(maxEntries); n > 0 && start+n < end {
		end = start + n
	}
	if end < len(items) {
		nextToken = id(items[end])
	}
	return items[start:end], nextToken, nil
}
