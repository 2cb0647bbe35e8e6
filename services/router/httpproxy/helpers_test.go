package httpproxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-os/plinth/services/router/backend"
)

// testBackend is an app instance: a net/http server on loopback that
// counts the connections it accepted.
type testBackend struct {
	*httptest.Server
	conns atomic.Int64
}

func newBackend(t testing.TB, h http.Handler) *testBackend {
	t.Helper()
	b := &testBackend{}
	b.Server = httptest.NewUnstartedServer(h)
	b.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			b.conns.Add(1)
		}
	}
	b.Start()
	t.Cleanup(b.Close)
	return b
}

func (b *testBackend) addr() string { return strings.TrimPrefix(b.URL, "http://") }

// testProxy is a Server on a loopback listener.
type testProxy struct {
	*Server
	addr string
	pool backend.Pool
}

// newProxy serves routes; services maps a service to its backends'
// addresses, the instance ID being service/address.
func newProxy(t testing.TB, routes []Route, services map[string][]string) *testProxy {
	t.Helper()
	p := &testProxy{Server: &Server{Backends: &backend.Sets{}, StickyKey: []byte("test key"), clientCheck: 10 * time.Millisecond}}
	p.setServices(services)
	tab, err := NewTable(routes, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.SetTable(tab)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- p.ServeHTTP1(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != http.ErrServerClosed {
			t.Errorf("ServeHTTP1 returned %v, want ErrServerClosed", err)
		}
	})
	return p
}

func (p *testProxy) setServices(services map[string][]string) {
	m := map[string]*backend.Set{}
	for svc, addrs := range services {
		set := &backend.Set{Service: svc}
		for _, a := range addrs {
			set.Backends = append(set.Backends, p.pool.Get(svc+"/"+a, a))
		}
		m[svc] = set
	}
	p.Backends.Replace(m)
}

// waitIdle waits until no backend of the proxy counts work in flight:
// the proxy releases a request just after the client got its response.
func (p *testProxy) waitIdle(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy := ""
		for _, b := range p.pool.All() {
			if n := b.Active(); n != 0 {
				busy = b.Addr
				if n < 0 {
					t.Fatalf("backend %s: %d in flight", b.Addr, n)
				}
			}
		}
		if busy == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %s still counts work in flight", busy)
		}
		time.Sleep(time.Millisecond)
	}
}

// client sends every request to the proxy, whatever the URL's host.
func (p *testProxy) client() *http.Client {
	d := net.Dialer{}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", p.addr)
		},
		DisableCompression: true,
	}}
}

// raw is a client connection for byte-level exchanges.
type raw struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func (p *testProxy) dial(t testing.TB) *raw {
	t.Helper()
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &raw{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *raw) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

// response reads one response to method.
func (r *raw) response(method string) (*http.Response, string) {
	r.t.Helper()
	resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
	if err != nil {
		r.t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	return resp, string(body)
}

func get(t testing.TB, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t testing.TB, names ...string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
