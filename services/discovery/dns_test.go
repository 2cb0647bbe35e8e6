package discovery

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/plinth-os/plinth/services/controller"
)

// answerStrings is the answer section of m in presentation form, sorted.
func answerStrings(m *dns.Msg) []string { return rrStrings(m.Answer) }

// TestDNS asks the agent over real UDP and TCP on loopback, with its
// cache fed by a controller, then with the controller gone.
func TestDNS(t *testing.T) {
	ctl := newFakeController()
	ctl.update(func() { ctl.instances, ctl.services, ctl.hosts = fixture() })
	h := newFakeHost(t, agentHost)
	a := startAgent(t, testConfig(t, h, ctl))
	ctl.waitSynced(t)
	addr := a.DNSAddr().String()

	for _, network := range []string{"udp", "tcp"} {
		m := ask(t, network, addr, "web.plinth.", dns.TypeA)
		want := []string{"web.plinth.\t5\tIN\tA\t10.0.0.1", "web.plinth.\t5\tIN\tA\t10.0.0.2"}
		if got := answerStrings(m); m.Rcode != dns.RcodeSuccess || !m.Authoritative || !slices.Equal(got, want) {
			t.Errorf("%s web A: rcode %s aa %v %q, want NOERROR aa %q", network, dns.RcodeToString[m.Rcode], m.Authoritative, got, want)
		}
		m = ask(t, network, addr, "web.plinth.", dns.TypeSRV)
		if len(m.Answer) != 4 || len(m.Extra) != 3 {
			t.Errorf("%s web SRV: %d answers, %d additional, want 4 and 3:\n%v", network, len(m.Answer), len(m.Extra), m)
		}
		m = ask(t, network, addr, "leader.web.plinth.", dns.TypeA)
		if got := answerStrings(m); !slices.Equal(got, []string{"leader.web.plinth.\t5\tIN\tA\t10.0.0.1"}) {
			t.Errorf("%s leader.web: %q", network, got)
		}
		m = ask(t, network, addr, "controller.plinth.", dns.TypeA)
		if got := answerStrings(m); !slices.Equal(got, []string{"controller.plinth.\t5\tIN\tA\t10.1.0.1"}) {
			t.Errorf("%s controller: %q", network, got)
		}
		m = ask(t, network, addr, "idle.plinth.", dns.TypeA)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
			t.Errorf("%s idle: want NOERROR, no answer, the zone's SOA; got\n%v", network, m)
		}
		m = ask(t, network, addr, "nope.plinth.", dns.TypeA)
		if m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 {
			t.Errorf("%s nope: want NXDOMAIN with the SOA; got\n%v", network, m)
		}
	}

	// The controller goes away: the names keep their last answers.
	ctl.setDown(true)
	for _, network := range []string{"udp", "tcp"} {
		m := ask(t, network, addr, "leader.web.plinth.", dns.TypeA)
		if got := answerStrings(m); !slices.Equal(got, []string{"leader.web.plinth.\t5\tIN\tA\t10.0.0.1"}) {
			t.Errorf("%s leader.web with the controller down: %q", network, got)
		}
	}

	// It comes back with changes, which the answers follow.
	ctl.update(func() {
		ctl.down = false
		ctl.instances = append(ctl.instances, controller.Instance{ID: "h4/web-6/web", Service: "web", Host: "h4", Addr: "10.0.0.6:8080", Healthy: true})
		ctl.services[0].Leader = "h4/web-6/web"
	})
	ctl.waitSynced(t)
	m := ask(t, "udp", addr, "leader.web.plinth.", dns.TypeA)
	if got := answerStrings(m); !slices.Equal(got, []string{"leader.web.plinth.\t5\tIN\tA\t10.0.0.6"}) {
		t.Errorf("leader.web after the controller came back: %q", got)
	}
}

// Before the controller answered once, names in the zone get SERVFAIL,
// not NXDOMAIN, which clients would cache.
func TestDNSBeforeController(t *testing.T) {
	ctl := newFakeController()
	ctl.setDown(true)
	h := newFakeHost(t, agentHost)
	a := startAgent(t, testConfig(t, h, ctl))
	for _, network := range []string{"udp", "tcp"} {
		m := ask(t, network, a.DNSAddr().String(), "web.plinth.", dns.TypeA)
		if m.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s: rcode %s, want SERVFAIL", network, dns.RcodeToString[m.Rcode])
		}
	}
}

