package httpproxy

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/plinth-os/plinth/services/router/backend"
)

// clientConn is one HTTP/1.x client connection and the state its
// requests reuse, so that a request allocates nothing in the common case.
type clientConn struct {
	s     *Server
	c     net.Conn
	tc    *trackedConn
	br    *bufio.Reader
	bw    *bufio.Writer // to the client
	uw    *bufio.Writer // to the backend of the current request
	https bool

	remote string // client ip:port, for the access log
	ip     []byte // client IP, for X-Forwarded-For
	port   []byte // the listener's port, for X-Forwarded-Port

	req, resp head
	out       []byte // a head being written
	scratch   []byte // the lower-cased host
	rng       *mrand.ChaCha8
	idBuf     [32]byte
	cookies   [][]byte

	// The deadlines last set on c; see setReadDeadline.
	rdl, wdl time.Time
	// respDeadline ends the wait for the current response head.
	respDeadline time.Time

	// Per request.
	reqID    []byte
	bodyLeft bool // the request body is still (partly) unread
	status   int
	sent     int64
	upstream string
}

var clientConns = sync.Pool{New: func() any {
	var seed [32]byte
	rand.Read(seed[:])
	return &clientConn{
		bw:      bufio.NewWriterSize(nil, 16<<10),
		uw:      bufio.NewWriterSize(nil, 16<<10),
		rng:     mrand.NewChaCha8(seed),
		scratch: make([]byte, 0, 255),
	}
}}

// h2Preface starts every HTTP/2 connection; on a plain listener it means
// h2c with prior knowledge.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func (s *Server) serveConn(c net.Conn, tc *trackedConn, https bool) {
	cc := clientConns.Get().(*clientConn)
	cc.s, cc.c, cc.tc, cc.https = s, c, tc, https
	cc.br = getReader(c)
	cc.bw.Reset(c)
	cc.rdl, cc.wdl = time.Time{}, time.Time{}
	cc.remote = c.RemoteAddr().String()
	cc.ip = cc.ip[:0]
	cc.port = cc.port[:0]
	if host, _, err := net.SplitHostPort(cc.remote); err == nil {
		cc.ip = append(cc.ip, host...)
	}
	if _, port, err := net.SplitHostPort(c.LocalAddr().String()); err == nil {
		cc.port = append(cc.port, port...)
	}
	defer func() {
		c.Close()
		putReader(cc.br)
		cc.br = nil
		cc.bw.Reset(nil)
		cc.uw.Reset(nil)
		cc.s, cc.c, cc.tc = nil, nil, nil
		clientConns.Put(cc)
	}()
	cc.serve()
}

func (cc *clientConn) serve() {
	s := cc.s
	for first := true; ; first = false {
		cc.setReadDeadline(s.IdleTimeout)
		if _, err := cc.br.Peek(1); err != nil {
			return
		}
		if !cc.tc.active() {
			return
		}
		if first && !cc.https && cc.sawPreface() {
			br := cc.br
			cc.br = nil
			cc.c.SetReadDeadline(time.Time{})
			s.serveH2Conn(&bufferedConn{Conn: cc.c, r: br}, cc.tc)
			return
		}
		if cc.br.Buffered() < 16 || !headComplete(cc.br) {
			cc.setReadDeadline(s.ReadHeaderTimeout)
		}
		if err := cc.req.read(cc.br, s.MaxHeaderBytes, true); err != nil {
			cc.badRequest(err)
			return
		}
		if !cc.handle() {
			return
		}
		if !s.idle(cc.tc) {
			return
		}
	}
}

// setReadDeadline moves the client's read deadline to d from now, but
// only when the current one is more than d away or less than d/2: that
// saves a timer update per request on a busy connection, and an idle or
// read timeout takes between half and all of its value.
func (cc *clientConn) setReadDeadline(d time.Duration) {
	now := time.Now()
	if want := now.Add(d); cc.rdl.After(want) || cc.rdl.Before(now.Add(d/2)) {
		cc.rdl = want
		cc.c.SetReadDeadline(want)
	}
}

