package l4

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/services/router/backend"
)

func TestTCPEcho(t *testing.T) {
	sets, bs := newSets(map[string][]string{"svc": {serveTCP(t, echo)}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{ID: "r", Service: "svc"})
	addr := startTCP(t, p, "127.0.0.1:0")

	c := dial(t, addr)
	for _, msg := range []string{"hello", strings.Repeat("x", 1<<20), "bye"} {
		if got := roundTrip(t, c, msg); got != msg {
			t.Fatalf("echo of %d bytes came back as %d bytes", len(msg), len(got))
		}
	}
	wantActive(t, 1, bs["svc"]...)
	c.Close()
	shutdown(t, p)
	wantActive(t, 0, bs["svc"]...)
	if n := bs["svc"][0].Total(); n != 1 {
		t.Errorf("backend total %d, want 1", n)
	}
}

// A client that shuts down its sending side still gets the answer the
// backend sends after reading to EOF.
func TestTCPHalfClose(t *testing.T) {
	sets, _ := newSets(map[string][]string{"svc": {serveTCP(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	})}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc"})
	c := dial(t, startTCP(t, p, "127.0.0.1:0"))

	const size = 3 << 20
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	if len(reply) != 8 || binary.BigEndian.Uint64(reply) != size {
		t.Fatalf("backend's answer %x, want it to count %d bytes", reply, size)
	}
}

func TestTCPRetryPastDeadBackend(t *testing.T) {
	dead := deadAddr(t)
	sets, bs := newSets(map[string][]string{"svc": {dead, serveTCP(t, echo), dead}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc"})
	addr := startTCP(t, p, "127.0.0.1:0")

	for i := range 10 {
		c := dial(t, addr)
		if got := roundTrip(t, c, "ping"); got != "ping" {
			t.Fatalf("connection %d: got %q", i, got)
		}
		c.Close()
	}
	shutdown(t, p)
	wantActive(t, 0, bs["svc"]...)
	if n := bs["svc"][1].Total(); n != 10 {
		t.Errorf("live backend took %d connections, want 10", n)
	}
}

// Every backend dead: the client is closed, and the counts of the
// attempts are all released.
func TestTCPAllBackendsDead(t *testing.T) {
	sets, bs := newSets(map[string][]string{"svc": {deadAddr(t), deadAddr(t), deadAddr(t), deadAddr(t)}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc"})
	c := dial(t, startTCP(t, p, "127.0.0.1:0"))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read: %v, want EOF", err)
	}
	shutdown(t, p)
	wantActive(t, 0, bs["svc"]...)
	var tries uint64
	for _, b := range bs["svc"] {
		tries += b.Total()
	}
	if tries != dialAttempts {
		t.Errorf("%d dials, want %d", tries, dialAttempts)
	}
}

// named answers every connection with its name.
func named(name string) func(*net.TCPConn) {
	return func(c *net.TCPConn) { c.Write([]byte(name)) }
}

func TestTCPLeader(t *testing.T) {
	sets, bs := newSets(map[string][]string{"db": {serveTCP(t, named("a")), serveTCP(t, named("b"))}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "db", Leader: true})
	addr := startTCP(t, p, "127.0.0.1:0")

	withLeader := func(leader *backend.Backend) {
		sets.Replace(map[string]*backend.Set{"db": {Service: "db", Backends: bs["db"], Leader: leader}})
	}
	withLeader(bs["db"][1])
	for range 4 {
		c := dial(t, addr)
		if got, _ := io.ReadAll(c); string(got) != "b" {
			t.Fatalf("got %q, want the leader b", got)
		}
		c.Close()
	}

	// No leader: the connection is closed at once, not left waiting for
	// one.
	withLeader(nil)
	c := dial(t, addr)
	c.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("without a leader: read %d bytes, %v; want EOF", n, err)
	}
	shutdown(t, p)
	wantActive(t, 0, bs["db"]...)
	if n := bs["db"][0].Total(); n != 0 {
		t.Errorf("the follower got %d connections", n)
	}
}

// selfSigned makes a certificate for name that a client can trust
// directly.
func selfSigned(t testing.TB, name string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, cert
}

func TestTCPTLSTermination(t *testing.T) {
	received := make(chan string, 1)
	sets, _ := newSets(map[string][]string{"svc": {serveTCP(t, func(c *net.TCPConn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		received <- line
		c.Write([]byte("ok\n"))
	})}})
	certs := map[string]tls.Certificate{}
	roots := x509.NewCertPool()
	for _, name := range []string{"a.example", "b.example"} {
		c, x := selfSigned(t, name)
		certs[name] = c
		roots.AddCert(x)
	}
	cfg := &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, ok := certs[h.ServerName]
		if !ok {
			return nil, errors.New("unknown server name")
		}
		return &c, nil
	}}
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc", TLS: cfg})
	addr := startTCP(t, p, "127.0.0.1:0")

	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "b.example", RootCAs: roots})
	if err != nil {
		t.Fatalf("handshake with SNI b.example: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	if got := c.ConnectionState().PeerCertificates[0].Subject.CommonName; got != "b.example" {
		t.Errorf("served the certificate of %s", got)
	}
	if _, err := c.Write([]byte("plain text\n")); err != nil {
		t.Fatal(err)
	}
	if got := <-received; got != "plain text\n" {
		t.Errorf("backend received %q, want the plaintext", got)
	}
	if reply, err := bufio.NewReader(c).ReadString('\n'); reply != "ok\n" {
		t.Errorf("reply %q, %v", reply, err)
	}
}

// A client that never finishes the handshake does not get a backend.
func TestTCPTLSHandshakeTimeout(t *testing.T) {
	sets, bs := newSets(map[string][]string{"svc": {serveTCP(t, echo)}})
	cert, _ := selfSigned(t, "a.example")
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc", TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, HandshakeTimeout: 50 * time.Millisecond})
	c := dial(t, startTCP(t, p, "127.0.0.1:0"))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("read: %v, want EOF after the handshake timeout", err)
	}
	if n := bs["svc"][0].Total(); n != 0 {
		t.Errorf("backend got %d connections", n)
	}
}

