package placement

import (
	"container/heap"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// planner is one Plan's working state: the inputs sorted and linked to
// each other, and the decision so far.
type planner struct {
	hosts    []*host      // by ID
	forms    []*formation // by name
	slots    []*slot      // the existing placements, by key
	decision Decision
}

// host is a Host with what its placements reserve so far in this Plan.
type host struct {
	Host
	idx       int   // in planner.hosts
	milliCPUs int64 // CPUs in thousandths, so that sums are exact
	memUsed   int64
	milliUsed int64
	movable   []*slot // its count-formation placements, by key: what may move
}

// formation is a Formation with its placements and where they are.
type formation struct {
	Formation
	milliCPUs   int64
	constraints string  // "key=value, …" sorted, for reasons
	matches     []bool  // by host index; shared, read only
	perHost     []int   // placements not removed, by host index
	slots       []*slot // existing placements, by key
	prefix      string  // "<Job>-"
	taken       []int   // n of each "<Job>-<n>" given to Plan, sorted; nextJob consumes it
	nextN       int     // every n below it is taken
}

// slot is an existing placement and what this Plan decided about it.
type slot struct {
	Placement
	key         string
	host        *host      // nil when the host is unknown
	form        *formation // nil when the formation was deleted
	removed     bool
	replaces    *slot // the leaving placement this one replaces
	replacement *slot // the placement that replaces this leaving one
}

// moving returns the placement that is taking over from s, if s is
// still there and being moved (see leaving).
func (s *slot) moving() *slot {
	if s.removed || s.replacement == nil || s.replacement.removed {
		return nil
	}
	return s.replacement
}

// standsIn reports whether s is a move's replacement whose old
// placement is still there: the two are one instance until it finishes.
func (s *slot) standsIn() bool {
	return !s.removed && s.replaces != nil && !s.replaces.removed
}

func newPlanner(formations []Formation, hosts []Host, placements []Placement) *planner {
	p := &planner{}
	hostByID := make(map[string]*host, len(hosts))
	for _, h := range hosts {
		p.hosts = append(p.hosts, &host{Host: h, milliCPUs: milli(h.CPUs)})
	}
	slices.SortFunc(p.hosts, func(a, b *host) int { return strings.Compare(a.ID, b.ID) })
	for i, h := range p.hosts {
		h.idx = i
		hostByID[h.ID] = h
	}

	formByName := make(map[string]*formation, len(formations))
	// Formations often share constraints; each set is matched once.
	matchesOf := map[string][]bool{}
	for _, f := range formations {
		pf := &formation{
			Formation:   f,
			milliCPUs:   milli(f.CPUs),
			constraints: describe(f.Constraints),
			perHost:     make([]int, len(p.hosts)),
			prefix:      f.Job + "-",
			nextN:       1,
		}
		key := matchKey(f.Constraints)
		if pf.matches = matchesOf[key]; pf.matches == nil {
			pf.matches = make([]bool, len(p.hosts))
			for i, h := range p.hosts {
				pf.matches[i] = h.matches(f.Constraints)
			}
			matchesOf[key] = pf.matches
		}
		p.forms = append(p.forms, pf)
		formByName[f.Name] = pf
	}
	slices.SortFunc(p.forms, func(a, b *formation) int { return strings.Compare(a.Name, b.Name) })

	slots := make([]slot, len(placements)) // one allocation, not one each
	p.slots = make([]*slot, len(placements))
	for i, pl := range placements {
		slots[i] = slot{Placement: pl, key: pl.Key()}
		p.slots[i] = &slots[i]
	}
	slices.SortFunc(p.slots, func(a, b *slot) int { return strings.Compare(a.key, b.key) })
	slotByKey := make(map[string]*slot, len(p.slots))
	for _, s := range p.slots {
		slotByKey[s.key] = s
		s.host, s.form = hostByID[s.Host], formByName[s.Formation]
		if s.host != nil {
			s.host.memUsed += s.MemoryBytes
			s.host.milliUsed += milli(s.CPUs)
		}
		if s.form == nil {
			continue
		}
		s.form.slots = append(s.form.slots, s)
		s.form.takeN(s.Job)
		if s.host != nil {
			s.form.perHost[s.host.idx]++
			if !s.form.Omni {
				s.host.movable = append(s.host.movable, s)
			}
		}
	}
	for _, f := range p.forms {
		slices.Sort(f.taken)
	}
	p.linkMoves(slotByKey)
	return p
}

// linkMoves pairs each move's placements. A move is two placements of
// one count formation, the old one leaving its host; anything else
// that names a placement it replaces, a chain of moves included, is an
// ordinary placement.
func (p *planner) linkMoves(slotByKey map[string]*slot) {
	for _, s := range p.slots {
		old := slotByKey[s.Replaces]
		if old == nil || old == s || s.form == nil || s.form.Omni || old.form != s.form ||
			!old.leaving() ||
			old.replaces != nil || old.replacement != nil || s.replaces != nil || s.replacement != nil {
			continue
		}
		old.replacement, s.replaces = s, old
	}
}

// removeGone removes the placements whose host failed or is unknown,
// whose formation was deleted, and the omni placements on hosts that no
// longer match their formation.
func (p *planner) removeGone() {
	for _, s := range p.slots {
		switch {
		case s.host == nil:
			p.remove(s, fmt.Sprintf("host %s is not a member of the cluster", s.Host))
		case s.host.Status == Failed:
			p.remove(s, fmt.Sprintf("host %s failed", s.Host))
		case s.form == nil:
			p.remove(s, fmt.Sprintf("formation %s was deleted", s.Formation))
		case s.form.Omni && !s.form.matches[s.host.idx]:
			p.remove(s, fmt.Sprintf("host %s no longer matches %s", s.Host, s.form.constraints))
		}
	}
}

func (p *planner) remove(s *slot, reason string) {
	s.removed = true
	if s.form != nil && s.host != nil {
		s.form.perHost[s.host.idx]--
	}
	p.decision.Remove = append(p.decision.Remove, Removal{Placement: s.Placement, Reason: reason})
}

// place puts up to n new instances of count formation f on the eligible
// hosts, each on the one with the fewest instances of f, then the
// largest share of its memory free, then the lowest ID, and returns how
// many it placed. A heap keeps that order as instances land, so placing n costs
// n·log(hosts) rather than n·hosts.
func (p *planner) place(f *formation, n int, replaces *slot) int {
	q := &queue[*host]{before: func(a, b *host) bool {
		if ca, cb := f.perHost[a.idx], f.perHost[b.idx]; ca != cb {
			return ca < cb
		}
		if fa, fb := a.freeFraction(), b.freeFraction(); fa != fb {
			return fa > fb
		}
		return a.ID < b.ID
	}}
	for _, h := range p.hosts {
		if h.open() && f.matches[h.idx] && h.fits(f) {
			q.items = append(q.items, h)
		}
	}
	heap.Init(q)
	placed := 0
	for ; placed < n && q.Len() > 0; placed++ {
		h := q.items[0]
		p.add(f, h, f.nextJob(), replaces)
		if h.fits(f) {
			heap.Fix(q, 0)
		} else {
			heap.Pop(q)
		}
	}
	return placed
}

func (p *planner) add(f *formation, h *host, job string, replaces *slot) {
	pl := Placement{Formation: f.Name, Host: h.ID, Job: job, MemoryBytes: f.MemoryBytes, CPUs: f.CPUs}
	if replaces != nil {
		pl.Replaces = replaces.key
	}
	h.memUsed += f.MemoryBytes
	h.milliUsed += f.milliCPUs
	f.perHost[h.idx]++
	p.decision.Place = append(p.decision.Place, pl)
}

// cordoned covers draining, which implies it.
func (h *host) cordoned() bool { return h.Cordoned || h.Draining }

// open reports whether h takes new placements.
func (h *host) open() bool { return h.Status == Alive && !h.cordoned() }

func (h *host) matches(constraints map[string]string) bool {
	for k, v := range constraints {
		if k == "role" {
			if !slices.Contains(h.Roles, v) {
				return false
			}
		} else if h.Tags[k] != v {
			return false
		}
	}
	return true
}

func (h *host) memFree() int64 { return h.MemoryBytes - h.memUsed }
func (h *host) cpuFree() int64 { return h.milliCPUs - h.milliUsed }

func (h *host) memFits(f *formation) bool {
	return h.MemoryBytes == 0 || f.MemoryBytes <= 0 || h.memFree() >= f.MemoryBytes
}

func (h *host) cpuFits(f *formation) bool {
	return h.milliCPUs == 0 || f.milliCPUs <= 0 || h.cpuFree() >= f.milliCPUs
}

func (h *host) fits(f *formation) bool { return h.memFits(f) && h.cpuFits(f) }

// freeFraction is the share of h's memory that is free; 1 when unknown.
func (h *host) freeFraction() float64 {
	if h.MemoryBytes == 0 {
		return 1
	}
	return float64(h.memFree()) / float64(h.MemoryBytes)
}

// takeN marks the n of job, if it is one of f's "<Job>-<n>", as taken.
// Removed placements keep theirs for the whole Plan: one may still run
// until the scheduler stops it, and no new one should share its name.
func (f *formation) takeN(job string) {
	if rest, ok := strings.CutPrefix(job, f.prefix); ok && !f.Omni {
		if n, err := strconv.Atoi(rest); err == nil && n >= 1 {
			f.taken = append(f.taken, n)
		}
	}
}

// nextJob returns "<Job>-<n>" with the smallest n not taken. The n it
// gives out only grow, so one pass over the sorted taken ones suffices.
func (f *formation) nextJob() string {
	for len(f.taken) > 0 && f.taken[0] <= f.nextN {
		if f.taken[0] == f.nextN {
			f.nextN++
		}
		f.taken = f.taken[1:]
	}
	n := f.nextN
	f.nextN++
	return f.prefix + strconv.Itoa(n)
}

func milli(cpus float64) int64 { return int64(math.Round(cpus * 1000)) }

func describe(constraints map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(constraints)) {
		parts = append(parts, k+"="+constraints[k])
	}
	return strings.Join(parts, ", ")
}

// matchKey is the same for two sets of constraints only when they are
// equal, which their descriptions do not promise ("a=b, c=d" could be
// one value).
func matchKey(constraints map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(constraints)) {
		b.WriteString(k + "\x00" + constraints[k] + "\x00")
	}
	return b.String()
}

// queue is a heap whose top is the item that before puts first.
type queue[T any] struct {
	items  []T
	before func(a, b T) bool
}

func (q *queue[T]) Len() int           { return len(q.items) }
func (q *queue[T]) Less(i, j int) bool { return q.before(q.items[i], q.items[j]) }
func (q *queue[T]) Swap(i, j int)      { q.items[i], q.items[j] = q.items[j], q.items[i] }
func (q *queue[T]) Push(x any)         { q.items = append(q.items, x.(T)) }

func (q *queue[T]) Pop() any {
	last := q.items[len(q.items)-1]
	q.items = q.items[:len(q.items)-1]
	return last
}
