package placement

import "fmt"

// A count-formation placement leaves its host when the host drains or no
// longer matches the formation's constraints (its labels or roles
// changed, or the constraints did). It moves the way a drain moves
// things, one at a time per host: a replacement is placed elsewhere, and
// the old placement is removed only once the replacement is healthy, so
// that no formation runs short meanwhile. Omni placements stay on a
// draining host (it still wants them) and are removed from a host that
// no longer matches (removeGone).

// leaving reports whether s must move off its host.
func (s *slot) leaving() bool {
	return !s.removed && s.host != nil && s.form != nil && !s.form.Omni &&
		(s.host.Draining || !s.form.matches[s.host.idx])
}

// from says what s is leaving, for reasons.
func (s *slot) from() string {
	if s.host.Draining {
		return "draining host " + s.host.ID
	}
	return fmt.Sprintf("host %s, which no longer matches %s", s.host.ID, s.form.constraints)
}

// finishMoves removes each leaving placement whose replacement is
// healthy.
func (p *planner) finishMoves() {
	for _, s := range p.slots {
		if r := s.moving(); r != nil && r.Healthy {
			p.remove(s, fmt.Sprintf("moved off %s: replaced by %s", s.from(), r.key))
		}
	}
}

// startMoves places a replacement for the first leaving placement, by
// key, on each host that has no move in flight. When it fits nowhere,
// the placement stays and its formation reports a shortfall.
func (p *planner) startMoves() {
	for _, h := range p.hosts {
		var next *slot
		busy := false
		for _, s := range h.movable {
			if s.moving() != nil {
				busy = true
				break
			}
			// A replacement that landed here before the host began to drain
			// moves once its own move has finished.
			if next == nil && s.leaving() && !s.standsIn() {
				next = s
			}
		}
		if busy || next == nil {
			continue
		}
		if p.place(next.form, 1, next) == 0 {
			p.shortfall(next.form, 1, fmt.Sprintf("cannot move %s off %s: %s", next.key, next.from(), p.why(next.form)))
		}
	}
}
