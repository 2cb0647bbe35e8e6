package discovery

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a resolver on loopback for the agent to forward to. It
// answers a.test with addr, big.test with 100 addresses, and every other
// name with rcode.
type upstream struct {
	addr  netip.AddrPort
	tcp   atomic.Int32 // queries that came over TCP
	mu    sync.Mutex
	names []string
}

func startUpstream(t *testing.T, addr string, rcode int) *upstream {
	t.Helper()
	udp, tcp, err := listenDNS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: netip.MustParseAddrPort(udp.LocalAddr().String())}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
			u.tcp.Add(1)
		}
		u.mu.Lock()
		u.names = append(u.names, req.Question[0].Name)
		u.mu.Unlock()
		resp := new(dns.Msg).SetReply(req)
		resp.RecursionAvailable = true
		hdr := dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}
		switch req.Question[0].Name {
		case "a.test.":
			resp.Answer = []dns.RR{&dns.A{Hdr: hdr, A: net.ParseIP(addr)}}
		case "big.test.":
			for i := range 100 {
				resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, byte(i))})
			}
		default:
			resp.Rcode = rcode
		}
		if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
			resp.Truncate(dns.MinMsgSize)
		}
		w.WriteMsg(resp)
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, srv := range []*dns.Server{{PacketConn: udp, Handler: h}, {Listener: tcp, Handler: h}} {
		wg.Go(func() {
			if err := serveDNS(ctx, srv); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return u
}

// asked is the names the upstream was asked, in order.
func (u *upstream) asked() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.names)
}

// writeResolvConf writes a resolv.conf naming servers; it replaces the
// file as netd does, by renaming a new one over it.
func writeResolvConf(t *testing.T, path string, servers ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# written by the test\nsearch example.org\n")
	for _, s := range servers {
		b.WriteString("nameserver " + s + "\n")
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// testResolver is a resolver of the fixture's names that forwards to
// servers.
func testResolver(t *testing.T, servers []string) *resolver {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	writeResolvConf(t, path, servers...)
	r := &resolver{
		ctx: context.Background(), names: new(atomic.Pointer[table]), ttl: 5,
		fwd:         &forwarder{path: path, timeout: testWait, log: testLogger(t)},
		forwardFrom: DefaultConfig().ForwardFrom,
	}
	r.names.Store(buildTable(fixture()))
	return r
}

// TestForward asks the agent for names outside its zone, over UDP and
// TCP; it forwards them to the resolvers of its resolv.conf.
func TestForward(t *testing.T) {
	up := startUpstream(t, "192.0.2.7", dns.RcodeNameError)
	ctl := newFakeController()
	cfg := testConfig(t, newFakeHost(t, agentHost), ctl)
	writeResolvConf(t, cfg.ResolvConf, up.addr.String())
	a := startAgent(t, cfg)
	addr := a.DNSAddr().String()

	for _, network := range []string{"udp", "tcp"} {
		m := ask(t, network, addr, "a.test.", dns.TypeA)
		want := []string{"a.test.\t60\tIN\tA\t192.0.2.7"}
		if got := answerStrings(m); m.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
			t.Errorf("%s a.test: %s %q, want %q", network, dns.RcodeToString[m.Rcode], got, want)
		}
		if m = ask(t, network, addr, "missing.test.", dns.TypeA); m.Rcode != dns.RcodeNameError {
			t.Errorf("%s missing.test: %s, want the upstream's NXDOMAIN", network, dns.RcodeToString[m.Rcode])
		}
	}
	if n := up.tcp.Load(); n != 2 {
		t.Errorf("upstream got %d queries over TCP, want the 2 that came over TCP", n)
	}

	// A truncated answer reaches the client truncated, and whole when
	// it asks again over TCP.
	if m := ask(t, "udp", addr, "big.test.", dns.TypeA); !m.Truncated {
		t.Errorf("big.test over UDP: not truncated, %d answers", len(m.Answer))
	}
	if m := ask(t, "tcp", addr, "big.test.", dns.TypeA); m.Truncated || len(m.Answer) != 100 {
		t.Errorf("big.test over TCP: truncated %v, %d answers; want 100", m.Truncated, len(m.Answer))
	}

	// netd replaces the file: the next query goes to the new resolver.
	up2 := startUpstream(t, "192.0.2.8", dns.RcodeNameError)
	writeResolvConf(t, cfg.ResolvConf, up2.addr.String())
	m := ask(t, "udp", addr, "a.test.", dns.TypeA)
	if got := answerStrings(m); !slices.Equal(got, []string{"a.test.\t60\tIN\tA\t192.0.2.8"}) {
		t.Errorf("after resolv.conf changed: %q, want the new resolver's answer", got)
	}
}

// A resolver that fails (SERVFAIL, REFUSED, no answer) is passed over
// for the next one.
func TestForwardNextResolver(t *testing.T) {
	failing := startUpstream(t, "192.0.2.1", dns.RcodeServerFailure)
	good := startUpstream(t, "192.0.2.2", dns.RcodeNameError)
	// Nothing listens on a port that was just closed: the query is
	// refused at once (ICMP port unreachable on loopback).
	closed, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	r := testResolver(t, []string{closed.LocalAddr().String(), failing.addr.String(), good.addr.String()})
	req := new(dns.Msg).SetQuestion("other.test.", dns.TypeA)
	resp := r.respond(req, netip.MustParseAddr("127.0.0.1"), false)
	if resp.Rcode != dns.RcodeNameError || resp.Id != req.Id {
		t.Errorf("rcode %s id %d, want the last resolver's NXDOMAIN for id %d", dns.RcodeToString[resp.Rcode], resp.Id, req.Id)
	}
	if !slices.Equal(failing.asked(), []string{"other.test."}) || !slices.Equal(good.asked(), []string{"other.test."}) {
		t.Errorf("asked: failing %q, good %q; want each once", failing.asked(), good.asked())
	}
}

// With no resolver answering in time, the client gets SERVFAIL within
// the forward timeout.
func TestForwardTimeout(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	r := testResolver(t, []string{silent.LocalAddr().String()})
	r.fwd.timeout = 200 * time.Millisecond
	start := time.Now()
	resp := r.respond(new(dns.Msg).SetQuestion("a.test.", dns.TypeA), netip.MustParseAddr("127.0.0.1"), false)
	if resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
	if d := time.Since(start); d > testWait/2 {
		t.Errorf("answered after %s, with a timeout of 200ms", d)
	}
	// And none at all: no resolv.conf.
	r.fwd.path = filepath.Join(t.TempDir(), "missing")
	if resp := r.respond(new(dns.Msg).SetQuestion("a.test.", dns.TypeA), netip.MustParseAddr("127.0.0.1"), false); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("without resolv.conf: rcode %s, want SERVFAIL", dns.RcodeToString[resp.Rcode])
	}
}

