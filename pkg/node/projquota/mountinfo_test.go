package projquota

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/dhpp-io/dhpp/pkg/node/mountinfo"
)

const sampleMountinfo = `22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l
30 22 7:3 / /mnt/xfs rw,relatime shared:5 - xfs /dev/loop3 rw,attr2,inode64,logbufs=8,logbsize=32k,prjquota
31 22 7:3 /dhpp /var/lib/dhpp\040pool rw,relatime - xfs /dev/loop3 rw,attr2,inode64,prjquota
32 22 253:1 / /mnt/ext4 rw,relatime master:1 shared:9 - ext4 /dev/vdb rw,prjquota
33 22 253:2 / /mnt/plain rw,relatime - ext4 /dev/vdc rw
34 22 253:3 / /mnt/acct rw,relatime - xfs /dev/vdd rw,attr2,pqnoenforce
`

func TestFindMountByDev(t *testing.T) {
	cases := []struct {
		name         string
		major, minor uint32
		want         Mount
		found        bool
		prjquota     bool
	}{
		{"xfs prjquota, first of two bind mounts", 7, 3, Mount{MountPoint: "/mnt/xfs", FSType: "xfs", Source: "/dev/loop3",
			Options: []string{"rw", "attr2", "inode64", "logbufs=8", "logbsize=32k", "prjquota"}}, true, true},
		{"ext4 with optional fields", 253, 1, Mount{MountPoint: "/mnt/ext4", FSType: "ext4", Source: "/dev/vdb", Options: []string{"rw", "prjquota"}}, true, true},
		{"ext4 without quota", 253, 2, Mount{MountPoint: "/mnt/plain", FSType: "ext4", Source: "/dev/vdc", Options: []string{"rw"}}, true, false},
		{"xfs accounting only", 253, 3, Mount{MountPoint: "/mnt/acct", FSType: "xfs", Source: "/dev/vdd", Options: []string{"rw", "attr2", "pqnoenforce"}}, true, false},
		{"absent", 8, 1, Mount{}, false, false},
	}
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte(sampleMountinfo), 0o600); err != nil {
		t.Fatal(err)
	}
	infos, err := mountinfo.Read(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := findMountByDev(infos, c.major, c.minor)
			if ok != c.found || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("findMountByDev = %+v, %v; want %+v, %v", got, ok, c.want, c.found)
			}
			if got.ProjectQuotaOption() != c.prjquota {
				t.Errorf("ProjectQuotaOption = %v, want %v", got.ProjectQuotaOption(), c.prjquota)
			}
		})
	}
}
