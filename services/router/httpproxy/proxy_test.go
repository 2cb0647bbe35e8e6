package httpproxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// echo answers with what it received, as JSON.
type echoed struct {
	Method, Path, Host, Body string
	Header                   http.Header
	Chunked                  bool
}

func echo(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	e := echoed{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Body: string(body), Header: r.Header,
		Chunked: len(r.TransferEncoding) > 0}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Request-Id", "backend-made-this-up")
	json.NewEncoder(w).Encode(e)
}

func decodeEcho(t *testing.T, body string) echoed {
	t.Helper()
	var e echoed
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("backend answer %q: %v", body, err)
	}
	return e
}

func webProxy(t *testing.T, h http.Handler) (*testProxy, *testBackend) {
	t.Helper()
	be := newBackend(t, h)
	p := newProxy(t, []Route{{ID: "web", Domain: "example.com", Service: "web"}}, map[string][]string{"web": {be.addr()}})
	return p, be
}

func TestGetAndPost(t *testing.T) {
	p, _ := webProxy(t, http.HandlerFunc(echo))
	c := p.client()

	resp, body := get(t, c, "http://example.com/hello?x=1")
	if resp.StatusCode != 200 {
		t.Fatalf("GET: %s %s", resp.Status, body)
	}
	e := decodeEcho(t, body)
	if e.Method != "GET" || e.Path != "/hello?x=1" || e.Host != "example.com" {
		t.Errorf("backend got %s %s host %s", e.Method, e.Path, e.Host)
	}

	resp, err := c.Post("http://example.com/form", "text/plain", strings.NewReader("content-length body"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if e := decodeEcho(t, string(b)); e.Body != "content-length body" || e.Chunked {
		t.Errorf("POST with length: backend got %q chunked=%v", e.Body, e.Chunked)
	}

	// A reader of unknown length makes the client send chunks.
	pr, pw := io.Pipe()
	go func() {
		for i := range 3 {
			fmt.Fprintf(pw, "chunk %d;", i)
		}
		pw.Close()
	}()
	resp, err = c.Post("http://example.com/stream", "text/plain", pr)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if e := decodeEcho(t, string(b)); e.Body != "chunk 0;chunk 1;chunk 2;" || !e.Chunked {
		t.Errorf("chunked POST: backend got %q chunked=%v", e.Body, e.Chunked)
	}
	p.waitIdle(t)
}

func TestResponseFraming(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 10000)
	p, _ := webProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			for i := range 3 {
				fmt.Fprintf(w, "part %d;", i)
				w.(http.Flusher).Flush()
			}
		case "/trailer":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "body")
			w.(http.Flusher).Flush()
			w.Header().Set("X-Sum", "42")
		case "/big":
			w.Header().Set("Content-Length", fmt.Sprint(len(big)))
			io.WriteString(w, big)
		case "/head":
			w.Header().Set("Content-Length", "1234")
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.Header().Set("ETag", `"x"`)
			w.WriteHeader(http.StatusNotModified)
		}
	}))
	r := p.dial(t)
	// All on one connection: a framing mistake shows in the next response.
	r.send("GET /chunked HTTP/1.1\r\nHost: example.com\r\n\r\n")
	resp, body := r.response("GET")
	if body != "part 0;part 1;part 2;" || len(resp.TransferEncoding) == 0 {
		t.Errorf("chunked: %q, transfer encoding %v", body, resp.TransferEncoding)
	}
	r.send("GET /trailer HTTP/1.1\r\nHost: example.com\r\n\r\n")
	resp, body = r.response("GET")
	if body != "body" || resp.Trailer.Get("X-Sum") != "42" {
		t.Errorf("trailer: %q, trailer %v", body, resp.Trailer)
	}
	r.send("GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n")
	resp, body = r.response("GET")
	if body != big || resp.ContentLength != int64(len(big)) {
		t.Errorf("big: %d bytes, content length %d", len(body), resp.ContentLength)
	}
	r.send("HEAD /head HTTP/1.1\r\nHost: example.com\r\n\r\n")
	resp, body = r.response("HEAD")
	if resp.ContentLength != 1234 || body != "" {
		t.Errorf("HEAD: content length %d, body %q", resp.ContentLength, body)
	}
	r.send("GET /204 HTTP/1.1\r\nHost: example.com\r\n\r\n")
	if resp, _ = r.response("GET"); resp.StatusCode != 204 {
		t.Errorf("204: %s", resp.Status)
	}
	r.send("GET /304 HTTP/1.1\r\nHost: example.com\r\n\r\n")
	if resp, _ = r.response("GET"); resp.StatusCode != 304 || resp.Header.Get("ETag") != `"x"` {
		t.Errorf("304: %s %v", resp.Status, resp.Header)
	}
	r.send("GET /chunked HTTP/1.0\r\nHost: example.com\r\n\r\n")
	resp, body = r.response("GET")
	if body != "part 0;part 1;part 2;" || len(resp.TransferEncoding) != 0 || !resp.Close {
		t.Errorf("HTTP/1.0 client: %q, transfer encoding %v, close %v", body, resp.TransferEncoding, resp.Close)
	}
	p.waitIdle(t)
}

