package httpproxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/plinth-os/plinth/services/router/backend"
)

// initH2 sets up HTTP/2, served by net/http: connections that negotiated
// h2, or sent the h2c preface, are handed to s.h2 through a listener fed
// by the accept loops, and its handler sends each stream to a backend
// over HTTP/1.1, from the same pool as the HTTP/1.1 path.
func (s *Server) initH2() {
	var p http.Protocols
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	s.h2 = &http.Server{
		Handler:           http.HandlerFunc(s.serveH2),
		Protocols:         &p,
		ReadHeaderTimeout: s.ReadHeaderTimeout,
		IdleTimeout:       s.IdleTimeout,
		MaxHeaderBytes:    s.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug),
	}
	s.h2ln = &chanListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

// serveH2Conn hands c to the HTTP/2 server and waits until it closed c,
// so that the connection stays tracked for Shutdown.
func (s *Server) serveH2Conn(c net.Conn, tc *trackedConn) {
	s.h2Serve.Do(func() { go s.h2.Serve(s.h2ln) })
	select {
	case s.h2ln.conns <- c:
	case <-s.h2ln.done:
		c.Close()
		return
	}
	<-tc.closed
}

// serveH2CUpgrade serves an h2c connection that started as HTTP/1.1,
// with its upgrading request as stream 1. net/http has no h2c upgrade,
// hence x/net's server.
func (s *Server) serveH2CUpgrade(c net.Conn, r *http.Request, settings []byte) {
	//lint:ignore SA1019 net/http cannot take over a connection mid-upgrade
	var srv http2.Server
	//lint:ignore SA1019 net/http cannot take over a connection mid-upgrade
	srv.ServeConn(c, &http2.ServeConnOpts{
		BaseConfig:     s.h2,
		Handler:        s.h2.Handler,
		UpgradeRequest: r,
		Settings:       settings,
	})
}

// chanListener is the HTTP/2 server's listener: the accept loops send it
// the connections they found to speak HTTP/2.
type chanListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// bufferedConn is a connection whose first bytes were read into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// serveH2 proxies one HTTP/2 stream.
func (s *Server) serveH2(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	x := h2Exchange{s: s, w: w, r: r, start: start}
	x.reqID = r.Header.Get("X-Request-Id")
	if !saneRequestID([]byte(x.reqID)) {
		var raw [16]byte
		rand.Read(raw[:])
		x.reqID = hex.EncodeToString(raw[:])
	}
	defer x.log()
	uri := r.RequestURI
	if uri == "" {
		uri = r.URL.RequestURI()
	}
	x.route = s.table.Load().Match(r.Host, uri)
	if x.route == nil {
		x.fail(http.StatusNotFound, "no route for "+r.Host+uri)
		return
	}
	set := s.Backends.Lookup(x.route.Service)
	if set == nil || len(set.Backends) == 0 {
		x.fail(http.StatusServiceUnavailable, "no healthy instance of service "+x.route.Service)
		return
	}
	var cookie []byte
	if x.route.Sticky {
		if c, err := r.Cookie(stickyCookie); err == nil {
			cookie = []byte(c.Value)
		}
	}
	first, setCookie := s.pick(x.route, set, cookie)
	b, u, err := s.connect(set, first, x.route)
	if err != nil {
		x.backendFailed(err)
		return
	}
	defer b.Release()
	x.backend = b.Addr
	if x.route.Sticky && (setCookie || b != first) {
		x.sticky = b
	}
	x.proxy(b, u, uri)
}

// h2Exchange is one HTTP/2 request's trip to a backend.
type h2Exchange struct {
	s       *Server
	w       http.ResponseWriter
	r       *http.Request
	start   time.Time
	route   *Route
	reqID   string
	backend string
	sticky  *backend.Backend
	status  int
	sent    int64
}

