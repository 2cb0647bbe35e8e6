package l4

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/services/router/backend"
)

// TCPRoute says where one TCP listener's connections go. A proxy keeps
// its own copy: changing a route after SetRoute has no effect.
type TCPRoute struct {
	// ID names the route in logs.
	ID string
	// Service names the backend set connections go to.
	Service string
	// Leader sends connections only to the set's leader (singleton
	// databases); while the set has none, connections are closed.
	Leader bool
	// TLS, when set, terminates TLS with this config (its certificates
	// and SNI selection); backends get plaintext.
	TLS *tls.Config
	// HandshakeTimeout bounds the TLS handshake; default 10s.
	HandshakeTimeout time.Duration
	// ProxyProtocol sends a PROXY protocol v2 header with the client's
	// address and the address it connected to, before the client's
	// first byte.
	ProxyProtocol bool
	// ConnectTimeout bounds each dial to a backend; default 5s.
	ConnectTimeout time.Duration
	// IdleTimeout closes both sides after no bytes either way for this
	// long; 0 never does.
	IdleTimeout time.Duration
}

func (r TCPRoute) withDefaults() *TCPRoute {
	if r.HandshakeTimeout <= 0 {
		r.HandshakeTimeout = 10 * time.Second
	}
	if r.ConnectTimeout <= 0 {
		r.ConnectTimeout = 5 * time.Second
	}
	return &r
}

// dialAttempts is how many backends a connection tries before it is
// given up: enough to get past an instance that just died, few enough
// that a client is not kept waiting through a whole outage.
const dialAttempts = 3

// keepAlive is set on both sides so that a peer that vanished (host
// power loss, NAT timeout) does not hold a connection and its backend's
// count for ever.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}

// TCPProxy relays the connections of the listeners it serves to the
// backends of its route. Backends must be set before Serve; the zero
// value of the rest is ready to use.
type TCPProxy struct {
	Backends *backend.Sets
	// Logger gets a line for each connection that could not be
	// relayed; nil means slog.Default().
	Logger *slog.Logger

	route      atomic.Pointer[TCPRoute]
	connectLog limitedLog

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*tcpConn]struct{}
	// wg counts the connections being handled. Add happens under mu
	// while !closed, so Shutdown's Wait never races with it.
	wg sync.WaitGroup
}

// SetRoute makes r the route for connections accepted from now on;
// open connections keep the backend they have. A nil r closes new
// connections.
func (p *TCPProxy) SetRoute(r *TCPRoute) {
	if r == nil {
		p.route.Store(nil)
		return
	}
	p.route.Store(r.withDefaults())
}

// Serve accepts connections on ln and relays each to a backend until
// the proxy is closed, then returns ErrClosed. It closes ln when it
// returns. ln must yield *net.TCPConn.
func (p *TCPProxy) Serve(ln net.Listener) error {
	defer ln.Close()
	if !p.addListener(ln) {
		return ErrClosed
	}
	defer p.removeListener(ln)
	if err := keepAliveListener(ln); err != nil {
		return fmt.Errorf("keepalive on %s: %w", ln.Addr(), err)
	}
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.isClosed() {
				return ErrClosed
			}
			if !outOfResources(err) {
				return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
			}
			// Out of file descriptors or memory: wait for connections to
			// end rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.connectLog.warn(p.logger(), "accept", "addr", ln.Addr(), "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			return fmt.Errorf("accept on %s: got a %T, not a TCP connection", ln.Addr(), c)
		}
		conn := &tcpConn{client: tc}
		if !p.addConn(conn) {
			tc.Close()
			return ErrClosed
		}
		go p.handle(conn)
	}
}

// ListenTCP opens a TCP listener for Serve whose sockets have keepalive
// from the start: it is set on the listening socket, which Linux copies
// to each connection, so accepting needs no system calls for it.
func ListenTCP(ctx context.Context, address string) (net.Listener, error) {
	lc := net.ListenConfig{
		KeepAlive: -1, // already on; Go would set it again per connection
		Control: func(_, _ string, rc syscall.RawConn) error {
			var err error
			cerr := rc.Control(func(fd uintptr) { err = setKeepAlive(int(fd)) })
			return errors.Join(cerr, err)
		},
	}
	return lc.Listen(ctx, "tcp", address)
}

// keepAliveListener sets keepAlive on a listener that did not come from
// ListenTCP, for the connections it accepts from now on.
func keepAliveListener(ln net.Listener) error {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	cerr := rc.Control(func(fd uintptr) { err = setKeepAlive(int(fd)) })
	return errors.Join(cerr, err)
}