// parseProxyHeader reads a PROXY protocol v2 header of TCP over IP from
// r, written out here from the specification rather than with the
// proxy's own code.
func parseProxyHeader(t testing.TB, r io.Reader) (src, dst netip.AddrPort) {
	t.Helper()
	fixed := make([]byte, 16)
	if _, err := io.ReadFull(r, fixed); err != nil {
		t.Fatalf("read header: %v", err)
	}
	if string(fixed[:12]) != "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A" {
		t.Fatalf("signature %q", fixed[:12])
	}
	if fixed[12] != 0x21 {
		t.Fatalf("version/command %#x, want 0x21 (v2, PROXY)", fixed[12])
	}
	body := make([]byte, binary.BigEndian.Uint16(fixed[14:16]))
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("read addresses: %v", err)
	}
	var ipLen int
	switch fixed[13] {
	case 0x11:
		ipLen = 4
	case 0x21:
		ipLen = 16
	default:
		t.Fatalf("family/protocol %#x, want TCP over IPv4 or IPv6", fixed[13])
	}
	if len(body) < 2*ipLen+4 {
		t.Fatalf("address block of %d bytes", len(body))
	}
	srcIP, _ := netip.AddrFromSlice(body[:ipLen])
	dstIP, _ := netip.AddrFromSlice(body[ipLen : 2*ipLen])
	ports := body[2*ipLen:]
	return netip.AddrPortFrom(srcIP, binary.BigEndian.Uint16(ports)),
		netip.AddrPortFrom(dstIP, binary.BigEndian.Uint16(ports[2:]))
}

func TestTCPProxyProtocol(t *testing.T) {
	for _, tc := range []struct{ name, listen string }{
		{"ipv4", "127.0.0.1:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type header struct{ src, dst netip.AddrPort }
			got := make(chan header, 1)
			sets, _ := newSets(map[string][]string{"svc": {serveTCP(t, func(c *net.TCPConn) {
				var h header
				h.src, h.dst = parseProxyHeader(t, c)
				got <- h
				echo(c)
			})}})
			p := &TCPProxy{Backends: sets}
			p.SetRoute(&TCPRoute{Service: "svc", ProxyProtocol: true})
			c := dial(t, startTCP(t, p, tc.listen))

			if reply := roundTrip(t, c, "after the header"); reply != "after the header" {
				t.Fatalf("echo %q", reply)
			}
			h := <-got
			client := c.LocalAddr().(*net.TCPAddr).AddrPort()
			proxy := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			if h.src != client || h.dst != proxy {
				t.Errorf("header says %v -> %v, want %v -> %v", h.src, h.dst, client, proxy)
			}
		})
	}
}

// A connection between an IPv4 and an IPv6 address goes as IPv6, the
// IPv4 side mapped.
func TestProxyHeaderMixedFamilies(t *testing.T) {
	src := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000}
	dst := &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 25}
	gotSrc, gotDst := parseProxyHeader(t, strings.NewReader(string(proxyHeader(src, dst))))
	if gotSrc != netip.MustParseAddrPort("[::ffff:192.0.2.1]:1000") || gotDst != netip.MustParseAddrPort("[2001:db8::1]:25") {
		t.Errorf("header says %v -> %v", gotSrc, gotDst)
	}
}