func (x *h2Exchange) proxy(b *backend.Backend, u *upstream, uri string) {
	r := x.r
	bodyless := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	out := x.appendHead(nil, uri, bodyless)
	var resp head
	// A client that resets its stream or goes away cancels the request's
	// context: closing the backend connection then ends the wait for the
	// backend and releases its count.
	var stop func() bool
	for retry := 0; ; retry++ {
		c := u.c
		stop = context.AfterFunc(r.Context(), func() { c.Close() })
		u.c.SetDeadline(time.Now().Add(x.route.Timeout))
		_, err := u.c.Write(out)
		if err == nil && !bodyless {
			if err = x.sendBody(u); err != nil {
				stop()
				u.close()
				x.backendFailed(err)
				return
			}
		}
		if err == nil {
			err = resp.read(u.br, defaultMaxHeaderBytes, false)
			for err == nil && resp.status < 200 && resp.status != http.StatusSwitchingProtocols {
				err = resp.read(u.br, defaultMaxHeaderBytes, false)
			}
		}
		if err == nil {
			break
		}
		stop()
		u.close()
		if r.Context().Err() != nil {
			return
		}
		stale := u.reused && len(resp.raw) == 0 && bodyless && !isTimeout(err)
		if retry > 0 || !stale {
			x.backendFailed(err)
			return
		}
		if u, err = dialUpstream(b.Addr, x.route.ConnectTimeout); err != nil {
			x.backendFailed(err)
			return
		}
	}
	if resp.status == http.StatusSwitchingProtocols {
		stop()
		u.close()
		x.backendFailed(errors.New("backend switched protocols on an HTTP/2 request"))
		return
	}

	h := x.w.Header()
	for i := range resp.fields {
		f := &resp.fields[i]
		if f.drop || f.kind == fXRequestID || f.kind == fTrailer {
			continue
		}
		k := http.CanonicalHeaderKey(string(resp.bytes(f.name)))
		h[k] = append(h[k], string(resp.bytes(f.value)))
	}
	if resp.contentLength >= 0 && resp.status != http.StatusNoContent {
		h.Set("Content-Length", strconv.FormatInt(resp.contentLength, 10))
	}
	h.Set("X-Request-Id", x.reqID)
	if x.sticky != nil {
		h.Add("Set-Cookie", stickyCookie+"="+x.s.stickyValue(x.sticky.ID)+"; Path=/; HttpOnly; SameSite=Lax")
	}
	x.status = resp.status
	x.w.WriteHeader(resp.status)

	rl := relay{src: u.br, dst: h2Writer{x.w}, srcConn: u.c, timeout: x.route.Timeout,
		trailer: func(name, value []byte) { h.Add(http.TrailerPrefix+string(name), string(value)) }}
	ok := true
	reusable := !resp.close
	if !resp.bodyless([]byte(r.Method)) {
		switch {
		case resp.chunked:
			ok = rl.copyChunked(false)
		case resp.contentLength >= 0:
			ok = rl.copyN(resp.contentLength)
		default:
			ok = rl.copyToEOF()
			reusable = false
		}
	}
	x.sent = rl.n
	if !stop() {
		ok = false // the connection was closed under the relay
	}
	if ok && reusable && u.br.Buffered() == 0 {
		x.s.pool.put(u, time.Now())
	} else {
		u.close()
	}
	if ok {
		ok = rl.dst.Flush() == nil
	}
	if !ok {
		// A truncated body must not look complete: reset the stream.
		panic(http.ErrAbortHandler)
	}
}