func TestExpectContinue(t *testing.T) {
	p, _ := webProxy(t, http.HandlerFunc(echo))
	r := p.dial(t)
	r.send("POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	line, err := r.br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("want 100 Continue before sending the body, got %q, %v", line, err)
	}
	if blank, _ := r.br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("100 Continue: then %q", blank)
	}
	r.send("hello")
	resp, body := r.response("POST")
	if e := decodeEcho(t, body); resp.StatusCode != 200 || e.Body != "hello" {
		t.Errorf("%s, backend got %q", resp.Status, e.Body)
	}
	p.waitIdle(t)
}

func TestKeepAliveReuse(t *testing.T) {
	p, be := webProxy(t, http.HandlerFunc(echo))
	r := p.dial(t)
	for i := range 20 {
		r.send(fmt.Sprintf("POST /%d HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi", i))
		if resp, _ := r.response("POST"); resp.StatusCode != 200 {
			t.Fatalf("request %d: %s", i, resp.Status)
		}
	}
	// Sequential requests through other client connections too.
	c := p.client()
	for range 5 {
		get(t, c, "http://example.com/")
	}
	if n := be.conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections for 25 sequential requests, want 1", n)
	}
}

func TestForwardedHeaders(t *testing.T) {
	p, _ := webProxy(t, http.HandlerFunc(echo))
	_, port, _ := net.SplitHostPort(p.addr)
	r := p.dial(t)
	r.send("GET / HTTP/1.1\r\nHost: Example.com:8443\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n" +
		"X-Request-Id: abc-123\r\nConnection: X-Secret, keep-alive\r\nX-Secret: hop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n")
	resp, body := r.response("GET")
	e := decodeEcho(t, body)
	for k, want := range map[string]string{
		"X-Forwarded-For":   "10.0.0.1, 127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Host":  "Example.com:8443",
		"X-Forwarded-Port":  port,
		"X-Request-Id":      "abc-123",
		"X-Kept":            "yes",
		"X-Secret":          "",
		"Keep-Alive":        "",
		"Te":                "",
		"Connection":        "",
	} {
		if got := strings.Join(e.Header[k], "|"); got != want {
			t.Errorf("backend got %s %q, want %q", k, got, want)
		}
	}
	if got := resp.Header.Values("X-Request-Id"); len(got) != 1 || got[0] != "abc-123" {
		t.Errorf("response X-Request-Id %q, want the request's", got)
	}

	// No ID, or a silly one: the proxy makes one.
	for _, id := range []string{"", "X-Request-Id: " + strings.Repeat("x", 129) + "\r\n", "X-Request-Id: a b\r\n"} {
		r.send("GET / HTTP/1.1\r\nHost: example.com\r\n" + id + "\r\n")
		resp, body := r.response("GET")
		e := decodeEcho(t, body)
		got := e.Header.Get("X-Request-Id")
		if len(got) != 32 || strings.Trim(got, "0123456789abcdef") != "" || resp.Header.Get("X-Request-Id") != got {
			t.Errorf("sent %q: backend got ID %q, client %q", id, got, resp.Header.Get("X-Request-Id"))
		}
	}
}