func setKeepAlive(fd int) error {
	return errors.Join(
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1),
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepAlive.Idle/time.Second)),
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(keepAlive.Interval/time.Second)),
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAlive.Count),
	)
}

func outOfResources(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// Close stops accepting: it closes the listeners being served. Open
// connections go on.
func (p *TCPProxy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for ln := range p.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Shutdown stops accepting and waits for open connections to end. When
// ctx ends first, it closes them, waits for their backends' counts to
// be released, and returns ctx's error.
func (p *TCPProxy) Shutdown(ctx context.Context) error {
	err := p.Close()
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return err
	case <-ctx.Done():
	}
	p.mu.Lock()
	for c := range p.conns {
		c.close()
	}
	p.mu.Unlock()
	<-done
	return ctx.Err()
}

func (p *TCPProxy) handle(c *tcpConn) {
	defer p.removeConn(c)
	defer c.close()
	r := p.route.Load()
	if r == nil {
		return
	}
	var front net.Conn = c.client
	if r.TLS != nil {
		tc, err := handshake(c.client, r)
		if err != nil {
			p.logger().Debug("tls handshake", "route", r.ID, "client", c.client.RemoteAddr(), "err", err)
			return
		}
		front = tc
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.setCancel(cancel)
	b, back, err := p.connect(ctx, r)
	cancel()
	if err != nil {
		p.connectLog.warn(p.logger(), "connect to backend", "route", r.ID, "client", c.client.RemoteAddr(), "service", r.Service, "err", err)
		return
	}
	defer b.Release()
	if !c.setBackend(back) {
		return
	}
	if r.ProxyProtocol {
		hdr := proxyHeader(c.client.RemoteAddr(), c.client.LocalAddr())
		if _, err := back.Write(hdr); err != nil {
			p.logger().Debug("proxy protocol header", "route", r.ID, "backend", b.Addr, "err", err)
			return
		}
	}
	if r.IdleTimeout > 0 {
		done := make(chan struct{})
		defer close(done)
		go c.closeWhenIdle(r.IdleTimeout, done)
	}
	relay(c, front, back)
}

// handshake terminates TLS on client; the deadline keeps a client that
// never finishes from holding the connection.
func handshake(client *net.TCPConn, r *TCPRoute) (*tls.Conn, error) {
	tc := tls.Server(client, r.TLS)
	ctx, cancel := context.WithTimeout(context.Background(), r.HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tc, nil
}

// connect dials r's backends, moving on to another backend when a dial
// fails. The backend is counted from before the dial, so that a drain
// does not miss a connection that is being made.
func (p *TCPProxy) connect(ctx context.Context, r *TCPRoute) (*backend.Backend, *net.TCPConn, error) {
	d := net.Dialer{Timeout: r.ConnectTimeout, KeepAliveConfig: keepAlive}
	var tried []*backend.Backend
	var errs []error
	for range dialAttempts {
		b := pick(p.Backends.Lookup(r.Service), r.Leader, tried)
		if b == nil {
			break
		}
		tried = append(tried, b)
		b.Acquire()
		c, err := d.DialContext(ctx, "tcp", b.Addr)
		if err == nil {
			return b, c.(*net.TCPConn), nil
		}
		b.Release()
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(tried) == 0 {
		if r.Leader {
			return nil, nil, errors.New("no leader")
		}
		return nil, nil, errors.New("no backend")
	}
	return nil, nil, errors.Join(errs...)
}

// pick chooses the next backend to dial from set, or nil. The set is
// looked up again for every attempt: a retry may find a new leader.
func pick(set *backend.Set, leader bool, tried []*backend.Backend) *backend.Backend {
	if !leader {
		return set.Pick(tried...)
	}
	if set == nil || set.Leader == nil || slices.Contains(tried, set.Leader) {
		return nil
	}
	return set.Leader
}

func (p *TCPProxy) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

func (p *TCPProxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *TCPProxy) addListener(ln net.Listener) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	if p.listeners == nil {
		p.listeners = map[net.Listener]struct{}{}
	}
	p.listeners[ln] = struct{}{}
	return true
}

func (p *TCPProxy) removeListener(ln net.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.listeners, ln)
}

func (p *TCPProxy) addConn(c *tcpConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	if p.conns == nil {
		p.conns = map[*tcpConn]struct{}{}
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *TCPProxy) removeConn(c *tcpConn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.wg.Done()
}