// setWriteDeadline is setReadDeadline for writes to the client.
func (cc *clientConn) setWriteDeadline(d time.Duration) {
	now := time.Now()
	if want := now.Add(d); cc.wdl.After(want) || cc.wdl.Before(now.Add(d/2)) {
		cc.wdl = want
		cc.c.SetWriteDeadline(want)
	}
}

// headComplete reports whether a whole request head is buffered, in
// which case reading it cannot block and needs no deadline.
func headComplete(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	for i := 3; i < len(b); i++ {
		if b[i] == '\n' && b[i-1] == '\r' && b[i-2] == '\n' {
			return true
		}
	}
	return false
}

// sawPreface reads as far as the buffered bytes match the HTTP/2
// preface; a request line differs from it by its second byte.
func (cc *clientConn) sawPreface() bool {
	for n := 1; n <= len(h2Preface); n++ {
		p, err := cc.br.Peek(n)
		if err != nil || p[n-1] != h2Preface[n-1] {
			return false
		}
	}
	return true
}

func (cc *clientConn) badRequest(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	var me errMalformed
	switch {
	case errors.As(err, &me):
		cc.reqID = cc.newRequestID()
		cc.writeError(http.StatusBadRequest, err.Error(), true)
	case errors.Is(err, errHeadTooLarge):
		cc.reqID = cc.newRequestID()
		cc.writeError(http.StatusRequestHeaderFieldsTooLarge, "request head too large", true)
	}
}

// handle serves one request whose head is in cc.req; false means the
// connection must close.
func (cc *clientConn) handle() bool {
	s := cc.s
	req := &cc.req
	start := time.Now()
	cc.status, cc.sent, cc.upstream = 0, 0, ""
	cc.bodyLeft = req.contentLength > 0 || req.chunked
	cc.reqID = req.value(fXRequestID)
	if !saneRequestID(cc.reqID) {
		cc.reqID = cc.newRequestID()
	}

	target := req.bytes(req.first[1])
	host := req.value(fHost)
	path := target
	if len(target) == 0 || target[0] != '/' {
		h, p, ok := splitAbsoluteForm(target)
		if !ok {
			cc.writeError(http.StatusBadRequest, "request target must be a path or an absolute URL", true)
			cc.log(start, nil)
			return false
		}
		host, path = h, p
	}
	if len(host) == 0 {
		cc.writeError(http.StatusBadRequest, "missing Host header", true)
		cc.log(start, nil)
		return false
	}
	if !cc.https && req.upgrade && equalFoldLower(req.value(fUpgrade), "h2c") && req.value(fHTTP2Settings) != nil && !cc.bodyLeft {
		cc.upgradeH2C()
		return false
	}

	route := s.table.Load().match(host, path, cc.scratch[:0])
	if route == nil {
		ok := cc.writeError(http.StatusNotFound, "no route for "+string(host)+string(path), false)
		cc.log(start, nil)
		return ok
	}
	set := s.Backends.Lookup(route.Service)
	if set == nil || len(set.Backends) == 0 {
		ok := cc.writeError(http.StatusServiceUnavailable, "no healthy instance of service "+route.Service, false)
		cc.log(start, route)
		return ok
	}
	var cookie []byte
	if route.Sticky {
		cc.cookies = cc.cookies[:0]
		for i := range req.fields {
			if req.fields[i].kind == fCookie {
				cc.cookies = append(cc.cookies, req.bytes(req.fields[i].value))
			}
		}
		cookie = cookieValue(cc.cookies, stickyCookie)
	}
	b, setCookie := s.pick(route, set, cookie)
	keep := cc.proxy(route, set, b, setCookie, host, path)
	cc.tc.upstream.Store(nil)
	cc.log(start, route)
	return keep
}