func TestErrorResponses(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	be := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	// A backend that takes the connection and closes it unanswered.
	rude, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rude.Close()
	go func() {
		for {
			c, err := rude.Accept()
			if err != nil {
				return
			}
			go func() {
				bufio.NewReader(c).ReadString('\n')
				c.Close()
			}()
		}
	}()
	p := newProxy(t, []Route{
		{ID: "slow", Domain: "slow.example.com", Service: "slow", Timeout: 100 * time.Millisecond},
		{ID: "rude", Domain: "rude.example.com", Service: "rude"},
		{ID: "empty", Domain: "empty.example.com", Service: "empty"},
	}, map[string][]string{"slow": {be.addr()}, "rude": {rude.Addr().String()}, "empty": {}})
	c := p.client()
	for _, tc := range []struct {
		url    string
		status int
		body   string
	}{
		{"http://nowhere.example.org/x", 404, "no route for nowhere.example.org/x\n"},
		{"http://empty.example.com/", 503, "no healthy instance of service empty\n"},
		{"http://rude.example.com/", 502, "service rude failed to answer\n"},
		{"http://slow.example.com/", 504, "service slow did not answer in time\n"},
	} {
		resp, body := get(t, c, tc.url)
		if resp.StatusCode != tc.status || body != tc.body {
			t.Errorf("GET %s: %d %q, want %d %q", tc.url, resp.StatusCode, body, tc.status, tc.body)
		}
	}
	p.waitIdle(t)
}

func TestRetryDeadBackend(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	be := newBackend(t, http.HandlerFunc(echo))
	p := newProxy(t, []Route{{ID: "web", Domain: "example.com", Service: "web"}},
		map[string][]string{"web": {deadAddr, be.addr(), deadAddr}})
	c := p.client()
	for i := range 10 {
		// POST too: nothing was sent when the connection failed.
		resp, err := c.Post("http://example.com/", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %s", i, resp.Status)
		}
	}
	p.waitIdle(t)
	for _, b := range p.pool.All() {
		if b.Addr == deadAddr && b.Total() == 0 {
			t.Errorf("the dead backend was never tried")
		}
	}
}

// A backend that closes a kept-alive connection just as the proxy reuses
// it: the request goes again on a new connection.
func TestRetryStaleConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Each connection answers one request, keeping the connection open
	// until the next request arrives, then closes without answering.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				br.Peek(1)
			}()
		}
	}()
	p := newProxy(t, []Route{{ID: "web", Domain: "example.com", Service: "web"}}, map[string][]string{"web": {ln.Addr().String()}})
	c := p.client()
	for i := range 5 {
		if resp, body := get(t, c, "http://example.com/"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %s %q", i, resp.Status, body)
		}
	}
	p.waitIdle(t)
}

