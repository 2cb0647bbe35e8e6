package discovery

import (
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// FuzzDNSRequest feeds arbitrary bytes to the request path as the DNS
// server runs it: unpack, then the resolver. Whatever comes in, it must
// not panic, and an answer must pack, unpack, fit its transport, carry
// the request's ID and be marked an answer. Forwarded names meet a
// resolv.conf without resolvers, so no query leaves the process.
func FuzzDNSRequest(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"web.plinth.", dns.TypeA},
		{"web.plinth.", dns.TypeSRV},
		{"leader.web.plinth.", dns.TypeAAAA},
		{"controller.plinth.", dns.TypeANY},
		{"10-0-0-1.web.plinth.", dns.TypeA},
		{"plinth.", dns.TypeSOA},
		{"nope.plinth.", dns.TypeTXT},
		{"example.com.", dns.TypeA},
	} {
		m := new(dns.Msg).SetQuestion(q.name, q.qtype)
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		m.SetEdns0(4096, true)
		if b, err = m.Pack(); err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0x28, 0, 0, 1, 0, 0, 0, 0, 0, 0}) // UPDATE, no question

	r := &resolver{
		ctx: f.Context(), names: new(atomic.Pointer[table]), ttl: 5,
		fwd:         &forwarder{path: filepath.Join(f.TempDir(), "missing"), timeout: testWait, log: slog.New(slog.DiscardHandler)},
		forwardFrom: DefaultConfig().ForwardFrom,
	}
	r.names.Store(buildTable(fixture()))
	client := netip.MustParseAddr("127.0.0.1")

	f.Fuzz(func(t *testing.T, data []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(data); err != nil {
			return // the server answers FORMERR or nothing, without the resolver
		}
		for _, tcp := range []bool{false, true} {
			resp := r.respond(req, client, tcp)
			if resp == nil {
				if !req.Response {
					t.Fatalf("no answer to a request:\n%v", req)
				}
				continue
			}
			b, err := resp.Pack()
			if err != nil {
				t.Fatalf("answer does not pack: %v\nrequest:\n%v\nanswer:\n%v", err, req, resp)
			}
			if limit := udpLimit(req); !tcp && len(b) > limit {
				t.Fatalf("UDP answer of %d bytes, client takes %d", len(b), limit)
			}
			back := new(dns.Msg)
			if err := back.Unpack(b); err != nil {
				t.Fatalf("answer does not unpack: %v\n%v", err, resp)
			}
			if back.Id != req.Id || !back.Response {
				t.Fatalf("answer id %d response %v, request id %d", back.Id, back.Response, req.Id)
			}
		}
	})
}

// udpLimit is the size of UDP answer that the client of req takes.
func udpLimit(req *dns.Msg) int {
	if opt := req.IsEdns0(); opt != nil {
		return min(max(int(opt.UDPSize()), dns.MinMsgSize), maxUDPSize)
	}
	return dns.MinMsgSize
}
