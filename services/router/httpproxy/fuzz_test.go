package httpproxy

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// FuzzRequestHead feeds arbitrary bytes to the head parser: it must not
// panic, and what it accepts must be consistent.
func FuzzRequestHead(f *testing.F) {
	f.Add("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
	f.Add("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\nhello")
	f.Add("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
	f.Add("\r\nGET http://a/b HTTP/1.1\nUpgrade: websocket\nConnection: upgrade\n\n")
	f.Fuzz(func(t *testing.T, in string) {
		var h head
		br := bufio.NewReaderSize(strings.NewReader(in), 16)
		if err := h.read(br, 4096, true); err != nil {
			return
		}
		if h.chunked && h.contentLength >= 0 {
			t.Errorf("both chunked and content length %d", h.contentLength)
		}
		for _, f := range h.fields {
			if name := h.bytes(f.name); len(name) == 0 || bytes.ContainsAny(name, " \t\r\n:") {
				t.Errorf("field name %q", name)
			}
			if v := h.bytes(f.value); bytes.ContainsAny(v, "\r\n") {
				t.Errorf("field value %q", v)
			}
		}
	})
}

// FuzzChunked relays arbitrary chunked bodies: no panic, and a body it
// accepts comes out rechunked to the same data.
func FuzzChunked(f *testing.F) {
	f.Add("5\r\nhello\r\n0\r\n\r\n")
	f.Add("3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
	f.Add("ffffffffffffffff\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		var plain, rechunked bytes.Buffer
		r := relay{src: bufio.NewReaderSize(strings.NewReader(in), 16), dst: bufio.NewWriter(&plain)}
		if !r.copyChunked(false) {
			return
		}
		r.dst.Flush()
		r2 := relay{src: bufio.NewReaderSize(strings.NewReader(in), 16), dst: bufio.NewWriter(&rechunked)}
		if !r2.copyChunked(true) {
			t.Fatalf("accepted plain, refused rechunking")
		}
		r2.dst.Flush()
		var again bytes.Buffer
		r3 := relay{src: bufio.NewReader(&rechunked), dst: bufio.NewWriter(&again)}
		if !r3.copyChunked(false) {
			t.Fatalf("own chunked output refused: %q", rechunked.String())
		}
		r3.dst.Flush()
		if again.String() != plain.String() {
			t.Errorf("rechunked data %q, want %q", again.String(), plain.String())
		}
	})
}