// A backend that dies with requests on new connections (it reads them
// and closes, answering nothing): an idempotent request goes to another
// backend, a POST is answered 502, as it may have been done.
func TestRetryBackendDiedWithRequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				http.ReadRequest(bufio.NewReader(c))
			}()
		}
	}()
	good := newBackend(t, http.HandlerFunc(echo))
	p := newProxy(t, []Route{{ID: "web", Domain: "example.com", Service: "web"}},
		map[string][]string{"web": {ln.Addr().String(), good.addr()}})
	c := p.client()
	for i := range 6 {
		if resp, _ := get(t, c, "http://example.com/"); resp.StatusCode != 200 {
			t.Fatalf("GET %d: %s, want it answered by the other backend", i, resp.Status)
		}
	}
	failed := 0
	for range 6 {
		resp, err := c.Post("http://example.com/", "text/plain", strings.NewReader("once"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusBadGateway {
			failed++
		}
	}
	if failed == 0 {
		t.Error("no POST went to the dying backend, or one was sent twice")
	}
	p.waitIdle(t)
}

// A response slower than the client checks (10 ms in tests) is waited
// for: the checks are not the route's timeout.
func TestSlowResponseOutlastsClientChecks(t *testing.T) {
	be := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(100 * time.Millisecond)
		io.WriteString(w, "late")
	}))
	p := newProxy(t, []Route{{ID: "web", Domain: "example.com", Service: "web"}}, map[string][]string{"web": {be.addr()}})
	if resp, body := get(t, p.client(), "http://example.com/"); resp.StatusCode != 200 || body != "late" {
		t.Fatalf("slow response: %s %q", resp.Status, body)
	}
	p.waitIdle(t)
}

func TestSticky(t *testing.T) {
	var addrs []string
	for i := range 3 {
		be := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, i)
		}))
		addrs = append(addrs, be.addr())
	}
	p := newProxy(t, []Route{{ID: "app", Domain: "example.com", Service: "app", Sticky: true}}, map[string][]string{"app": addrs})
	c := p.client()
	resp, first := get(t, c, "http://example.com/")
	cookies := resp.Cookies()
	if len(cookies) != 1 || cookies[0].Name != stickyCookie || !cookies[0].HttpOnly || cookies[0].Path != "/" || cookies[0].SameSite != http.SameSiteLaxMode {
		t.Fatalf("first response's cookies: %v", resp.Header["Set-Cookie"])
	}
	for range 10 {
		req, _ := http.NewRequest("GET", "http://example.com/", nil)
		req.AddCookie(&http.Cookie{Name: "other", Value: "1"})
		req.AddCookie(cookies[0])
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != first || len(resp.Cookies()) != 0 {
			t.Fatalf("with the cookie: backend %s (want %s), cookies %v", body, first, resp.Header["Set-Cookie"])
		}
	}

	// A cookie naming an instance without the router's signature is
	// ignored: round robin, and a new cookie.
	forged := p.stickyValue("app/" + addrs[2])
	forged = forged[:len(forged)-2] + "AA"
	seen := map[string]bool{}
	for range 6 {
		req, _ := http.NewRequest("GET", "http://example.com/", nil)
		req.AddCookie(&http.Cookie{Name: stickyCookie, Value: forged})
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[string(body)] = true
		if len(resp.Cookies()) != 1 {
			t.Fatalf("forged cookie: response cookies %v, want a new one", resp.Header["Set-Cookie"])
		}
	}
	if len(seen) != 3 {
		t.Errorf("forged cookie: requests went to %v, want round robin over 3", seen)
	}

	// The cookie's instance left the set: another is picked and the
	// cookie replaced.
	var rest []string
	for i, a := range addrs {
		if fmt.Sprint(i) != first {
			rest = append(rest, a)
		}
	}
	p.setServices(map[string][]string{"app": rest})
	req, _ := http.NewRequest("GET", "http://example.com/", nil)
	req.AddCookie(cookies[0])
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(resp.Cookies()) != 1 || resp.Cookies()[0].Value == cookies[0].Value {
		t.Errorf("instance gone: %s, cookies %v", resp.Status, resp.Header["Set-Cookie"])
	}
}

