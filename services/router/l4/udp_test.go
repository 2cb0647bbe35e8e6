package l4

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/services/router/backend"
)

// udpEcho is a UDP backend that answers each datagram with its name, a
// colon and the datagram, and remembers what it received.
type udpEcho struct {
	name string
	conn *net.UDPConn

	mu   sync.Mutex
	seen []string
}

func newUDPEcho(t testing.TB, name string) *udpEcho {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	e := &udpEcho{name: name, conn: conn}
	done := make(chan struct{})
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.seen = append(e.seen, string(buf[:n]))
			e.mu.Unlock()
			conn.WriteToUDPAddrPort(append([]byte(name+":"), buf[:n]...), from)
		}
	}()
	return e
}

func (e *udpEcho) addr() string { return e.conn.LocalAddr().String() }

func (e *udpEcho) received(msg string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Contains(e.seen, msg)
}

// startUDP serves p on a new socket at addr ("udp4", "udp") until the
// test ends.
func startUDP(t testing.TB, p *UDPProxy, network, addr string) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(conn) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	})
	return conn
}

func portOf(c *net.UDPConn) uint16 { return c.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

// udpClient is an unconnected socket, so that it sees the source of
// every reply.
func udpClient(t testing.TB, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg to to and returns the reply and where it came from.
func exchange(t testing.TB, c *net.UDPConn, to netip.AddrPort, msg string) (string, netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte(msg), to); err != nil {
		t.Fatalf("send: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, maxDatagram)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("reply to %q: %v", msg, err)
	}
	return string(buf[:n]), from
}

// Several clients, three backends: every client stays on one backend
// for all its datagrams, and the clients spread over the backends.
func TestUDPAffinity(t *testing.T) {
	echoes := []*udpEcho{newUDPEcho(t, "a"), newUDPEcho(t, "b"), newUDPEcho(t, "c")}
	sets, bs := newSets(map[string][]string{"svc": {echoes[0].addr(), echoes[1].addr(), echoes[2].addr()}})
	p := &UDPProxy{Backends: sets}
	p.SetRoute(&UDPRoute{Service: "svc"})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portOf(startUDP(t, p, "udp4", "127.0.0.1:0")))

	clients := make([]*net.UDPConn, 6)
	stuck := map[string]int{}
	for i := range clients {
		clients[i] = udpClient(t, "udp4", "127.0.0.1:0")
	}
	for round := range 20 {
		for i, c := range clients {
			msg := fmt.Sprintf("client %d datagram %d", i, round)
			reply, _ := exchange(t, c, to, msg)
			name, echoed, _ := strings.Cut(reply, ":")
			if echoed != msg {
				t.Fatalf("reply %q to %q", reply, msg)
			}
			key := fmt.Sprint(i)
			if round == 0 {
				stuck[name]++
				stuck[key] = int(name[0])
			} else if int(name[0]) != stuck[key] {
				t.Fatalf("client %d moved from %c to %s", i, stuck[key], name)
			}
		}
	}
	for _, e := range echoes {
		if stuck[e.name] != 2 {
			t.Errorf("backend %s has %d clients, want 2 of 6", e.name, stuck[e.name])
		}
	}
	wantActive(t, 2, bs["svc"]...)
	if n := p.Sessions(); n != 6 {
		t.Errorf("%d sessions, want 6", n)
	}
	p.Close()
	wantActive(t, 0, bs["svc"]...)
}

// A proxy bound to a wildcard address answers from the address the
// client sent to, which on a host with several addresses is not the one
// the kernel would choose.
func TestUDPReplySource(t *testing.T) {
	for _, tc := range []struct {
		name, network, listen string
		clients               []string // client network, client address, proxy address sent to
	}{
		{"ipv4 socket", "udp4", "0.0.0.0:0", []string{"udp4 127.0.0.1:0 127.0.0.2", "udp4 127.0.0.1:0 127.0.0.3"}},
		{"dual-stack socket", "udp", "[::]:0", []string{"udp4 127.0.0.1:0 127.0.0.2", "udp6 [::1]:0 ::1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sets, _ := newSets(map[string][]string{"svc": {newUDPEcho(t, "a").addr()}})
			p := &UDPProxy{Backends: sets}
			p.SetRoute(&UDPRoute{Service: "svc"})
			port := portOf(startUDP(t, p, tc.network, tc.listen))
			for _, cl := range tc.clients {
				f := strings.Fields(cl)
				c := udpClient(t, f[0], f[1])
				to := netip.AddrPortFrom(netip.MustParseAddr(f[2]), port)
				for range 3 {
					reply, from := exchange(t, c, to, "where from")
					if reply != "a:where from" {
						t.Fatalf("reply %q", reply)
					}
					if from.Addr().Unmap() != to.Addr() || from.Port() != to.Port() {
						t.Fatalf("reply from %v, sent to %v", from, to)
					}
				}
			}
		})
	}
}

func TestUDPIdleExpiry(t *testing.T) {
	const idle = 100 * time.Millisecond
	e := newUDPEcho(t, "a")
	sets, bs := newSets(map[string][]string{"svc": {e.addr()}})
	p := &UDPProxy{Backends: sets}
	p.SetRoute(&UDPRoute{Service: "svc", IdleTimeout: idle})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portOf(startUDP(t, p, "udp4", "127.0.0.1:0")))
	c := udpClient(t, "udp4", "127.0.0.1:0")

	exchange(t, c, to, "hello")
	start := time.Now()
	wantActive(t, 1, bs["svc"]...)
	eventually(t, "session expired", func() bool { return bs["svc"][0].Active() == 0 })
	if waited := time.Since(start); waited < idle-10*time.Millisecond {
		t.Errorf("session ended %v after the last datagram, want %v", waited, idle)
	}
	if n := p.Sessions(); n != 0 {
		t.Errorf("%d sessions after expiry", n)
	}
	// The same client starts a new session.
	if reply, _ := exchange(t, c, to, "again"); reply != "a:again" {
		t.Fatalf("after expiry: %q", reply)
	}
	if n := bs["svc"][0].Total(); n != 2 {
		t.Errorf("%d sessions counted, want 2", n)
	}
}

