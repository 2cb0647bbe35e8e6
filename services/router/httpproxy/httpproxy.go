// Package httpproxy is the router's HTTP data path: it matches each
// request's host and path against a route table, picks a backend of the
// route's service and relays the request and its response, counting the
// request on the backend while it is in flight.
//
// HTTP/1.1 is served by the package's own parser and relay, which forward
// head bytes mostly as they came and keep backend connections alive in a
// pool, because net/http's server and ReverseProxy cost a factor of two
// to four in throughput against nginx. HTTP/2 (TLS with ALPN, and h2c)
// is served by net/http, its requests going to backends over the same
// pool as HTTP/1.1.
//
// It does not know where routes and backends come from (the router
// service builds Tables and backend.Sets) nor how listeners are opened.
package httpproxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plinth-os/plinth/services/router/backend"
)

// Server proxies HTTP requests by the current Table. Its zero value
// works: it answers 404 until SetTable, and 503 until Backends has sets.
type Server struct {
	// Backends holds each service's backend set.
	Backends *backend.Sets
	// StickyKey signs sticky-session cookies; when empty, a random key is
	// made, and sessions do not survive a restart of the router.
	StickyKey []byte
	// AccessLog, when set, is called once per request, after it ended.
	AccessLog func(AccessEntry)
	// Logger gets connection-level errors; nil means slog.Default().
	Logger *slog.Logger

	// ReadHeaderTimeout bounds reading a request head once it started;
	// 0 means 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout bounds the wait for a client's next request; 0 means 120s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request head; 0 means 64 KiB.
	MaxHeaderBytes int
	// MaxIdlePerBackend bounds the idle connections kept to one backend
	// address; 0 means 256.
	MaxIdlePerBackend int
	// BackendIdleTimeout is how long an idle backend connection is kept;
	// 0 means 30s. One idle for over a second is checked for the
	// backend's close before reuse, whatever the backend's own timeout.
	BackendIdleTimeout time.Duration

	// clientCheck is how often a request waiting for its response head
	// looks whether its client left.
	clientCheck time.Duration

	table atomic.Pointer[Table]
	pool  pool

	initOnce  sync.Once
	stickyKey []byte
	h2        *http.Server
	h2ln      *chanListener
	h2Serve   sync.Once

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*trackedConn]struct{}
	connsWG   sync.WaitGroup
	closing   atomic.Bool
}

// AccessEntry describes one proxied request for the access log.
type AccessEntry struct {
	Time      time.Time // when the request head was read
	Method    string
	Host      string
	Path      string // the request target as sent
	Proto     string // "HTTP/1.1", "HTTP/2.0"
	Status    int
	Bytes     int64 // response body bytes sent to the client
	Duration  time.Duration
	Backend   string // address, empty when none was reached
	RequestID string
	Route     string // route ID, empty when none matched
	Client    string // client address, ip:port
}

const (
	defaultReadHeaderTimeout  = 10 * time.Second
	defaultIdleTimeout        = 120 * time.Second
	defaultMaxHeaderBytes     = 64 << 10
	defaultMaxIdlePerBackend  = 256
	defaultBackendIdleTimeout = 30 * time.Second
)

func (s *Server) init() {
	s.initOnce.Do(func() {
		if s.ReadHeaderTimeout <= 0 {
			s.ReadHeaderTimeout = defaultReadHeaderTimeout
		}
		if s.IdleTimeout <= 0 {
			s.IdleTimeout = defaultIdleTimeout
		}
		if s.MaxHeaderBytes <= 0 {
			s.MaxHeaderBytes = defaultMaxHeaderBytes
		}
		if s.MaxIdlePerBackend <= 0 {
			s.MaxIdlePerBackend = defaultMaxIdlePerBackend
		}
		if s.BackendIdleTimeout <= 0 {
			s.BackendIdleTimeout = defaultBackendIdleTimeout
		}
		if s.clientCheck <= 0 {
			s.clientCheck = time.Second
		}
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		if s.Backends == nil {
			s.Backends = &backend.Sets{}
		}
		s.stickyKey = s.StickyKey
		if len(s.stickyKey) == 0 {
			s.stickyKey = make([]byte, 32)
			rand.Read(s.stickyKey)
		}
		s.pool.maxIdle = s.MaxIdlePerBackend
		s.pool.idleTimeout = s.BackendIdleTimeout
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[*trackedConn]struct{}{}
		s.initH2()
	})
}

