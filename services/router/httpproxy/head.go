package httpproxy

import (
	"bufio"
	"errors"
	"io"
)

// span is a range of a head's raw bytes.
type span struct{ start, end int }

// field is one header field of a head.
type field struct {
	name, value span
	kind        fieldKind
	// drop is set for hop-by-hop fields and those the proxy writes itself.
	drop bool
}

// fieldKind names the fields the proxy reads or rewrites; the others are
// copied as they came.
type fieldKind uint8

const (
	fOther fieldKind = iota
	fHost
	fContentLength
	fTransferEncoding
	fConnection
	fKeepAlive
	fProxyConnection
	fTE
	fTrailer
	fUpgrade
	fProxyAuthenticate
	fProxyAuthorization
	fXForwardedFor
	fXForwardedProto
	fXForwardedHost
	fXForwardedPort
	fXRequestID
	fExpect
	fCookie
	fHTTP2Settings
)

var fieldNames = [...]string{
	fHost:               "host",
	fContentLength:      "content-length",
	fTransferEncoding:   "transfer-encoding",
	fConnection:         "connection",
	fKeepAlive:          "keep-alive",
	fProxyConnection:    "proxy-connection",
	fTE:                 "te",
	fTrailer:            "trailer",
	fUpgrade:            "upgrade",
	fProxyAuthenticate:  "proxy-authenticate",
	fProxyAuthorization: "proxy-authorization",
	fXForwardedFor:      "x-forwarded-for",
	fXForwardedProto:    "x-forwarded-proto",
	fXForwardedHost:     "x-forwarded-host",
	fXForwardedPort:     "x-forwarded-port",
	fXRequestID:         "x-request-id",
	fExpect:             "expect",
	fCookie:             "cookie",
	fHTTP2Settings:      "http2-settings",
}

// kindsByLen lists the known field kinds by name length, so that
// classifying a name costs at most a few comparisons.
var kindsByLen [24][]fieldKind

func init() {
	for k, n := range fieldNames {
		if n != "" {
			kindsByLen[len(n)] = append(kindsByLen[len(n)], fieldKind(k))
		}
	}
}

func classify(name []byte) fieldKind {
	if len(name) >= len(kindsByLen) {
		return fOther
	}
	for _, k := range kindsByLen[len(name)] {
		if equalFoldLower(name, fieldNames[k]) {
			return k
		}
	}
	return fOther
}