// proxy sends the request to a backend of set, b first, and relays the
// response.
func (cc *clientConn) proxy(route *Route, set *backend.Set, b *backend.Backend, setCookie bool, host, path []byte) bool {
	s := cc.s
	req := &cc.req
	first := b
	b, u, err := s.connect(set, b, route)
	if err != nil {
		return cc.backendFailed(route, err)
	}
	// b changes when the request goes to another backend.
	defer func() {
		if b != nil {
			b.Release()
		}
	}()
	cc.upstream = b.Addr

	cc.out = cc.appendRequestHead(cc.out[:0], host, path)
	// A body that the client already sent in full goes in the same write
	// as the head and stays in cc.br until a response began, so that the
	// request can be sent again with it.
	held := 0
	if req.contentLength > 0 && !req.expectContinue && req.contentLength <= int64(cc.br.Buffered()) {
		held = int(req.contentLength)
	}
	idempotent := isIdempotent(req.bytes(req.first[0]))
	var dead []*backend.Backend
	for retry := 0; ; retry++ {
		cc.resp.reset()
		err = cc.sendHead(u, route, held)
		streamed := false
		if err == nil && held == 0 && cc.bodyLeft && !req.expectContinue {
			streamed = true
			if ok, clientFailed := cc.sendBody(u, route); !ok {
				u.close()
				if clientFailed {
					return false
				}
				return cc.backendFailed(route, errors.New("writing request body to backend"))
			}
		}
		if err == nil {
			err = cc.readResponse(u)
		}
		if err == nil {
			break
		}
		u.close()
		if err == errClientGone {
			cc.s.Logger.Debug("client gone", "route", route.ID, "backend", b.Addr, "request_id", string(cc.reqID))
			return false
		}
		// Nothing of a response came, and the request can be sent again:
		// on a kept-alive connection the backend had closed (stale), when
		// it has no body or is idempotent; after the backend died with it
		// (a new connection failed), only when it is idempotent.
		replay := len(cc.resp.raw) == 0 && !streamed && !isTimeout(err)
		stale := replay && u.reused && (idempotent || !cc.bodyLeft)
		died := replay && !u.reused && idempotent
		if retry >= 2 || !stale && !died {
			return cc.backendFailed(route, err)
		}
		if stale {
			if u, err = dialUpstream(b.Addr, route.ConnectTimeout); err == nil {
				continue
			}
		}
		// The backend is gone: another one, if the set has one.
		dead = append(dead, b)
		b.Release()
		next := set.Pick(dead...)
		if b, u, err = s.connect(set, next, route); err != nil {
			b = nil
			return cc.backendFailed(route, err)
		}
		cc.upstream = b.Addr
	}
	setCookie = route.Sticky && (setCookie || b != first)
	if held > 0 {
		cc.br.Discard(held)
		cc.bodyLeft = false
	}
	return cc.relayResponse(u, b, route, setCookie)
}

// relayResponse relays the response whose head is in cc.resp, after
// any interim ones, and keeps u for another request when it can.
func (cc *clientConn) relayResponse(u *upstream, b *backend.Backend, route *Route, setCookie bool) bool {
	req, resp := &cc.req, &cc.resp
	for resp.status < 200 {
		switch {
		case resp.status == http.StatusSwitchingProtocols && req.upgrade:
			cc.splice(u, route)
			return false
		case resp.status == http.StatusSwitchingProtocols:
			u.close()
			return cc.backendFailed(route, errors.New("backend switched protocols unasked"))
		case resp.status == http.StatusContinue && req.expectContinue && cc.bodyLeft:
			cc.setWriteDeadline(route.Timeout)
			cc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if err := cc.bw.Flush(); err != nil {
				u.close()
				return false
			}
			if ok, clientFailed := cc.sendBody(u, route); !ok {
				u.close()
				if clientFailed {
					return false
				}
				return cc.backendFailed(route, errors.New("writing request body to backend"))
			}
		case resp.status != http.StatusContinue && req.minor > 0:
			cc.out = cc.appendResponseHead(cc.out[:0], nil, false, false)
			cc.bw.Write(cc.out)
			if err := cc.bw.Flush(); err != nil {
				u.close()
				return false
			}
		}
		if err := cc.readResponse(u); err != nil {
			u.close()
			if err == errClientGone {
				return false
			}
			return cc.backendFailed(route, err)
		}
	}

	method := req.bytes(req.first[0])
	// A backend that answered before taking the body it was promised
	// (Expect: 100-continue refused) leaves both connections out of step.
	closeUpstream := resp.close || cc.bodyLeft
	closeClient := req.close || cc.bodyLeft || cc.s.closing.Load()
	framing := framingNone
	if !resp.bodyless(method) {
		switch {
		case resp.chunked:
			framing = framingChunked
		case resp.contentLength >= 0:
			framing = framingLength
		default:
			framing = framingEOF
			closeUpstream = true
		}
	}
	rechunk := framing == framingChunked || framing == framingEOF
	if rechunk && req.minor == 0 {
		closeClient, rechunk = true, false
	}
	var sticky *backend.Backend
	if setCookie {
		sticky = b
	}
	cc.out = cc.appendResponseHead(cc.out[:0], sticky, rechunk, closeClient)
	cc.status = resp.status
	cc.setWriteDeadline(route.Timeout)
	cc.bw.Write(cc.out)

	r := relay{src: u.br, dst: cc.bw, srcConn: u.c, dstConn: cc.c, timeout: route.Timeout}
	ok := true
	switch framing {
	case framingLength:
		ok = r.copyN(resp.contentLength)
	case framingChunked:
		ok = r.copyChunked(rechunk)
	case framingEOF:
		if rechunk {
			r.dst = &chunkedWriter{w: cc.bw}
		}
		ok = r.copyToEOF()
		if ok && rechunk {
			_, err := cc.bw.WriteString("0\r\n\r\n")
			ok = err == nil
		}
	}
	cc.sent = r.n
	if r.waited {
		cc.wdl = time.Time{}
	}
	// The backend is done once its body was read: its connection goes
	// back to the pool before the client has the end of the response, so
	// that the client's next request finds it there.
	if ok && !closeUpstream && u.br.Buffered() == 0 {
		cc.s.pool.put(u, time.Now())
	} else {
		u.close()
	}
	if ok {
		if err := cc.bw.Flush(); err != nil {
			ok = false
		}
	}
	if r.readErr != nil {
		cc.s.Logger.Debug("backend response body", "backend", b.Addr, "request_id", string(cc.reqID), "err", r.readErr)
	}
	return ok && !closeClient
}

