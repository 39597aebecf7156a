package node

import (
	"reflect"
	"testing"

	mount "k8s.io/mount-utils"
)

func TestMountUsers(t *testing.T) {
	// The pool /mnt/data/dhpp lives on device 8:16 mounted at /mnt/data
	// (the whole filesystem, root "/"). Pods' target paths are bind mounts
	// of volume directories: same device, root = path inside the filesystem.
	infos := []mount.MountInfo{
		{ID: 1, Major: 8, Minor: 1, Root: "/", MountPoint: "/"},
		{ID: 2, Major: 8, Minor: 16, Root: "/", MountPoint: "/mnt/data"},
		{ID: 3, Major: 8, Minor: 16, Root: "/dhpp/volumes/pvc-a/data", MountPoint: "/var/lib/kubelet/pods/1/volumes/x/mount"},
		{ID: 4, Major: 8, Minor: 16, Root: "/dhpp/volumes/pvc-a/data/sub", MountPoint: "/var/lib/kubelet/pods/2/volumes/x/mount"},
		{ID: 5, Major: 8, Minor: 16, Root: "/dhpp/volumes/pvc-ab/data", MountPoint: "/var/lib/kubelet/pods/3/volumes/x/mount"},
		{ID: 6, Major: 8, Minor: 32, Root: "/dhpp/volumes/pvc-a/data", MountPoint: "/other/disk"}, // another device, same path
		{ID: 7, Major: 7, Minor: 0, Root: "/", MountPoint: "/mnt/data/dhpp/volumes/pvc-a/data/inner"},
	}
	got := mountUsers(infos, "/mnt/data/dhpp", "/mnt/data/dhpp/volumes/pvc-a")
	want := []string{"/mnt/data/dhpp/volumes/pvc-a/data/inner", "/var/lib/kubelet/pods/1/volumes/x/mount", "/var/lib/kubelet/pods/2/volumes/x/mount"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("mountUsers = %q\nwant %q", got, want)
	}
	// A pool reached through a bind mount of a subdirectory: the root of the
	// pool's mount is a path inside the filesystem, not "/".
	infos = []mount.MountInfo{
		{ID: 1, Major: 8, Minor: 1, Root: "/", MountPoint: "/"},
		{ID: 2, Major: 8, Minor: 16, Root: "/exported", MountPoint: "/pool"},
		{ID: 3, Major: 8, Minor: 16, Root: "/exported/volumes/v/data", MountPoint: "/target"},
	}
	if got := mountUsers(infos, "/pool", "/pool/volumes/v"); !reflect.DeepEqual(got, []string{"/target"}) {
		t.Fatalf("bind-mounted pool: mountUsers = %q", got)
	}
	if got := mountUsers(infos, "/pool", "/pool/volumes/w"); len(got) != 0 {
		t.Fatalf("unused volume reported in use: %q", got)
	}
}

// TestBindsOf: a volume's publish targets are the mounts of the pool's
// filesystem whose root is exactly its data directory; a subdirectory, a
// neighbour with a common prefix, or another device are not.
func TestBindsOf(t *testing.T) {
	infos := []mount.MountInfo{
		{ID: 1, Major: 8, Minor: 1, Root: "/", MountPoint: "/"},
		{ID: 2, Major: 8, Minor: 16, Root: "/", MountPoint: "/mnt/data"},
		{ID: 3, Major: 8, Minor: 16, Root: "/dhpp/volumes/a/data", MountPoint: "/pods/1/mount"},
		{ID: 4, Major: 8, Minor: 16, Root: "/dhpp/volumes/a/data/sub", MountPoint: "/pods/2/mount"},
		{ID: 5, Major: 8, Minor: 16, Root: "/dhpp/volumes/ab/data", MountPoint: "/pods/3/mount"},
		{ID: 6, Major: 8, Minor: 32, Root: "/dhpp/volumes/a/data", MountPoint: "/pods/4/mount"},
		{ID: 7, Major: 8, Minor: 16, Root: "/dhpp/volumes/a/data", MountPoint: "/pods/5/mount"},
	}
	got := bindsOf(infos, "/mnt/data/dhpp/volumes/a/data")
	if want := []string{"/pods/1/mount", "/pods/5/mount"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("bindsOf = %q, want %q", got, want)
	}
	if mi := mountAt(infos, "/pods/1/mount"); mi == nil || mi.ID != 3 {
		t.Fatalf("mountAt = %+v", mi)
	}
	if mi := mountAt(infos, "/pods"); mi != nil {
		t.Fatalf("mountAt(not a mount point) = %+v", mi)
	}
}
