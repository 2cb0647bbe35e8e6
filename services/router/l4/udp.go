package l4

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plinth-os/plinth/services/router/backend"
)

// UDPRoute says where the datagrams of one UDP port go. A proxy keeps
// its own copy: changing a route after SetRoute has no effect.
type UDPRoute struct {
	// ID names the route in logs.
	ID string
	// Service names the backend set sessions go to.
	Service string
	// IdleTimeout ends a session after no datagram either way for this
	// long; default 60s.
	IdleTimeout time.Duration
}

func (r UDPRoute) withDefaults() *UDPRoute {
	if r.IdleTimeout <= 0 {
		r.IdleTimeout = 60 * time.Second
	}
	return &r
}

// DefaultMaxSessions is the sessions a UDP port keeps when
// UDPProxy.MaxSessions is 0: each holds a socket, so a flood of new
// client addresses must not take every file descriptor.
const DefaultMaxSessions = 65536

// UDPProxy relays the datagrams of the UDP sockets it serves to the
// backends of its route. A session is a client address: its first
// datagram picks a backend and opens a socket connected to it, its
// later datagrams go to the same backend, and the backend's replies go
// back to the client from the address the client sent to. Backends must
// be set before Serve; the zero value of the rest is ready to use.
type UDPProxy struct {
	Backends *backend.Sets
	// MaxSessions bounds the sessions of each port served; datagrams
	// that would start one more are dropped. 0 means DefaultMaxSessions.
	MaxSessions int
	// Logger gets a line when sessions cannot be opened; nil means
	// slog.Default().
	Logger *slog.Logger

	route   atomic.Pointer[UDPRoute]
	dropped atomic.Uint64
	openLog limitedLog

	mu     sync.Mutex
	closed bool
	ports  map[*udpPort]struct{}
}

// SetRoute makes r the route for sessions started from now on; live
// sessions keep their backend. A nil r drops datagrams that would start
// a session.
func (p *UDPProxy) SetRoute(r *UDPRoute) {
	if r == nil {
		p.route.Store(nil)
		return
	}
	p.route.Store(r.withDefaults())
}

// Serve relays the datagrams that arrive on conn, one port, until the
// proxy is closed, then returns ErrClosed. It closes conn and ends the
// port's sessions when it returns. conn may be bound to a wildcard
// address: replies are sent from each datagram's destination address.
func (p *UDPProxy) Serve(conn *net.UDPConn) error {
	defer conn.Close()
	pt, err := newUDPPort(p, conn)
	if err != nil {
		return err
	}
	if !p.addPort(pt) {
		return ErrClosed
	}
	defer p.removePort(pt)
	defer pt.endAll()
	buf := make([]byte, maxDatagram)
	oob := make([]byte, oobSize)
	for {
		n, oobn, _, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if p.isClosed() {
				return ErrClosed
			}
			return fmt.Errorf("read on %s: %w", conn.LocalAddr(), err)
		}
		pt.forward(buf[:n], oob[:oobn], from)
	}
}

// Close stops serving: it closes the sockets being served and ends
// every session, releasing their backends.
func (p *UDPProxy) Close() error {
	p.mu.Lock()
	p.closed = true
	ports := make([]*udpPort, 0, len(p.ports))
	for pt := range p.ports {
		ports = append(ports, pt)
	}
	p.mu.Unlock()
	var errs []error
	for _, pt := range ports {
		if err := pt.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
		pt.endAll()
	}
	return errors.Join(errs...)
}

// Sessions is the number of live sessions over all ports.
func (p *UDPProxy) Sessions() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for pt := range p.ports {
		n += pt.len()
	}
	return n
}

// Dropped is the number of datagrams dropped because they would have
// started a session beyond MaxSessions.
func (p *UDPProxy) Dropped() uint64 { return p.dropped.Load() }

func (p *UDPProxy) maxSessions() int {
	if p.MaxSessions > 0 {
		return p.MaxSessions
	}
	return DefaultMaxSessions
}

func (p *UDPProxy) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

func (p *UDPProxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *UDPProxy) addPort(pt *udpPort) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	if p.ports == nil {
		p.ports = map[*udpPort]struct{}{}
	}
	p.ports[pt] = struct{}{}
	return true
}

func (p *UDPProxy) removePort(pt *udpPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.ports, pt)
}
