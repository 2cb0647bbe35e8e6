package discovery

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/miekg/dns"
)

// maxUDPSize caps the UDP answers the agent sends, whatever a client's
// EDNS buffer says: larger ones risk IP fragmentation (DNS flag day 2020).
const maxUDPSize = 1232

// resolver answers DNS queries: names in Zone from the table, other
// names by forwarding them to the host's resolvers.
type resolver struct {
	// ctx ends forwarded queries when the agent stops.
	ctx   context.Context
	names *atomic.Pointer[table] // nil until the controller answered once
	ttl   uint32
	fwd   *forwarder
	// forwardFrom are the clients that may use the forwarder.
	forwardFrom []netip.Prefix
}

// ServeDNS answers one query; the dns.Server calls it for each.
func (r *resolver) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	resp := r.respond(req, addrOf(w.RemoteAddr()), tcp)
	if resp != nil {
		w.WriteMsg(resp)
	}
}

// respond is the answer to req from client, or nil when req gets none.
func (r *resolver) respond(req *dns.Msg, client netip.Addr, tcp bool) *dns.Msg {
	if req.Response {
		return nil // never answer an answer: two servers could loop
	}
	resp := new(dns.Msg)
	opt := req.IsEdns0()
	switch {
	case req.Opcode != dns.OpcodeQuery:
		return finish(resp.SetRcode(req, dns.RcodeNotImplemented), opt, tcp)
	case len(req.Question) != 1:
		return finish(resp.SetRcode(req, dns.RcodeFormatError), opt, tcp)
	case opt != nil && opt.Version() != 0:
		return finish(resp.SetRcode(req, dns.RcodeBadVers), opt, tcp)
	}
	q := req.Question[0]
	if !inZone(q.Name) {
		if !r.mayForward(client) {
			return finish(resp.SetRcode(req, dns.RcodeRefused), opt, tcp)
		}
		return finish(r.fwd.forward(r.ctx, req, tcp), opt, tcp)
	}
	switch {
	case q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY:
		return finish(resp.SetRcode(req, dns.RcodeRefused), opt, tcp)
	case q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR:
		return finish(resp.SetRcode(req, dns.RcodeRefused), opt, tcp)
	}
	t := r.names.Load()
	if t == nil {
		// Not NXDOMAIN: the names may well exist, and clients would
		// cache their absence.
		return finish(resp.SetRcode(req, dns.RcodeServerFailure), opt, tcp)
	}
	answer, extra, exists := t.lookup(q.Name, q.Qtype, r.ttl)
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	// The order of records means nothing, but many clients take the
	// first address: shuffled, the instances share the load.
	rand.Shuffle(len(answer), func(i, j int) { answer[i], answer[j] = answer[j], answer[i] })
	resp.Answer, resp.Extra = answer, extra
	if !exists {
		resp.Rcode = dns.RcodeNameError
	}
	if len(answer) == 0 {
		resp.Ns = []dns.RR{soa(Zone, r.ttl)}
	}
	return finish(resp, opt, tcp)
}

// finish fits resp, an answer to a request with EDNS record opt (nil
// when without), to the transport: UDP answers that are too large are
// truncated, with TC set so that the client asks again over TCP.
func finish(resp *dns.Msg, opt *dns.OPT, tcp bool) *dns.Msg {
	if resp == nil {
		return nil
	}
	size := dns.MinMsgSize
	if opt != nil {
		size = min(max(int(opt.UDPSize()), dns.MinMsgSize), maxUDPSize)
		if resp.IsEdns0() == nil {
			resp.SetEdns0(maxUDPSize, false)
		}
	}
	if tcp {
		size = dns.MaxMsgSize
	}
	resp.Truncate(size)
	return resp
}

func (r *resolver) mayForward(client netip.Addr) bool {
	for _, p := range r.forwardFrom {
		if p.Contains(client) {
			return true
		}
	}
	return false
}

// inZone reports whether name is in Zone.
func inZone(name string) bool {
	name = strings.ToLower(name)
	return name == Zone || strings.HasSuffix(name, "."+Zone)
}

// addrOf is the IP address of a client.
func addrOf(a net.Addr) netip.Addr {
	var ip netip.Addr
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	}
	return ip.Unmap()
}

// serveDNS runs srv, on its UDP socket or TCP listener, until ctx ends.
func serveDNS(ctx context.Context, srv *dns.Server) error {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case err := <-done:
		return fmt.Errorf("serve DNS: %w", err)
	case <-started:
	}
	select {
	case err := <-done:
		return fmt.Errorf("serve DNS: %w", err)
	case <-ctx.Done():
		srv.Shutdown()
		<-done
		return nil
	}
}