func TestUDPSessionCap(t *testing.T) {
	e := newUDPEcho(t, "a")
	sets, _ := newSets(map[string][]string{"svc": {e.addr()}})
	p := &UDPProxy{Backends: sets, MaxSessions: 2}
	p.SetRoute(&UDPRoute{Service: "svc"})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portOf(startUDP(t, p, "udp4", "127.0.0.1:0")))
	a, b, extra := udpClient(t, "udp4", "127.0.0.1:0"), udpClient(t, "udp4", "127.0.0.1:0"), udpClient(t, "udp4", "127.0.0.1:0")
	exchange(t, a, to, "a1")
	exchange(t, b, to, "b1")

	if _, err := extra.WriteToUDPAddrPort([]byte("one too many"), to); err != nil {
		t.Fatal(err)
	}
	// The proxy reads its socket in order: once a's next datagram is
	// answered, the extra one was handled, and the backend, reading its
	// socket in order too, would have seen it first.
	if reply, _ := exchange(t, a, to, "a2"); reply != "a:a2" {
		t.Fatalf("existing session at the cap: %q", reply)
	}
	if e.received("one too many") {
		t.Error("a session beyond the cap reached the backend")
	}
	if n := p.Dropped(); n != 1 {
		t.Errorf("%d dropped, want 1", n)
	}
	if n := p.Sessions(); n != 2 {
		t.Errorf("%d sessions, want 2", n)
	}
}

// A session whose backend left the set moves to another with its next
// datagram, and the old backend's count is released.
func TestUDPBackendLeaves(t *testing.T) {
	a, b := newUDPEcho(t, "a"), newUDPEcho(t, "b")
	sets, bs := newSets(map[string][]string{"svc": {a.addr()}})
	p := &UDPProxy{Backends: sets}
	p.SetRoute(&UDPRoute{Service: "svc"})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portOf(startUDP(t, p, "udp4", "127.0.0.1:0")))
	c := udpClient(t, "udp4", "127.0.0.1:0")
	if reply, _ := exchange(t, c, to, "1"); reply != "a:1" {
		t.Fatalf("reply %q", reply)
	}

	var pool backend.Pool
	bb := pool.Get("svc/b", b.addr())
	sets.Replace(map[string]*backend.Set{"svc": {Service: "svc", Backends: []*backend.Backend{bb}}})
	for i := range 5 {
		msg := fmt.Sprint(i + 2)
		if reply, _ := exchange(t, c, to, msg); reply != "b:"+msg {
			t.Fatalf("after the backend left: %q", reply)
		}
	}
	wantActive(t, 0, bs["svc"][0])
	wantActive(t, 1, bb)
	if n := p.Sessions(); n != 1 {
		t.Errorf("%d sessions, want 1", n)
	}
}

func TestUDPSetRouteKeepsSessions(t *testing.T) {
	a, b := newUDPEcho(t, "a"), newUDPEcho(t, "b")
	sets, bs := newSets(map[string][]string{"old": {a.addr()}, "new": {b.addr()}})
	p := &UDPProxy{Backends: sets}
	p.SetRoute(&UDPRoute{Service: "old"})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portOf(startUDP(t, p, "udp4", "127.0.0.1:0")))
	live := udpClient(t, "udp4", "127.0.0.1:0")
	if reply, _ := exchange(t, live, to, "1"); reply != "a:1" {
		t.Fatalf("reply %q", reply)
	}

	p.SetRoute(&UDPRoute{Service: "new"})
	if reply, _ := exchange(t, live, to, "2"); reply != "a:2" {
		t.Errorf("live session after SetRoute: %q, want it on a", reply)
	}
	if reply, _ := exchange(t, udpClient(t, "udp4", "127.0.0.1:0"), to, "3"); reply != "b:3" {
		t.Errorf("new session after SetRoute: %q, want it on b", reply)
	}
	wantActive(t, 1, bs["old"][0], bs["new"][0])
}

// A backend that is not listening refuses (ICMP): the session ends, its
// count is released, and the client's next datagram picks another.
func TestUDPRefusedBackend(t *testing.T) {
	dead, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	e := newUDPEcho(t, "a")
	// Round robin's first pick is the second backend.
	sets, bs := newSets(map[string][]string{"svc": {e.addr(), deadAddr}})
	p := &UDPProxy{Backends: sets}
	p.SetRoute(&UDPRoute{Service: "svc"})
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), portOf(startUDP(t, p, "udp4", "127.0.0.1:0")))
	c := udpClient(t, "udp4", "127.0.0.1:0")

	if _, err := c.WriteToUDPAddrPort([]byte("lost"), to); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the refused session ended", func() bool {
		return bs["svc"][1].Total() == 1 && bs["svc"][1].Active() == 0
	})
	if reply, _ := exchange(t, c, to, "next"); reply != "a:next" {
		t.Fatalf("reply %q", reply)
	}
}