// A UDP answer larger than the client takes is truncated with TC set,
// and comes whole over TCP.
func TestDNSTruncation(t *testing.T) {
	ctl := newFakeController()
	ctl.update(func() {
		ctl.services = []controller.Service{{Name: "big"}}
		for i := range 60 {
			ip := netip.AddrFrom4([4]byte{10, 2, 0, byte(i + 1)})
			ctl.instances = append(ctl.instances, controller.Instance{
				ID: "h/" + ip.String() + "/big", Service: "big", Addr: netip.AddrPortFrom(ip, 80).String(), Healthy: true,
			})
		}
	})
	h := newFakeHost(t, agentHost)
	a := startAgent(t, testConfig(t, h, ctl))
	ctl.waitSynced(t)
	addr := a.DNSAddr().String()

	m := ask(t, "udp", addr, "big.plinth.", dns.TypeA)
	if !m.Truncated || len(m.Answer) >= 60 {
		t.Errorf("UDP: truncated %v with %d answers, want TC and fewer than 60", m.Truncated, len(m.Answer))
	}
	m = ask(t, "tcp", addr, "big.plinth.", dns.TypeA)
	if m.Truncated || len(m.Answer) != 60 {
		t.Errorf("TCP: truncated %v with %d answers, want all 60", m.Truncated, len(m.Answer))
	}
	// With EDNS, the client's larger buffer takes more of them.
	c := &dns.Client{Net: "udp", Timeout: testWait}
	q := new(dns.Msg).SetQuestion("big.plinth.", dns.TypeA)
	q.SetEdns0(4096, false)
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 60 || r.IsEdns0() == nil || r.IsEdns0().UDPSize() != maxUDPSize {
		t.Errorf("UDP with EDNS 4096: truncated %v, %d answers, OPT %v; want all 60 in %d bytes", r.Truncated, len(r.Answer), r.IsEdns0(), maxUDPSize)
	}
}

// Malformed or unsupported requests get an error code, never a crash.
func TestDNSBadRequests(t *testing.T) {
	r := testResolver(t, nil)
	client := netip.MustParseAddr("127.0.0.1")

	q := func() *dns.Msg { return new(dns.Msg).SetQuestion("web.plinth.", dns.TypeA) }
	for _, tc := range []struct {
		name  string
		req   *dns.Msg
		rcode int
	}{
		{"two questions", func() *dns.Msg {
			m := q()
			m.Question = append(m.Question, m.Question[0])
			return m
		}(), dns.RcodeFormatError},
		{"no question", func() *dns.Msg { m := q(); m.Question = nil; return m }(), dns.RcodeFormatError},
		{"update", func() *dns.Msg { m := q(); m.Opcode = dns.OpcodeUpdate; return m }(), dns.RcodeNotImplemented},
		{"EDNS version 1", func() *dns.Msg { m := q(); m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1); return m }(), dns.RcodeBadVers},
		{"chaos class", func() *dns.Msg { m := q(); m.Question[0].Qclass = dns.ClassCHAOS; return m }(), dns.RcodeRefused},
		{"zone transfer", func() *dns.Msg { m := q(); m.Question[0].Qtype = dns.TypeAXFR; return m }(), dns.RcodeRefused},
	} {
		resp := r.respond(tc.req, client, false)
		if resp == nil {
			t.Errorf("%s: no answer", tc.name)
			continue
		}
		if resp.Rcode != tc.rcode || resp.Id != tc.req.Id || !resp.Response {
			t.Errorf("%s: rcode %s id %d response %v, want %s id %d", tc.name, dns.RcodeToString[resp.Rcode], resp.Id, resp.Response, dns.RcodeToString[tc.rcode], tc.req.Id)
		}
		if _, err := resp.Pack(); err != nil {
			t.Errorf("%s: answer does not pack: %v", tc.name, err)
		}
	}
	answer := q()
	answer.Response = true
	if resp := r.respond(answer, client, false); resp != nil {
		t.Errorf("an answer was answered: %v", resp)
	}
}
