// Package backend holds the router's view of where a service's work can
// go: one Backend per instance address, with a count of the work it has
// in flight (HTTP requests, TCP connections, UDP sessions), and per
// service the set of backends new work may go to.
//
// It owns selection (round robin, by ID for sticky sessions, the leader)
// and the counts that drains wait on; it does not know routes,
// protocols or the controller.
package backend

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
)

// Backend is one instance of a service. Its counters outlive the sets
// that list it, so that work in flight is still counted after the
// instance left the set (draining, unhealthy, gone).
type Backend struct {
	// ID is the instance's ID ("<host>/<job>/<service>").
	ID string
	// Addr is where it answers, ip:port.
	Addr string

	active atomic.Int64
	total  atomic.Uint64
}

// Acquire counts one unit of work (a request, a connection, a session)
// as in flight on b; Release ends it.
func (b *Backend) Acquire() {
	b.active.Add(1)
	b.total.Add(1)
}

// Release ends one unit of work that Acquire counted.
func (b *Backend) Release() { b.active.Add(-1) }

// Active is the work in flight on b.
func (b *Backend) Active() int64 { return b.active.Load() }

// Total is how much work b has been given since the router started.
func (b *Backend) Total() uint64 { return b.total.Load() }

// Set is the backends of one service that new work may go to: healthy
// and not draining. A Set is immutable once built; a change of the
// service's instances builds a new one.
type Set struct {
	Service  string
	Backends []*Backend
	// Leader is the service's leader, when it is in Backends.
	Leader *Backend

	next atomic.Uint32
}

// Pick returns the next backend in round-robin order, skipping those in
// tried (a retry's earlier choices); nil when none is left.
func (s *Set) Pick(tried ...*Backend) *Backend {
	if s == nil || len(s.Backends) == 0 {
		return nil
	}
	n := uint32(len(s.Backends))
	start := s.next.Add(1)
	for i := range n {
		b := s.Backends[(start+i)%n]
		if !slices.Contains(tried, b) {
			return b
		}
	}
	return nil
}

// ByID returns the backend with the given instance ID, or nil: a sticky
// session's backend when it can still take new work.
func (s *Set) ByID(id string) *Backend {
	if s == nil {
		return nil
	}
	for _, b := range s.Backends {
		if b.ID == id {
			return b
		}
	}
	return nil
}

// Pool keeps one Backend per instance ID and address, so that a rebuilt
// Set shares the counters of the one it replaces.
type Pool struct {
	mu sync.Mutex
	m  map[string]*Backend // by ID + " " + Addr
}

// Get returns the pool's backend for id at addr, making it if needed.
func (p *Pool) Get(id, addr string) *Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]*Backend{}
	}
	k := id + " " + addr
	b := p.m[k]
	if b == nil {
		b = &Backend{ID: id, Addr: addr}
		p.m[k] = b
	}
	return b
}

// Prune forgets the backends for which keep is false and that have no
// work in flight, so the pool does not grow with every instance ever
// seen.
func (p *Pool) Prune(keep func(*Backend) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	maps.DeleteFunc(p.m, func(_ string, b *Backend) bool { return !keep(b) && b.Active() == 0 })
}

// All returns every backend the pool holds.
func (p *Pool) All() []*Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Collect(maps.Values(p.m))
}

// Sets is the current Set of every service, replaced as a whole.
type Sets struct {
	p atomic.Pointer[map[string]*Set]
}

// Lookup returns service's set, nil when the service has none.
func (s *Sets) Lookup(service string) *Set {
	m := s.p.Load()
	if m == nil {
		return nil
	}
	return (*m)[service]
}

// Replace makes m the sets that Lookup answers from.
func (s *Sets) Replace(m map[string]*Set) { s.p.Store(&m) }

// All returns every service's set (nil before the first Replace); the
// map must not be changed.
func (s *Sets) All() map[string]*Set {
	m := s.p.Load()
	if m == nil {
		return nil
	}
	return *m
}
