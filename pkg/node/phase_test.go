package node

import "testing"

func TestTransition(t *testing.T) {
	all := []Phase{PhaseCreating, PhaseReady, PhaseResizing, PhaseDeleted}
	allowed := map[[2]Phase]bool{
		{PhaseCreating, PhaseReady}:    true,
		{PhaseCreating, PhaseDeleted}:  true,
		{PhaseReady, PhaseResizing}:    true,
		{PhaseReady, PhaseDeleted}:     true,
		{PhaseResizing, PhaseReady}:    true,
		{PhaseResizing, PhaseResizing}: true, // a retried expand to a new target
		{PhaseResizing, PhaseDeleted}:  true,
	}
	for _, from := range all {
		for _, to := range all {
			err := Transition(from, to)
			if want := allowed[[2]Phase{from, to}]; (err == nil) != want {
				t.Errorf("Transition(%s, %s) = %v, allowed = %v", from, to, err, want)
			}
		}
	}
	for _, p := range all {
		if want := p == PhaseReady || p == PhaseResizing; p.Live() != want {
			t.Errorf("%s.Live() = %v", p, p.Live())
		}
	}
}
