package httpproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// serveTLS adds a TLS listener to p.
func (p *testProxy) serveTLS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.ServeTLS(ln)
	return ln.Addr().String()
}

func tlsClient(ca *testCA, addr string, h2 bool) *http.Client {
	d := net.Dialer{}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.pool},
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		},
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr}
}

func TestTLS(t *testing.T) {
	ca := newCA(t)
	p, be := webProxy(t, http.HandlerFunc(echo))
	tab, err := NewTable([]Route{{ID: "web", Domain: "example.com", Service: "web", Cert: ca.issue(t, "example.com")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.SetTable(tab)
	addr := p.serveTLS(t)

	for _, h2 := range []bool{true, false} {
		c := tlsClient(ca, addr, h2)
		wantProto := map[bool]string{true: "HTTP/2.0", false: "HTTP/1.1"}[h2]
		req, _ := http.NewRequest("GET", "https://example.com/path?q=1", nil)
		req.Header.Set("X-Forwarded-For", "10.1.1.1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e := decodeEcho(t, string(body))
		if resp.Proto != wantProto || e.Path != "/path?q=1" || e.Host != "example.com" {
			t.Errorf("%s: got %s, backend saw %s host %s", wantProto, resp.Proto, e.Path, e.Host)
		}
		if got := e.Header.Get("X-Forwarded-Proto"); got != "https" {
			t.Errorf("%s: X-Forwarded-Proto %q", wantProto, got)
		}
		if got := e.Header.Get("X-Forwarded-For"); got != "10.1.1.1, 127.0.0.1" {
			t.Errorf("%s: X-Forwarded-For %q", wantProto, got)
		}
		if id := e.Header.Get("X-Request-Id"); len(id) != 32 || resp.Header.Get("X-Request-Id") != id {
			t.Errorf("%s: request ID %q, response's %q", wantProto, id, resp.Header.Get("X-Request-Id"))
		}

		// Bodies of known and unknown length.
		resp, err = c.Post("https://example.com/up", "text/plain", strings.NewReader("sized"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if e := decodeEcho(t, string(body)); e.Body != "sized" {
			t.Errorf("%s: POST body %q", wantProto, e.Body)
		}
		pr, pw := io.Pipe()
		go func() {
			io.WriteString(pw, "streamed ")
			io.WriteString(pw, "body")
			pw.Close()
		}()
		resp, err = c.Post("https://example.com/up", "text/plain", pr)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if e := decodeEcho(t, string(body)); e.Body != "streamed body" {
			t.Errorf("%s: streamed POST body %q", wantProto, e.Body)
		}
		c.CloseIdleConnections()
	}
	// HTTP/2 and HTTP/1.1 share the pool: six sequential requests, one
	// backend connection.
	if n := be.conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
	p.waitIdle(t)
}

func TestSNI(t *testing.T) {
	ca := newCA(t)
	exact := ca.issue(t, "shop.example.com")
	wild := ca.issue(t, "*.example.com")
	deep := ca.issue(t, "*.eu.example.com")
	def := ca.issue(t, "default.invalid")
	p := newProxy(t, nil, nil)
	tab, err := NewTable([]Route{
		{ID: "shop", Domain: "shop.example.com", Path: "/", Cert: exact},
		// Another certificate for the same domain: the first route's wins.
		{ID: "shop-api", Domain: "shop.example.com", Path: "/api", Cert: ca.issue(t, "second.invalid")},
		{ID: "wild", Domain: "*.example.com", Cert: wild},
		{ID: "deep", Domain: "*.eu.example.com", Cert: deep},
		{ID: "nocert", Domain: "plain.example.org"},
	}, def)
	if err != nil {
		t.Fatal(err)
	}
	p.SetTable(tab)
	addr := p.serveTLS(t)
	for _, tc := range []struct{ name, want string }{
		{"shop.example.com", "shop.example.com"},
		{"SHOP.example.com", "shop.example.com"},
		{"www.example.com", "*.example.com"},
		{"a.b.example.com", "*.example.com"},
		{"x.eu.example.com", "*.eu.example.com"},
		{"plain.example.org", "default.invalid"},
		{"unknown.test", "default.invalid"},
	} {
		conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: tc.name, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := conn.ConnectionState().PeerCertificates[0].DNSNames[0]
		conn.Close()
		if got != tc.want {
			t.Errorf("server name %s: certificate for %s, want %s", tc.name, got, tc.want)
		}
	}
	// Without a default certificate, an unknown name fails the handshake.
	tab, _ = NewTable([]Route{{ID: "wild", Domain: "*.example.com", Cert: wild}}, nil)
	p.SetTable(tab)
	if conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "unknown.test", InsecureSkipVerify: true}); err == nil {
		conn.Close()
		t.Errorf("handshake for an unknown name succeeded without a default certificate")
	}
	// And a verifying client accepts the wildcard's chain.
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "www.example.com", RootCAs: pool})
	if err != nil {
		t.Fatalf("verifying client: %v", err)
	}
	conn.Close()
}

func TestH2CPriorKnowledge(t *testing.T) {
	p, _ := webProxy(t, http.HandlerFunc(echo))
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	d := net.Dialer{}
	c := &http.Client{Transport: &http.Transport{
		Protocols: &protos,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", p.addr)
		},
	}}
	defer c.CloseIdleConnections()
	for i := range 3 {
		resp, body := get(t, c, fmt.Sprintf("http://example.com/%d", i))
		e := decodeEcho(t, body)
		if resp.Proto != "HTTP/2.0" || e.Path != fmt.Sprintf("/%d", i) || e.Header.Get("X-Forwarded-Proto") != "http" {
			t.Errorf("h2c: %s, backend saw %s proto %s", resp.Proto, e.Path, e.Header.Get("X-Forwarded-Proto"))
		}
	}
	p.waitIdle(t)
}

func TestH2CUpgrade(t *testing.T) {
	p, _ := webProxy(t, http.HandlerFunc(echo))
	r := p.dial(t)
	// HTTP2-Settings: an empty SETTINGS payload, base64url.
	r.send("GET /upgraded HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n")
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "h2c" {
		t.Fatalf("h2c upgrade: %v %v", resp, err)
	}
	r.send(h2Preface)
	fr := http2.NewFramer(r.c, r.br)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	status, body := "", &bytes.Buffer{}
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
		if f.Name == ":status" {
			status = f.Value
		}
	})
	for range 20 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading frames: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if _, err := dec.Write(f.HeaderBlockFragment()); err != nil {
				t.Fatal(err)
			}
		case *http2.DataFrame:
			body.Write(f.Data())
			if f.StreamEnded() {
				e := decodeEcho(t, body.String())
				if status != "200" || e.Path != "/upgraded" {
					t.Errorf("stream 1: status %s, backend saw %s", status, e.Path)
				}
				p.waitIdle(t)
				return
			}
		}
	}
	t.Fatalf("no end of stream 1 in 20 frames; status %q body %q", status, body)
}

// An HTTP/2 client that gives up on a long poll lets the backend go.
func TestH2ClientGone(t *testing.T) {
	ca := newCA(t)
	started, ended := make(chan struct{}), make(chan struct{})
	p, _ := webProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(ended)
	}))
	tab, err := NewTable([]Route{{ID: "web", Domain: "example.com", Service: "web", Cert: ca.issue(t, "example.com")}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.SetTable(tab)
	c := tlsClient(ca, p.serveTLS(t), true)
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://example.com/poll", nil)
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("request answered: %s", resp.Status)
	}
	<-ended
	p.waitIdle(t)
}