func TestUpgrade(t *testing.T) {
	// A websocket-like backend: 101, then echo.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Header.Get("Upgrade") != "echo" || !strings.EqualFold(req.Header.Get("Connection"), "upgrade") {
					io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
					return
				}
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
				io.Copy(c, br)
			}()
		}
	}()
	p := newProxy(t, []Route{{ID: "ws", Domain: "example.com", Service: "ws"}}, map[string][]string{"ws": {ln.Addr().String()}})
	r := p.dial(t)
	r.send("GET /socket HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\n")
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	for _, msg := range []string{"hello", "world"} {
		r.send(msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(r.br, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo of %q: %q %v", msg, buf, err)
		}
	}
	b := p.pool.All()[0]
	if n := b.Active(); n != 1 {
		t.Errorf("an upgraded connection counts %d on its backend, want 1", n)
	}
	r.c.Close()
	p.waitIdle(t)
}

func TestBadRequests(t *testing.T) {
	p, _ := webProxy(t, http.HandlerFunc(echo))
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: example.com\r\n folded: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
		"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: example.com\r\nHost: other.example.com\r\n\r\n",
		"POST / HTTP/1.0\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\n",
		"GET / HTTP/2.0\r\nHost: example.com\r\n\r\n",
	} {
		r := p.dial(t)
		r.send(req)
		resp, _ := r.response("GET")
		if resp.StatusCode != 400 || !resp.Close {
			t.Errorf("%q: %s close=%v, want 400 and close", req, resp.Status, resp.Close)
		}
	}
	r := p.dial(t)
	r.send("GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n")
	if resp, _ := r.response("GET"); resp.StatusCode != 431 {
		t.Errorf("huge head: %s, want 431", resp.Status)
	}
}

func TestAccessLog(t *testing.T) {
	be := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "hello")
	}))
	entries := make(chan AccessEntry, 10)
	p := newProxy(t, []Route{{ID: "web", Domain: "example.com", Service: "web"}}, map[string][]string{"web": {be.addr()}})
	p.AccessLog = func(e AccessEntry) { entries <- e }
	r := p.dial(t)
	r.send("GET /page?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: rid-1\r\n\r\n")
	// The 103 reaches the client before the response.
	line, _ := r.br.ReadString('\n')
	if line != "HTTP/1.1 103 Early Hints\r\n" {
		t.Errorf("first line %q, want the 103", line)
	}
	for l := ""; l != "\r\n"; l, _ = r.br.ReadString('\n') {
	}
	if resp, body := r.response("GET"); resp.StatusCode != 200 || body != "hello" {
		t.Fatalf("%s %q", resp.Status, body)
	}
	e := <-entries
	if e.Method != "GET" || e.Host != "example.com" || e.Path != "/page?x=1" || e.Status != 200 || e.Bytes != 5 ||
		e.Backend != be.addr() || e.RequestID != "rid-1" || e.Route != "web" || !strings.HasPrefix(e.Client, "127.0.0.1:") || e.Proto != "HTTP/1.1" {
		t.Errorf("access log entry %+v", e)
	}
	r.send("GET / HTTP/1.1\r\nHost: nowhere.example.org\r\n\r\n")
	r.response("GET")
	if e := <-entries; e.Status != 404 || e.Route != "" || e.Backend != "" {
		t.Errorf("404 entry %+v", e)
	}
}

// A backend that closed an idle kept-alive connection: the proxy finds
// out before it sends a POST, which it could not retry, on it.
func TestIdleConnectionClosedByBackend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan struct{}, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
				c.Close()
				closed <- struct{}{}
			}()
		}
	}()
	p := newProxy(t, []Route{{ID: "web", Domain: "example.com", Service: "web"}}, map[string][]string{"web": {ln.Addr().String()}})
	c := p.client()
	for i := range 3 {
		resp, err := c.Post("http://example.com/", "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("POST %d: %s %q", i, resp.Status, body)
		}
		<-closed
		// Make the pooled connection look idle long enough to be checked.
		p.Server.pool.mu.Lock()
		for _, list := range p.Server.pool.idle {
			for _, u := range list {
				u.idleSince = u.idleSince.Add(-staleCheckAfter)
			}
		}
		p.Server.pool.mu.Unlock()
	}
	p.waitIdle(t)
}
