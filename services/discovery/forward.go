package discovery

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// forwarder sends the queries for names outside Zone to the host's
// resolvers, listed in a resolv.conf file that it reads again whenever
// the file changes (netd rewrites it when a DHCP lease brings others).
type forwarder struct {
	path    string
	timeout time.Duration
	log     *slog.Logger
	// self is the agent's own UDP address: a resolver there would be
	// the agent asking itself.
	self netip.AddrPort

	mu      sync.Mutex
	stamp   fileStamp
	servers []netip.AddrPort
}

// fileStamp tells whether a file changed since it was read.
type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// forward returns the resolvers' answer to req, or SERVFAIL when none
// answered within the timeout. The query goes over TCP when it came over
// TCP, so that a truncated answer asked again gets through whole.
func (f *forwarder) forward(ctx context.Context, req *dns.Msg, tcp bool) *dns.Msg {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	c := &dns.Client{Net: "udp", UDPSize: dns.MaxMsgSize}
	if tcp {
		c.Net = "tcp"
	}
	servers := f.upstreams()
	q := req.Copy()
	var last *dns.Msg
	for i, s := range servers {
		// Each resolver left gets an equal share of the time left.
		deadline, _ := ctx.Deadline()
		try, cancelTry := context.WithTimeout(ctx, time.Until(deadline)/time.Duration(len(servers)-i))
		q.Id = dns.Id()
		resp, _, err := c.ExchangeContext(try, q, s.String())
		cancelTry()
		if err != nil {
			f.log.Debug("forward", "server", s, "name", req.Question[0].Name, "err", err)
			continue
		}
		last = resp
		if resp.Rcode != dns.RcodeServerFailure && resp.Rcode != dns.RcodeRefused {
			break
		}
	}
	if last == nil {
		return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
	}
	last.Id = req.Id
	if opt := last.IsEdns0(); opt != nil {
		opt.SetUDPSize(maxUDPSize)
	}
	return last
}

// upstreams are the resolvers of the resolv.conf file, read again if
// it changed.
func (f *forwarder) upstreams() []netip.AddrPort {
	var st fileStamp
	if fi, err := os.Stat(f.path); err == nil {
		st = fileStamp{mod: fi.ModTime(), size: fi.Size()}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			st.ino = sys.Ino
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if st == f.stamp && f.servers != nil {
		return f.servers
	}
	f.stamp = st
	data, err := os.ReadFile(f.path)
	if err != nil {
		f.log.Warn("no resolvers to forward to", "err", err)
		f.servers = []netip.AddrPort{}
		return f.servers
	}
	f.servers = f.withoutSelf(parseResolvConf(data))
	if len(f.servers) == 0 {
		f.log.Warn("no resolvers to forward to", "file", f.path)
	}
	return f.servers
}

// withoutSelf leaves out the agent's own address.
func (f *forwarder) withoutSelf(servers []netip.AddrPort) []netip.AddrPort {
	out := []netip.AddrPort{}
	for _, s := range servers {
		ip := s.Addr()
		self := s == f.self ||
			s.Port() == f.self.Port() && f.self.Addr().IsUnspecified() && (ip.IsLoopback() || ip.IsUnspecified())
		if self {
			f.log.Warn("resolv.conf names this DNS server; not forwarding to it", "file", f.path, "server", s)
			continue
		}
		out = append(out, s)
	}
	return out
}

// parseResolvConf returns the nameserver lines of a resolv.conf file.
// Besides an address, such a line may give an address and port
// ("127.0.0.1:5353", "[::1]:5353"), which the C library does not read:
// for resolvers on another port, as in tests.
func parseResolvConf(data []byte) []netip.AddrPort {
	var servers []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if ip, err := netip.ParseAddr(f[1]); err == nil {
			servers = append(servers, netip.AddrPortFrom(ip, 53))
		} else if ap, err := netip.ParseAddrPort(f[1]); err == nil {
			servers = append(servers, ap)
		}
	}
	return servers
}
