package mountinfo

import (
	"strings"

	mount "k8s.io/mount-utils"
)

// Propagation types of a mount, as findmnt's PROPAGATION column and
// mount(8) name them.
const (
	Shared     = "shared"
	Slave      = "slave"
	Private    = "private"
	Unbindable = "unbindable"
)

// Propagation is mi's propagation type, from the optional fields of its
// mountinfo line (proc(5)): "shared:N" is a peer group member, which
// propagates both ways (also when it is a slave as well, "master:M");
// "master:M" alone receives from its master and sends nothing back;
// "unbindable" is private and cannot be bind-mounted; no field, private.
func Propagation(mi *mount.MountInfo) string {
	slave, unbindable := false, false
	for _, f := range mi.OptionalFields {
		switch {
		case strings.HasPrefix(f, "shared:"):
			return Shared
		case strings.HasPrefix(f, "master:"):
			slave = true
		case f == "unbindable":
			unbindable = true
		}
	}
	switch {
	case slave:
		return Slave
	case unbindable:
		return Unbindable
	}
	return Private
}