// The counts drains wait on return to 0 however a connection ends.
func TestTCPCountsReleased(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, c *net.TCPConn)
	}{
		{"client closes", func(t *testing.T, c *net.TCPConn) {
			c.Close()
		}},
		{"client half-closes, then backend", func(t *testing.T, c *net.TCPConn) {
			c.CloseWrite()
			if _, err := io.ReadAll(c); err != nil {
				t.Fatal(err)
			}
		}},
		{"client resets", func(t *testing.T, c *net.TCPConn) {
			c.SetLinger(0)
			c.Close()
		}},
		{"backend resets", func(t *testing.T, c *net.TCPConn) {
			c.Write([]byte("reset"))
			if _, err := io.ReadAll(c); err == nil {
				t.Log("backend reset arrived as EOF")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets, bs := newSets(map[string][]string{"svc": {serveTCP(t, func(c *net.TCPConn) {
				buf := make([]byte, 5)
				for {
					n, err := c.Read(buf)
					if err != nil {
						c.CloseWrite()
						return
					}
					if string(buf[:n]) == "reset" {
						c.SetLinger(0)
						return
					}
					c.Write(buf[:n])
				}
			})}})
			p := &TCPProxy{Backends: sets}
			p.SetRoute(&TCPRoute{Service: "svc"})
			c := dial(t, startTCP(t, p, "127.0.0.1:0"))
			roundTrip(t, c, "hi")
			wantActive(t, 1, bs["svc"]...)
			tc.end(t, c)
			shutdown(t, p)
			wantActive(t, 0, bs["svc"]...)
		})
	}
}

func TestTCPSetRouteKeepsOpenConnections(t *testing.T) {
	sets, bs := newSets(map[string][]string{
		"old": {serveTCP(t, echo)},
		"new": {serveTCP(t, echo)},
	})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "old"})
	addr := startTCP(t, p, "127.0.0.1:0")

	c := dial(t, addr)
	roundTrip(t, c, "before")
	p.SetRoute(&TCPRoute{Service: "new", IdleTimeout: time.Hour})
	if got := roundTrip(t, c, "after"); got != "after" {
		t.Fatalf("open connection after SetRoute: %q", got)
	}
	c2 := dial(t, addr)
	roundTrip(t, c2, "new")
	wantActive(t, 1, bs["old"][0], bs["new"][0])
}

func TestTCPShutdownWaits(t *testing.T) {
	sets, bs := newSets(map[string][]string{"svc": {serveTCP(t, echo)}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc"})
	addr := startTCP(t, p, "127.0.0.1:0")
	c := dial(t, addr)
	roundTrip(t, c, "hi")

	done := make(chan error, 1)
	go func() { done <- p.Shutdown(context.Background()) }()
	// Still relayed while Shutdown waits.
	for range 20 {
		roundTrip(t, c, "still here")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a connection open", err)
	default:
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Shutdown did not return after the last connection closed")
	}
	wantActive(t, 0, bs["svc"]...)
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("new connection accepted after Shutdown")
	}
}

// Shutdown whose context ends closes the connections left, and their
// counts are released by the time it returns.
func TestTCPShutdownDeadline(t *testing.T) {
	sets, bs := newSets(map[string][]string{"svc": {serveTCP(t, echo)}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc"})
	c := dial(t, startTCP(t, p, "127.0.0.1:0"))
	roundTrip(t, c, "hi")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	wantActive(t, 0, bs["svc"]...)
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("client read: %v, want EOF", err)
	}
}

func TestTCPIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	sets, bs := newSets(map[string][]string{"svc": {serveTCP(t, echo)}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc", IdleTimeout: idle})
	addr := startTCP(t, p, "127.0.0.1:0")

	// Traffic more often than the timeout keeps a connection open.
	busy := dial(t, addr)
	for range 12 {
		roundTrip(t, busy, "tick")
		time.Sleep(idle / 6)
	}

	quiet := dial(t, addr)
	roundTrip(t, quiet, "once")
	start := time.Now()
	if _, err := io.ReadAll(quiet); err != nil {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
	if waited := time.Since(start); waited < idle-20*time.Millisecond {
		t.Errorf("closed after %v idle, want %v", waited, idle)
	}
	busy.Close()
	shutdown(t, p)
	wantActive(t, 0, bs["svc"]...)
}

// Both sockets of a relayed connection have keepalive.
func TestTCPKeepAlive(t *testing.T) {
	sets, _ := newSets(map[string][]string{"svc": {serveTCP(t, echo)}})
	p := &TCPProxy{Backends: sets}
	p.SetRoute(&TCPRoute{Service: "svc"})
	ln, err := ListenTCP(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	defer shutdown(t, p)
	c := dial(t, ln.Addr().String())
	roundTrip(t, c, "hi")

	p.mu.Lock()
	var conn *tcpConn
	for conn = range p.conns {
	}
	p.mu.Unlock()
	conn.mu.Lock()
	defer conn.mu.Unlock()
	for side, s := range map[string]*net.TCPConn{"client": conn.client, "backend": conn.backend} {
		rc, err := s.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var on, idle int
		rc.Control(func(fd uintptr) {
			on, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		})
		if on != 1 || time.Duration(idle)*time.Second != keepAlive.Idle {
			t.Errorf("%s side: keepalive %d, idle %ds; want on, %v", side, on, idle, keepAlive.Idle)
		}
	}
	c.Close()
}
