package placement

// placeOmni places f on every alive, uncordoned host that matches it and
// has none, and reports the hosts where it does not fit. Cordoned,
// draining and unreachable hosts keep the one they have.
func (p *planner) placeOmni(f *formation) {
	var short []*host
	for _, h := range p.hosts {
		if f.perHost[h.idx] > 0 || !f.matches[h.idx] || !h.open() {
			continue
		}
		if !h.fits(f) {
			short = append(short, h)
			continue
		}
		p.add(f, h, f.Job, nil)
	}
	if len(short) > 0 {
		p.shortfall(f, len(short), resourceReason(f, short))
	}
}
