package placement

import (
	"container/heap"
	"fmt"
)

// instances returns f's placements that count towards Count, by key. A
// move's old placement and its replacement are one instance,
// counted where the old one is, so that the replacement is not an extra.
func (f *formation) instances() []*slot {
	var out []*slot
	for _, s := range f.slots {
		if !s.removed && !s.standsIn() {
			out = append(out, s)
		}
	}
	return out
}

// scaleDown removes f's instances beyond Count: from cordoned hosts and
// hosts that no longer match first, then from the host with the most,
// then the highest key.
func (p *planner) scaleDown(f *formation) {
	inst := f.instances()
	excess := len(inst) - max(f.Count, 0)
	if excess <= 0 {
		return
	}
	// Per host, its instances by key; the heap recounts after each removal
	// so that what remains stays spread.
	type group struct {
		host  *host
		slots []*slot
	}
	q := &queue[*group]{before: func(a, b *group) bool {
		if ca, cb := a.host.cordoned() || !f.matches[a.host.idx], b.host.cordoned() || !f.matches[b.host.idx]; ca != cb {
			return ca
		}
		if len(a.slots) != len(b.slots) {
			return len(a.slots) > len(b.slots)
		}
		return a.slots[len(a.slots)-1].key > b.slots[len(b.slots)-1].key
	}}
	byHost := map[*host]*group{}
	for _, s := range inst {
		g := byHost[s.host]
		if g == nil {
			g = &group{host: s.host}
			byHost[s.host] = g
			q.items = append(q.items, g)
		}
		g.slots = append(g.slots, s)
	}
	heap.Init(q)
	reason := fmt.Sprintf("formation %s is scaled to %d", f.Name, max(f.Count, 0))
	for range excess {
		g := q.items[0]
		s := g.slots[len(g.slots)-1]
		g.slots = g.slots[:len(g.slots)-1]
		if len(g.slots) == 0 {
			heap.Pop(q)
		} else {
			heap.Fix(q, 0)
		}
		// Removing only one of a move's pair would leave the instance.
		if r := s.moving(); r != nil {
			p.remove(r, reason)
		}
		p.remove(s, reason)
	}
}

// scaleUp places f's missing instances, and reports those that do not fit.
func (p *planner) scaleUp(f *formation) {
	missing := max(f.Count, 0) - len(f.instances())
	if missing <= 0 {
		return
	}
	if placed := p.place(f, missing, nil); placed < missing {
		p.shortfall(f, missing-placed, p.why(f))
	}
}
