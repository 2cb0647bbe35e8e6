package httpproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The counts drains wait on return to zero however a request ends.
func TestCountsReturnToZero(t *testing.T) {
	backendDone := make(chan error, 1)
	p, _ := webProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/longpoll":
			// Answers only when the proxy hangs up on it.
			<-r.Context().Done()
			backendDone <- r.Context().Err()
		case "/ok":
			io.WriteString(w, "ok")
		case "/endless":
			// Streams until the proxy hangs up on it.
			chunk := []byte(strings.Repeat("x", 4096))
			for range 100000 {
				if _, err := w.Write(chunk); err != nil {
					break
				}
				w.(http.Flusher).Flush()
			}
			<-r.Context().Done()
			backendDone <- r.Context().Err()
		case "/truncated":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
			brw.Flush()
			c.Close()
		}
	}))
	b := func() (active int64, total uint64) {
		all := p.pool.All()
		return all[0].Active(), all[0].Total()
	}

	resp, body := get(t, p.client(), "http://example.com/ok")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("ok: %s %q", resp.Status, body)
	}
	p.waitIdle(t)
	if _, total := b(); total != 1 {
		t.Errorf("one request counted %d times", total)
	}

	// The client goes away mid-body: the proxy drops the backend
	// connection, and the backend sees its request end.
	r := p.dial(t)
	r.send("GET /endless HTTP/1.1\r\nHost: example.com\r\n\r\n")
	if _, err := http.ReadResponse(r.br, nil); err != nil {
		t.Fatal(err)
	}
	r.c.Close()
	if err := <-backendDone; err == nil {
		t.Errorf("backend request did not end")
	}
	p.waitIdle(t)

	// The client gives up on a long poll: the proxy notices while it
	// waits for the response head, and lets the backend go.
	r = p.dial(t)
	r.send("GET /longpoll HTTP/1.1\r\nHost: example.com\r\n\r\n")
	r.c.Close()
	if err := <-backendDone; err == nil {
		t.Errorf("backend request did not end")
	}
	p.waitIdle(t)

	// The backend dies mid-body: the client's response ends early.
	r = p.dial(t)
	r.send("GET /truncated HTTP/1.1\r\nHost: example.com\r\n\r\n")
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated body: read error %v, want unexpected EOF", err)
	}
	p.waitIdle(t)
	if active, total := b(); active != 0 || total != 4 {
		t.Errorf("after 4 requests: %d active, %d total", active, total)
	}
}

func TestSetTableDuringRequest(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	p, _ := webProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "done")
	}))
	c := p.client()
	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := c.Get("http://example.com/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{resp.StatusCode, string(body), err}
	}()
	<-started
	tab, err := NewTable([]Route{{ID: "other", Domain: "other.example.com", Service: "web"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.SetTable(tab)
	close(release)
	if r := <-res; r.err != nil || r.status != 200 || r.body != "done" {
		t.Errorf("request in flight across SetTable: %d %q %v", r.status, r.body, r.err)
	}
	if resp, _ := get(t, c, "http://example.com/"); resp.StatusCode != 404 {
		t.Errorf("after SetTable: %s, want 404", resp.Status)
	}
	if resp, body := get(t, c, "http://other.example.com/"); resp.StatusCode != 200 || body != "done" {
		t.Errorf("new route: %s %q", resp.Status, body)
	}
}

func TestShutdown(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	be := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "done")
	}))
	s := &Server{}
	s.init()
	p := &testProxy{Server: s}
	p.setServices(map[string][]string{"web": {be.addr()}})
	tab, _ := NewTable([]Route{{ID: "web", Domain: "example.com", Service: "web"}}, nil)
	s.SetTable(tab)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- s.ServeHTTP1(ln) }()

	idle := p.dial(t)
	idle.send("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
	idle.response("GET")

	busy := p.dial(t)
	busy.send("GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n")
	<-started
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	if err := <-served; err != http.ErrServerClosed {
		t.Errorf("ServeHTTP1: %v", err)
	}
	// The idle connection is closed; the busy one finishes its request.
	if _, err := idle.br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: read %v, want EOF", err)
	}
	close(release)
	resp, body := busy.response("GET")
	if resp.StatusCode != 200 || body != "done" || !resp.Close {
		t.Errorf("request in flight: %s %q close=%v", resp.Status, body, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	p.waitIdle(t)
}

// A Shutdown whose context ends first closes what is left.
func TestShutdownDeadline(t *testing.T) {
	started, ended := make(chan struct{}), make(chan struct{})
	be := newBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(ended)
	}))
	s := &Server{}
	s.init()
	p := &testProxy{Server: s}
	p.setServices(map[string][]string{"web": {be.addr()}})
	tab, _ := NewTable([]Route{{ID: "web", Domain: "example.com", Service: "web"}}, nil)
	s.SetTable(tab)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	go s.ServeHTTP1(ln)
	busy := p.dial(t)
	busy.send("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown: %v, want context.Canceled", err)
	}
	if _, err := busy.br.ReadByte(); err == nil {
		t.Errorf("connection in flight still open after Shutdown's deadline")
	}
	// The backend connection is closed too, ending the backend's request.
	<-ended
	p.waitIdle(t)
}
