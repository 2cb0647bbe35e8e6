package httpproxy

import (
	"encoding/binary"
	"encoding/hex"
	"net/http"
	"strconv"

	"github.com/plinth-os/plinth/services/router/backend"
)

// appendRequestHead appends the head sent to the backend: the client's
// fields without hop-by-hop ones, and the forwarding fields.
func (cc *clientConn) appendRequestHead(out, host, path []byte) []byte {
	req := &cc.req
	out = append(out, req.bytes(req.first[0])...)
	out = append(out, ' ')
	out = append(out, path...)
	out = append(out, " HTTP/1.1\r\n"...)
	absolute := len(req.bytes(req.first[1])) > 0 && req.bytes(req.first[1])[0] != '/'
	if absolute {
		out = append(out, "Host: "...)
		out = append(out, host...)
		out = append(out, "\r\n"...)
	}
	for i := range req.fields {
		f := &req.fields[i]
		switch {
		case f.drop, f.kind == fHost && absolute, f.kind == fXForwardedFor, f.kind == fXForwardedProto,
			f.kind == fXForwardedHost, f.kind == fXForwardedPort, f.kind == fXRequestID:
			continue
		}
		out = append(out, req.raw[f.name.start:f.value.end]...)
		out = append(out, "\r\n"...)
	}
	out = append(out, "X-Forwarded-For: "...)
	for i := range req.fields {
		if f := &req.fields[i]; f.kind == fXForwardedFor && !f.drop {
			out = append(out, req.bytes(f.value)...)
			out = append(out, ", "...)
		}
	}
	out = append(out, cc.ip...)
	out = append(out, "\r\nX-Forwarded-Proto: "...)
	if cc.https {
		out = append(out, "https"...)
	} else {
		out = append(out, "http"...)
	}
	out = append(out, "\r\nX-Forwarded-Host: "...)
	out = append(out, host...)
	out = append(out, "\r\nX-Forwarded-Port: "...)
	out = append(out, cc.port...)
	out = append(out, "\r\nX-Request-Id: "...)
	out = append(out, cc.reqID...)
	out = append(out, "\r\n"...)
	switch {
	case req.chunked:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	case req.contentLength >= 0:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, req.contentLength, 10)
		out = append(out, "\r\n"...)
	}
	if req.upgrade {
		out = append(out, "Connection: Upgrade\r\n"...)
	}
	return append(out, "\r\n"...)
}

// appendResponseHead appends the head sent to the client for cc.resp.
func (cc *clientConn) appendResponseHead(out []byte, sticky *backend.Backend, chunked, closeConn bool) []byte {
	resp := &cc.resp
	out = append(out, "HTTP/1.1 "...)
	out = append(out, resp.bytes(resp.first[1])...)
	out = append(out, ' ')
	out = append(out, resp.bytes(resp.first[2])...)
	out = append(out, "\r\n"...)
	for i := range resp.fields {
		f := &resp.fields[i]
		if f.drop || f.kind == fXRequestID {
			continue
		}
		out = append(out, resp.raw[f.name.start:f.value.end]...)
		out = append(out, "\r\n"...)
	}
	if resp.status < 200 {
		if resp.status == http.StatusSwitchingProtocols {
			out = append(out, "Connection: Upgrade\r\n"...)
		}
		return append(out, "\r\n"...)
	}
	switch {
	case chunked:
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	case resp.contentLength >= 0 && resp.status != http.StatusNoContent:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, resp.contentLength, 10)
		out = append(out, "\r\n"...)
	}
	out = append(out, "X-Request-Id: "...)
	out = append(out, cc.reqID...)
	out = append(out, "\r\n"...)
	if sticky != nil {
		out = cc.s.appendStickyCookie(out, sticky)
	}
	if closeConn {
		out = append(out, "Connection: close\r\n"...)
	} else if cc.req.minor == 0 {
		out = append(out, "Connection: keep-alive\r\n"...)
	}
	return append(out, "\r\n"...)
}

// saneRequestID accepts a client's request ID: 1 to 128 printable
// ASCII characters.
func saneRequestID(id []byte) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// newRequestID makes 16 random bytes in hex. The per-connection ChaCha8
// is seeded from crypto/rand, which keeps IDs unguessable without a
// system call per request.
func (cc *clientConn) newRequestID() []byte {
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[:8], cc.rng.Uint64())
	binary.LittleEndian.PutUint64(raw[8:], cc.rng.Uint64())
	hex.Encode(cc.idBuf[:], raw[:])
	return cc.idBuf[:]
}

// splitAbsoluteForm splits "http://host/path" into host and path.
func splitAbsoluteForm(target []byte) (host, path []byte, ok bool) {
	var rest []byte
	switch {
	case len(target) > 7 && equalFoldLower(target[:7], "http://"):
		rest = target[7:]
	case len(target) > 8 && equalFoldLower(target[:8], "https://"):
		rest = target[8:]
	default:
		return nil, nil, false
	}
	i := indexByte2(rest, '/', '?')
	if i < 0 {
		return rest, []byte("/"), len(rest) > 0
	}
	host, path = rest[:i], rest[i:]
	if path[0] == '?' {
		path = append([]byte("/"), path...)
	}
	return host, path, len(host) > 0
}