const (
	framingNone = iota
	framingLength
	framingChunked
	framingEOF
)

// sendHead writes cc.out and held body bytes to u.
func (cc *clientConn) sendHead(u *upstream, route *Route, held int) error {
	cc.tc.upstream.Store(u)
	now := time.Now()
	cc.respDeadline = now.Add(route.Timeout)
	u.c.SetDeadline(now.Add(min(route.Timeout, cc.s.clientCheck)))
	cc.uw.Reset(u.c)
	cc.uw.Write(cc.out)
	if held > 0 {
		body, _ := cc.br.Peek(held)
		cc.uw.Write(body)
	}
	return cc.uw.Flush()
}

// sendBody streams the request body to u; clientFailed tells whose
// fault a failure was.
func (cc *clientConn) sendBody(u *upstream, route *Route) (ok, clientFailed bool) {
	req := &cc.req
	r := relay{src: cc.br, dst: cc.uw, srcConn: cc.c, dstConn: u.c, timeout: route.Timeout}
	if req.chunked {
		ok = r.copyChunked(true)
	} else {
		ok = r.copyN(req.contentLength)
	}
	if ok {
		if err := cc.uw.Flush(); err != nil {
			r.writeErr = err
			ok = false
		}
	}
	if ok {
		cc.bodyLeft = false
	}
	if r.waited {
		cc.rdl = time.Time{}
	}
	now := time.Now()
	cc.respDeadline = now.Add(route.Timeout)
	u.c.SetReadDeadline(now.Add(min(route.Timeout, cc.s.clientCheck)))
	return ok, r.readErr != nil
}

var errClientGone = errors.New("client went away while the backend was thinking")

// readResponse reads a response head from u. Until its first byte comes
// it looks every clientCheck whether the client hung up, so that a
// client that gave up on a long poll does not hold the backend's count
// until the backend answers.
func (cc *clientConn) readResponse(u *upstream) error {
	for u.br.Buffered() == 0 {
		_, err := u.br.Peek(1)
		if err == nil {
			break
		}
		now := time.Now()
		if !isTimeout(err) || !now.Before(cc.respDeadline) {
			cc.resp.reset()
			return err
		}
		if cc.clientGone() {
			cc.resp.reset()
			return errClientGone
		}
		next := now.Add(cc.s.clientCheck)
		if next.After(cc.respDeadline) {
			next = cc.respDeadline
		}
		u.c.SetReadDeadline(next)
	}
	if !headComplete(u.br) {
		u.c.SetReadDeadline(cc.respDeadline)
	}
	return cc.resp.read(u.br, defaultMaxHeaderBytes, false)
}