// sendBody streams the request body to u, chunked when its length is
// unknown.
func (x *h2Exchange) sendBody(u *upstream) error {
	buf := bodyBufs.Get().(*[]byte)
	defer bodyBufs.Put(buf)
	var dst io.Writer = u.c
	chunked := x.r.ContentLength < 0
	if chunked {
		dst = &chunkedWriter{w: connFlusher{u.c}}
	}
	for {
		n, err := x.r.Body.Read(*buf)
		if n > 0 {
			u.c.SetWriteDeadline(time.Now().Add(x.route.Timeout))
			if _, werr := dst.Write((*buf)[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if chunked {
		if _, err := u.c.Write([]byte("0\r\n\r\n")); err != nil {
			return err
		}
	}
	u.c.SetDeadline(time.Now().Add(x.route.Timeout))
	return nil
}

var bodyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// connFlusher is a connection written without buffering.
type connFlusher struct{ net.Conn }

func (connFlusher) Flush() error { return nil }

// h2Writer relays a body to an HTTP/2 response.
type h2Writer struct{ w http.ResponseWriter }

func (h h2Writer) Write(p []byte) (int, error) { return h.w.Write(p) }

func (h h2Writer) Flush() error {
	return http.NewResponseController(h.w).Flush()
}

// appendHead appends the HTTP/1.1 head of the request for the backend.
func (x *h2Exchange) appendHead(out []byte, uri string, bodyless bool) []byte {
	r := x.r
	out = append(out, r.Method...)
	out = append(out, ' ')
	out = append(out, uri...)
	out = append(out, " HTTP/1.1\r\nHost: "...)
	out = append(out, r.Host...)
	out = append(out, "\r\n"...)
	var xff []string
	for k, vv := range r.Header {
		switch classify([]byte(k)) {
		case fOther, fCookie:
		case fXForwardedFor:
			xff = vv
			continue
		default:
			continue
		}
		for _, v := range vv {
			out = append(out, k...)
			out = append(out, ": "...)
			out = append(out, v...)
			out = append(out, "\r\n"...)
		}
	}
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	out = append(out, "X-Forwarded-For: "...)
	for _, v := range xff {
		out = append(out, v...)
		out = append(out, ", "...)
	}
	out = append(out, ip...)
	out = append(out, "\r\nX-Forwarded-Proto: "...)
	if r.TLS != nil {
		out = append(out, "https"...)
	} else {
		out = append(out, "http"...)
	}
	out = append(out, "\r\nX-Forwarded-Host: "...)
	out = append(out, r.Host...)
	out = append(out, "\r\nX-Forwarded-Port: "...)
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if _, port, err := net.SplitHostPort(a.String()); err == nil {
			out = append(out, port...)
		}
	}
	out = append(out, "\r\nX-Request-Id: "...)
	out = append(out, x.reqID...)
	out = append(out, "\r\n"...)
	switch {
	case !bodyless && r.ContentLength < 0:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	case !bodyless:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, r.ContentLength, 10)
		out = append(out, "\r\n"...)
	case r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch:
		out = append(out, "Content-Length: 0\r\n"...)
	}
	return append(out, "\r\n"...)
}

func (x *h2Exchange) backendFailed(err error) {
	x.s.Logger.Debug("backend failed", "route", x.route.ID, "backend", x.backend, "request_id", x.reqID, "err", err)
	if isTimeout(err) {
		x.fail(http.StatusGatewayTimeout, "service "+x.route.Service+" did not answer in time")
		return
	}
	x.fail(http.StatusBadGateway, "service "+x.route.Service+" failed to answer")
}

func (x *h2Exchange) fail(status int, msg string) {
	h := x.w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Request-Id", x.reqID)
	x.status = status
	x.w.WriteHeader(status)
	n, _ := io.WriteString(x.w, msg+"\n")
	x.sent = int64(n)
}

func (x *h2Exchange) log() {
	if x.s.AccessLog == nil {
		return
	}
	e := AccessEntry{
		Time:      x.start,
		Method:    x.r.Method,
		Host:      x.r.Host,
		Path:      x.r.RequestURI,
		Proto:     x.r.Proto,
		Status:    x.status,
		Bytes:     x.sent,
		Duration:  time.Since(x.start),
		Backend:   x.backend,
		RequestID: x.reqID,
		Client:    x.r.RemoteAddr,
	}
	if x.route != nil {
		e.Route = x.route.ID
	}
	x.s.AccessLog(e)
}
