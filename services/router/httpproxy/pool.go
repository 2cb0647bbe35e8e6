package httpproxy

import (
	"bufio"
	"net"
	"sync"
	"time"
)

// upstream is one connection to a backend, kept between requests.
type upstream struct {
	c    net.Conn
	br   *bufio.Reader
	addr string
	// idleSince is when it went back to the pool.
	idleSince time.Time
	// reused is set when it served a request before; a failure before
	// any response byte may then be a keep-alive close that raced us.
	reused bool
}

func (u *upstream) close() {
	u.c.Close()
	putReader(u.br)
	u.br = nil
}

// pool keeps idle backend connections per address, most recently used
// first, so that a burst reuses warm connections and the cold ones
// age out.
type pool struct {
	maxIdle     int
	idleTimeout time.Duration

	mu        sync.Mutex
	idle      map[string][]*upstream
	lastSweep time.Time
}

// staleCheckAfter is the idle time after which a connection is checked
// before reuse: a backend may have closed it (its keep-alive timeout), and
// a request without a retry (a POST) would fail on it. Busy connections
// are reused sooner and cost no check.
const staleCheckAfter = time.Second

// get returns an idle connection to addr, nil when there is none.
func (p *pool) get(addr string, now time.Time) *upstream {
	for {
		u := p.pop(addr, now)
		if u == nil || now.Sub(u.idleSince) < staleCheckAfter {
			return u
		}
		// The last request's read deadline may have passed.
		u.c.SetReadDeadline(time.Time{})
		if peek(u.c) == peerQuiet {
			return u
		}
		u.close()
	}
}

// pop takes the most recently used idle connection to addr.
func (p *pool) pop(addr string, now time.Time) *upstream {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweepLocked(now)
	list, ok := p.idle[addr]
	if !ok {
		return nil
	}
	for len(list) > 0 {
		u := list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		if now.Sub(u.idleSince) < p.idleTimeout {
			p.idle[addr] = list
			return u
		}
		// Older ones are below it: all have expired.
		for _, o := range list {
			o.close()
		}
		u.close()
		list = list[:0]
	}
	p.idle[addr] = list
	return nil
}

// put keeps u for the next request to its address.
func (p *pool) put(u *upstream, now time.Time) {
	u.idleSince = now
	u.reused = true
	p.mu.Lock()
	if p.idle == nil {
		p.idle = map[string][]*upstream{}
	}
	list := p.idle[u.addr]
	if len(list) >= p.maxIdle {
		p.mu.Unlock()
		u.close()
		return
	}
	p.idle[u.addr] = append(list, u)
	p.mu.Unlock()
}

// sweepLocked closes expired connections of every address now and then,
// so that addresses no longer routed to do not keep connections.
func (p *pool) sweepLocked(now time.Time) {
	if now.Sub(p.lastSweep) < p.idleTimeout {
		return
	}
	p.lastSweep = now
	for addr, list := range p.idle {
		n := 0
		for _, u := range list {
			if now.Sub(u.idleSince) < p.idleTimeout {
				list[n] = u
				n++
			} else {
				u.close()
			}
		}
		clear(list[n:])
		if n == 0 {
			delete(p.idle, addr)
		} else {
			p.idle[addr] = list[:n]
		}
	}
}

// closeAll closes every idle connection.
func (p *pool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, list := range p.idle {
		for _, u := range list {
			u.close()
		}
		delete(p.idle, addr)
	}
}

func dialUpstream(addr string, timeout time.Duration) (*upstream, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &upstream{c: c, br: getReader(c), addr: addr}, nil
}

const readerSize = 16 << 10

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readerSize) }}

func getReader(r net.Conn) *bufio.Reader {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) {
	if br == nil {
		return
	}
	br.Reset(nil)
	readers.Put(br)
}