// equalFoldLower compares b to lower, which is in lower case, ignoring
// the case of ASCII letters in b.
func equalFoldLower(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// head is a request or response head as read, kept as spans into raw so
// that forwarding copies bytes instead of building strings.
type head struct {
	raw []byte
	// first is the start line's three parts: method, target, version of a
	// request; version, status, reason of a response.
	first  [3]span
	fields []field
	minor  int // the x of HTTP/1.x
	status int

	contentLength  int64 // -1 when there is none
	chunked        bool
	close          bool // the sender will not send another message
	upgrade        bool // Connection: upgrade with an Upgrade field
	expectContinue bool
	// identityTE is a response body delimited by the connection's end.
	identityTE bool
}

// errMalformed is a head that breaks HTTP/1.1's grammar; the client gets
// a 400 and the connection ends.
type errMalformed string

func (e errMalformed) Error() string { return "malformed HTTP head: " + string(e) }

var errHeadTooLarge = errors.New("HTTP head too large")

func (h *head) bytes(s span) []byte { return h.raw[s.start:s.end] }

func (h *head) reset() {
	h.raw = h.raw[:0]
	h.fields = h.fields[:0]
	h.first = [3]span{}
	h.minor, h.status = 0, 0
	h.contentLength = -1
	h.chunked, h.close, h.upgrade, h.expectContinue, h.identityTE = false, false, false, false, false
}

// read reads one head from br, at most limit bytes. A connection that
// ends before the first byte gives io.EOF.
func (h *head) read(br *bufio.Reader, limit int, request bool) error {
	h.reset()
	for {
		start := len(h.raw)
		for {
			frag, err := br.ReadSlice('\n')
			h.raw = append(h.raw, frag...)
			if len(h.raw) > limit {
				return errHeadTooLarge
			}
			if err == nil {
				break
			}
			if err != bufio.ErrBufferFull {
				if err == io.EOF && len(h.raw) > 0 {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		end := len(h.raw) - 1
		if end > start && h.raw[end-1] == '\r' {
			end--
		}
		if start == 0 {
			if end == 0 && request {
				// A client may send a stray CRLF after a body.
				h.raw = h.raw[:0]
				continue
			}
			if err := h.parseFirst(end, request); err != nil {
				return err
			}
			continue
		}
		if end == start {
			return h.interpret(request)
		}
		if err := h.parseField(start, end); err != nil {
			return err
		}
	}
}

func (h *head) parseFirst(end int, request bool) error {
	line := h.raw[:end]
	sp1 := indexByte2(line, ' ', ' ')
	if sp1 <= 0 {
		return errMalformed("start line")
	}
	rest := line[sp1+1:]
	sp2 := indexByte2(rest, ' ', ' ')
	if request {
		if sp2 <= 0 {
			return errMalformed("request line")
		}
		sp2 += sp1 + 1
		h.first = [3]span{{0, sp1}, {sp1 + 1, sp2}, {sp2 + 1, end}}
		for _, c := range h.bytes(h.first[0]) {
			if !isToken(c) {
				return errMalformed("method")
			}
		}
		for _, c := range h.bytes(h.first[1]) {
			if c <= ' ' || c == 0x7f {
				return errMalformed("request target")
			}
		}
		return h.parseVersion(h.bytes(h.first[2]))
	}
	if sp2 < 0 {
		sp2 = len(rest) // a status line may have no reason phrase
	}
	sp2 += sp1 + 1
	h.first = [3]span{{0, sp1}, {sp1 + 1, sp2}, {min(sp2+1, end), end}}
	if err := h.parseVersion(h.bytes(h.first[0])); err != nil {
		return err
	}
	code := h.bytes(h.first[1])
	if len(code) != 3 {
		return errMalformed("status code")
	}
	for _, c := range code {
		if c < '0' || c > '9' {
			return errMalformed("status code")
		}
		h.status = h.status*10 + int(c-'0')
	}
	if h.status < 100 {
		return errMalformed("status code")
	}
	return nil
}

func (h *head) parseVersion(v []byte) error {
	if len(v) != 8 || string(v[:7]) != "HTTP/1." || v[7] < '0' || v[7] > '9' {
		return errMalformed("version")
	}
	h.minor = int(v[7] - '0')
	return nil
}

func (h *head) parseField(start, end int) error {
	line := h.raw[start:end]
	if line[0] == ' ' || line[0] == '\t' {
		return errMalformed("folded header line")
	}
	colon := indexByte2(line, ':', ':')
	if colon <= 0 {
		return errMalformed("header line")
	}
	for _, c := range line[:colon] {
		if !isToken(c) {
			return errMalformed("header name")
		}
	}
	vs, ve := colon+1, len(line)
	for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
		vs++
	}
	for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
		ve--
	}
	for _, c := range line[vs:ve] {
		if c < ' ' && c != '\t' || c == 0x7f {
			return errMalformed("header value")
		}
	}
	h.fields = append(h.fields, field{
		name:  span{start, start + colon},
		value: span{start + vs, start + ve},
		kind:  classify(line[:colon]),
	})
	return nil
}

// interpret works out framing and connection handling from the fields,
// and marks the hop-by-hop ones dropped.
func (h *head) interpret(request bool) error {
	var keepAlive, upgradeToken, hasUpgrade, hasTE, hasHost bool
	for i := range h.fields {
		f := &h.fields[i]
		switch f.kind {
		case fHost:
			// Two hosts would let the proxy and the backend disagree
			// on where a request goes.
			if request && hasHost {
				return errMalformed("more than one host")
			}
			hasHost = true
		case fContentLength:
			n, ok := parseDecimal(h.bytes(f.value))
			if !ok || h.contentLength >= 0 && h.contentLength != n {
				return errMalformed("content-length")
			}
			h.contentLength = n
			f.drop = true // written again from contentLength
		case fTransferEncoding:
			hasTE = true
			f.drop = true
			h.chunked = lastTokenIsChunked(h.bytes(f.value))
		case fConnection:
			f.drop = true
			for tok := range tokens(h.bytes(f.value)) {
				switch {
				case equalFoldLower(tok, "close"):
					h.close = true
				case equalFoldLower(tok, "keep-alive"):
					keepAlive = true
				case equalFoldLower(tok, "upgrade"):
					upgradeToken = true
				default:
					h.dropNamed(tok)
				}
			}
		case fUpgrade:
			hasUpgrade = true
		case fKeepAlive, fProxyConnection, fTE, fProxyAuthenticate, fProxyAuthorization:
			f.drop = true
		case fExpect:
			h.expectContinue = request && equalFoldLower(h.bytes(f.value), "100-continue")
		}
	}
	if h.minor == 0 && !keepAlive {
		h.close = true
	}
	h.upgrade = upgradeToken && hasUpgrade
	if hasTE {
		if request && (!h.chunked || h.minor == 0) {
			return errMalformed("transfer-encoding")
		}
		// RFC 9112 6.1: a transfer coding overrides and forbids Content-Length.
		if request && h.contentLength >= 0 {
			return errMalformed("both transfer-encoding and content-length")
		}
		h.contentLength = -1
		h.identityTE = !h.chunked
	}
	if !h.upgrade {
		for i := range h.fields {
			if h.fields[i].kind == fUpgrade {
				h.fields[i].drop = true
			}
		}
	}
	return nil
}

// dropNamed drops the fields a Connection field names as hop-by-hop.
// Fields the proxy needs for framing or routing stay.
func (h *head) dropNamed(name []byte) {
	for i := range h.fields {
		f := &h.fields[i]
		if f.kind == fOther && equalFoldBytes(h.bytes(f.name), name) {
			f.drop = true
		}
	}
}

// value returns the first field of kind k, nil when there is none.
func (h *head) value(k fieldKind) []byte {
	for i := range h.fields {
		if h.fields[i].kind == k {
			return h.bytes(h.fields[i].value)
		}
	}
	return nil
}

// bodyless reports whether a response to method has no body whatever
// its fields say (RFC 9112 6.3).
func (h *head) bodyless(method []byte) bool {
	return h.status < 200 || h.status == 204 || h.status == 304 || string(method) == "HEAD"
}

// tokens yields the comma-separated elements of a list-valued field.
func tokens(v []byte) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(v) > 0 {
			i := indexByte2(v, ',', ',')
			var tok []byte
			if i < 0 {
				tok, v = v, nil
			} else {
				tok, v = v[:i], v[i+1:]
			}
			tok = trimOWS(tok)
			if len(tok) > 0 && !yield(tok) {
				return
			}
		}
	}
}

func lastTokenIsChunked(v []byte) bool {
	var last []byte
	for tok := range tokens(v) {
		last = tok
	}
	return equalFoldLower(last, "chunked")
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

func equalFoldBytes(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// parseDecimal parses a Content-Length: digits only, at most 18 of them.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func isToken(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '!' || c == '#' || c == '$' || c == '%' || c == '&' || c == '\'' || c == '*' ||
		c == '+' || c == '-' || c == '.' || c == '^' || c == '_' || c == '`' || c == '|' || c == '~'
}
