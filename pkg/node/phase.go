package node

import "fmt"

// Phase is where a volume is in its life. The phase is not only a field in
// the volume's record: it is also where the volume's directory is, and
// recovery reads it from there.
//
//	Creating  .dhpp/tmp/<name>.<nonce>   never seen by callers; recovery moves it to trash
//	Ready     volumes/<name>             record says Ready
//	Resizing  volumes/<name>             record says Resizing with TargetBytes; a retried
//	                                     expand completes it
//	Deleted   .dhpp/trash/<name>@<nanos> purged after the retention
type Phase string

const (
	PhaseCreating Phase = "Creating"
	PhaseReady    Phase = "Ready"
	PhaseResizing Phase = "Resizing"
	PhaseDeleted  Phase = "Deleted"
)

// transitions lists every allowed phase change; anything else is a bug or a
// corrupted record, and is refused rather than guessed at.
var transitions = map[Phase][]Phase{
	PhaseCreating: {PhaseReady, PhaseDeleted},
	PhaseReady:    {PhaseResizing, PhaseDeleted},
	PhaseResizing: {PhaseReady, PhaseResizing, PhaseDeleted},
	PhaseDeleted:  nil,
}

// Transition checks that a volume may go from phase from to phase to.
func Transition(from, to Phase) error {
	for _, p := range transitions[from] {
		if p == to {
			return nil
		}
	}
	return fmt.Errorf("volume cannot go from phase %q to %q", from, to)
}

// Live reports whether a volume in this phase is visible to callers and
// counts against the pool's capacity.
func (p Phase) Live() bool { return p == PhaseReady || p == PhaseResizing }