// clientGone peeks at the client's socket without blocking: an end of
// stream or an error means the client left. Pipelined bytes or nothing
// yet mean it is still there.
func (cc *clientConn) clientGone() bool {
	if cc.br.Buffered() > 0 {
		return false
	}
	// A read deadline in the past would fail the peek before it is tried.
	cc.setReadDeadline(cc.s.IdleTimeout)
	return peek(cc.c) == peerClosed
}

const (
	peerQuiet = iota
	peerSent
	peerClosed
)

// peek looks at c's socket without reading from it or blocking: whether
// the peer sent something, closed, or neither. c's read deadline must
// not have passed.
func peek(c net.Conn) int {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	sc, ok := rawConn(c).(syscall.Conn)
	if !ok {
		return peerQuiet
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return peerQuiet
	}
	state := peerQuiet
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			state = peerSent
		case err == nil || err != syscall.EAGAIN && err != syscall.EINTR:
			state = peerClosed
		}
		return true
	})
	return state
}

// connect returns a connection to b, or to another backend of set when
// b cannot be reached, with the backend it went to acquired.
func (s *Server) connect(set *backend.Set, b *backend.Backend, r *Route) (*backend.Backend, *upstream, error) {
	const attempts = 3
	tried := make([]*backend.Backend, 0, attempts)
	var err error
	for range attempts {
		if b == nil {
			break
		}
		b.Acquire()
		if u := s.pool.get(b.Addr, time.Now()); u != nil {
			return b, u, nil
		}
		var u *upstream
		if u, err = dialUpstream(b.Addr, r.ConnectTimeout); err == nil {
			return b, u, nil
		}
		b.Release()
		s.Logger.Debug("connect to backend", "route", r.ID, "backend", b.Addr, "err", err)
		tried = append(tried, b)
		b = set.Pick(tried...)
	}
	if err == nil {
		err = errors.New("no backend left to try")
	}
	return nil, nil, err
}

// backendFailed answers 504 for a timeout and 502 for other failures.
func (cc *clientConn) backendFailed(route *Route, err error) bool {
	cc.s.Logger.Debug("backend failed", "route", route.ID, "backend", cc.upstream, "request_id", string(cc.reqID), "err", err)
	if isTimeout(err) {
		return cc.writeError(http.StatusGatewayTimeout, "service "+route.Service+" did not answer in time", false)
	}
	return cc.writeError(http.StatusBadGateway, "service "+route.Service+" failed to answer", false)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isIdempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// writeError answers with a short plain-text body; false when the
// connection must close after it.
func (cc *clientConn) writeError(status int, msg string, mustClose bool) bool {
	cc.status = status
	keep := !mustClose && !cc.req.close && !cc.bodyLeft && !cc.s.closing.Load()
	out := cc.out[:0]
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(status)...)
	out = append(out, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(msg)+1), 10)
	out = append(out, "\r\nX-Request-Id: "...)
	out = append(out, cc.reqID...)
	if !keep {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n\r\n"...)
	out = append(out, msg...)
	out = append(out, '\n')
	cc.out = out
	cc.sent = int64(len(msg) + 1)
	cc.setWriteDeadline(defaultTimeout)
	cc.bw.Write(out)
	if err := cc.bw.Flush(); err != nil {
		return false
	}
	return keep
}

// log calls the access log, if any, for the request in cc.
func (cc *clientConn) log(start time.Time, route *Route) {
	if cc.s.AccessLog == nil {
		return
	}
	req := &cc.req
	e := AccessEntry{
		Time:      start,
		Method:    string(req.bytes(req.first[0])),
		Host:      string(req.value(fHost)),
		Path:      string(req.bytes(req.first[1])),
		Proto:     string(req.bytes(req.first[2])),
		Status:    cc.status,
		Bytes:     cc.sent,
		Duration:  time.Since(start),
		Backend:   cc.upstream,
		RequestID: string(cc.reqID),
		Client:    cc.remote,
	}
	if route != nil {
		e.Route = route.ID
	}
	cc.s.AccessLog(e)
}