// SetTable makes t the table for requests from now on; requests in
// flight keep the route they matched.
func (s *Server) SetTable(t *Table) { s.table.Store(t) }

// ServeHTTP1 serves HTTP/1.x and h2c (prior knowledge and Upgrade: h2c)
// on ln until ln fails or Shutdown.
func (s *Server) ServeHTTP1(ln net.Listener) error {
	return s.serve(ln, func(tc *trackedConn) { s.serveConn(tc, tc, false) })
}

// ServeTLS serves TLS on ln: the certificate is chosen by server name
// (a route's exact domain, then its wildcards, then the table's
// default), and ALPN offers h2 and http/1.1.
func (s *Server) ServeTLS(ln net.Listener) error {
	cfg := &tls.Config{
		NextProtos: []string{"h2", "http/1.1"},
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := s.table.Load().certificate(hello.ServerName); c != nil {
				return c, nil
			}
			return nil, fmt.Errorf("no certificate for server name %q", hello.ServerName)
		},
	}
	return s.serve(ln, func(tc *trackedConn) {
		tlsConn := tls.Server(tc, cfg)
		tlsConn.SetDeadline(time.Now().Add(s.ReadHeaderTimeout))
		if err := tlsConn.HandshakeContext(context.Background()); err != nil {
			s.Logger.Debug("TLS handshake", "client", tc.RemoteAddr(), "err", err)
			tlsConn.Close()
			return
		}
		tlsConn.SetDeadline(time.Time{})
		if tlsConn.ConnectionState().NegotiatedProtocol == "h2" {
			s.serveH2Conn(tlsConn, tc)
			return
		}
		s.serveConn(tlsConn, tc, true)
	})
}

func (s *Server) serve(ln net.Listener, handle func(*trackedConn)) error {
	s.init()
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or a transient error: wait
				// instead of spinning, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.Logger.Warn("accept", "addr", ln.Addr(), "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		tc := s.track(c)
		if tc == nil {
			c.Close()
			continue
		}
		go func() {
			defer s.untrack(tc)
			handle(tc)
		}()
	}
}

// trackedConn is a client connection, known to Shutdown. Between
// requests it is idle, and Shutdown may close it. Its closed channel
// tells when net/http is done with a connection handed to it.
type trackedConn struct {
	net.Conn
	state atomic.Int32
	// upstream is the backend connection of the request in flight, which
	// Shutdown closes too when its time is up.
	upstream  atomic.Pointer[upstream]
	closeOnce sync.Once
	closed    chan struct{}
}

func (tc *trackedConn) Close() error {
	tc.closeOnce.Do(func() { close(tc.closed) })
	return tc.Conn.Close()
}

const (
	connIdle int32 = iota
	connActive
	connClosed
)

// active marks a request started; false when Shutdown closed the
// connection first.
func (tc *trackedConn) active() bool { return tc.state.CompareAndSwap(connIdle, connActive) }

// idle marks the connection between requests; false when it should
// close because the server is shutting down.
func (s *Server) idle(tc *trackedConn) bool {
	tc.state.Store(connIdle)
	return !s.closing.Load()
}

func (s *Server) track(c net.Conn) *trackedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return nil
	}
	tc := &trackedConn{Conn: c, closed: make(chan struct{})}
	s.conns[tc] = struct{}{}
	s.connsWG.Add(1)
	return tc
}

func (s *Server) untrack(tc *trackedConn) {
	s.mu.Lock()
	delete(s.conns, tc)
	s.mu.Unlock()
	s.connsWG.Done()
}

// Shutdown stops the listeners, closes idle client connections and waits
// for requests in flight (and upgraded connections) to finish; when ctx
// ends first, it closes the connections left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	for tc := range s.conns {
		if tc.state.CompareAndSwap(connIdle, connClosed) {
			tc.Close()
		}
	}
	s.mu.Unlock()

	// A connection found to speak HTTP/2 after this is closed, not
	// handed to a server that no longer serves.
	s.h2ln.Close()
	h2done := make(chan error, 1)
	go func() { h2done <- s.h2.Shutdown(ctx) }()
	done := make(chan struct{})
	go func() {
		s.connsWG.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for tc := range s.conns {
			tc.Close()
			if u := tc.upstream.Load(); u != nil {
				u.c.Close()
			}
		}
		s.mu.Unlock()
		s.h2.Close()
	}
	if h2err := <-h2done; err == nil && h2err != nil && !errors.Is(h2err, http.ErrServerClosed) {
		err = h2err
	}
	s.pool.closeAll()
	return err
}
