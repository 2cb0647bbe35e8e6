package httpproxy

import (
	"bufio"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// splice relays an upgraded connection (a websocket) both ways until
// either side closes. The backend counts it as one unit of work until
// then, which the caller's Release ends.
func (cc *clientConn) splice(u *upstream, route *Route) {
	cc.out = cc.appendResponseHead(cc.out[:0], nil, false, false)
	cc.status = http.StatusSwitchingProtocols
	cc.c.SetWriteDeadline(time.Now().Add(route.Timeout))
	cc.bw.Write(cc.out)
	if err := cc.bw.Flush(); err != nil {
		u.close()
		return
	}
	cc.c.SetDeadline(time.Time{})
	u.c.SetDeadline(time.Time{})

	done := make(chan int64, 1)
	go func() {
		n := pipe(u.c, cc.br, rawConn(cc.c))
		// Either side's end ends the session: closing both unblocks the
		// other direction.
		u.c.Close()
		cc.c.Close()
		done <- n
	}()
	cc.sent = pipe(rawConn(cc.c), u.br, u.c)
	u.c.Close()
	cc.c.Close()
	<-done
	u.close()
}

// rawConn unwraps a tracked connection so that io.Copy sees the
// *net.TCPConn and can splice.
func rawConn(c net.Conn) net.Conn {
	if tc, ok := c.(*trackedConn); ok {
		return tc.Conn
	}
	return c
}

// pipe copies what br has buffered of src, then src itself, to dst.
// Copying from the connection directly lets the kernel splice TCP.
func pipe(dst net.Conn, br *bufio.Reader, src net.Conn) int64 {
	var n int64
	if b := br.Buffered(); b > 0 {
		p, _ := br.Peek(b)
		w, err := dst.Write(p)
		br.Discard(w)
		n += int64(w)
		if err != nil {
			return n
		}
	}
	w, _ := io.Copy(dst, src)
	return n + w
}

// upgradeH2C switches the connection to HTTP/2 as the client asked with
// Upgrade: h2c; the request becomes the connection's first stream.
func (cc *clientConn) upgradeH2C() {
	settings, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(string(cc.req.value(fHTTP2Settings)), "="))
	if err != nil {
		cc.writeError(http.StatusBadRequest, "malformed HTTP2-Settings", true)
		return
	}
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(string(cc.req.raw))))
	if err != nil {
		cc.writeError(http.StatusBadRequest, err.Error(), true)
		return
	}
	r.RemoteAddr = cc.remote
	cc.c.SetWriteDeadline(time.Now().Add(cc.s.ReadHeaderTimeout))
	cc.bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
	if err := cc.bw.Flush(); err != nil {
		return
	}
	cc.c.SetDeadline(time.Time{})
	br := cc.br
	cc.br = nil
	cc.s.serveH2CUpgrade(&bufferedConn{Conn: cc.c, r: br}, r, settings)
}