// Clients outside ForwardFrom are refused names outside the zone, but
// answered names in it.
func TestForwardRefusedToStrangers(t *testing.T) {
	up := startUpstream(t, "192.0.2.7", dns.RcodeNameError)
	r := testResolver(t, []string{up.addr.String()})
	stranger := netip.MustParseAddr("203.0.113.9")
	if resp := r.respond(new(dns.Msg).SetQuestion("a.test.", dns.TypeA), stranger, false); resp.Rcode != dns.RcodeRefused {
		t.Errorf("a.test from %s: %s, want REFUSED", stranger, dns.RcodeToString[resp.Rcode])
	}
	if asked := up.asked(); len(asked) != 0 {
		t.Errorf("upstream was asked %q", asked)
	}
	if resp := r.respond(new(dns.Msg).SetQuestion("web.plinth.", dns.TypeA), stranger, false); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 2 {
		t.Errorf("web.plinth from %s: %v", stranger, resp)
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3", "172.17.0.5", "192.168.1.1", "fd00::1"} {
		if !r.mayForward(netip.MustParseAddr(ip)) {
			t.Errorf("%s may not use the forwarder", ip)
		}
	}
}

func TestParseResolvConf(t *testing.T) {
	got := parseResolvConf([]byte(`# comment
nameserver 192.0.2.53
nameserver   2001:db8::53
nameserver fe80::1%eth0
nameserver 127.0.0.1:5353
nameserver [::1]:5353
nameserver resolver.example
nameserver
search a.example b.example
options ndots:2
`))
	want := []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.53:53"),
		netip.MustParseAddrPort("[2001:db8::53]:53"),
		netip.MustParseAddrPort("[fe80::1%eth0]:53"),
		netip.MustParseAddrPort("127.0.0.1:5353"),
		netip.MustParseAddrPort("[::1]:5353"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// The agent never forwards to itself.
func TestForwardNotToSelf(t *testing.T) {
	servers := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:53"),
		netip.MustParseAddrPort("[::1]:53"),
		netip.MustParseAddrPort("127.0.0.1:5353"),
		netip.MustParseAddrPort("192.0.2.53:53"),
	}
	f := &forwarder{self: netip.MustParseAddrPort("[::]:53"), log: testLogger(t)}
	want := servers[2:]
	if got := f.withoutSelf(servers); !slices.Equal(got, want) {
		t.Errorf("listening on [::]:53: %v, want %v", got, want)
	}
	f.self = netip.MustParseAddrPort("127.0.0.1:5353")
	want = []netip.AddrPort{servers[0], servers[1], servers[3]}
	if got := f.withoutSelf(servers); !slices.Equal(got, want) {
		t.Errorf("listening on 127.0.0.1:5353: %v, want %v", got, want)
	}
}
