package placement

import "fmt"

// A drain moves a host's count-formation placements one at a time: a
// replacement is placed elsewhere, and the old placement is removed only
// once the replacement is healthy, so that no formation runs short while
// the host empties. Omni placements stay: the host still wants them.

// finishMoves removes each placement on a draining host whose
// replacement is healthy.
func (p *planner) finishMoves() {
	for _, h := range p.hosts {
		if !h.Draining {
			continue
		}
		for _, s := range h.movable {
			if r := s.moving(); r != nil && r.Healthy {
				p.remove(s, fmt.Sprintf("drained from %s: replaced by %s", h.ID, r.key))
			}
		}
	}
}

// startMoves places a replacement for the first placement, by key, on
// each draining host that has no move in flight. When it fits nowhere,
// the placement stays and its formation reports a shortfall.
func (p *planner) startMoves() {
	for _, h := range p.hosts {
		if !h.Draining {
			continue
		}
		var next *slot
		busy := false
		for _, s := range h.movable {
			if s.moving() != nil {
				busy = true
				break
			}
			// A replacement that landed here before the host began to drain
			// moves once its own move has finished.
			if next == nil && !s.removed && !s.standsIn() {
				next = s
			}
		}
		if busy || next == nil {
			continue
		}
		if p.place(next.form, 1, next) == 0 {
			p.shortfall(next.form, 1, fmt.Sprintf("cannot move %s off draining host %s: %s", next.key, h.ID, p.why(next.form)))
		}
	}
}
