package netd

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ndUserOpt builds an RTM_NEWNDUSEROPT body as the kernel sends it.
func ndUserOpt(ifindex int, opts []byte, router netip.Addr) []byte {
	b := make([]byte, 16)
	b[0] = unix.AF_INET6
	binary.NativeEndian.PutUint16(b[2:4], uint16(len(opts)))
	binary.NativeEndian.PutUint32(b[4:8], uint32(ifindex))
	b[8] = 134 // router advertisement
	b = append(b, opts...)
	attr := make([]byte, 4, 20)
	binary.NativeEndian.PutUint16(attr[0:2], 20)
	binary.NativeEndian.PutUint16(attr[2:4], 1) // NDUSEROPT_SRCADDR
	a := router.As16()
	return append(append(b, attr...), a[:]...)
}

func rdnss(lifetime uint32, servers ...string) []byte {
	o := make([]byte, 8)
	o[0], o[1] = ndOptRDNSS, byte(1+2*len(servers))
	binary.BigEndian.PutUint32(o[4:8], lifetime)
	for _, s := range servers {
		a := netip.MustParseAddr(s).As16()
		o = append(o, a[:]...)
	}
	return o
}

func dnssl(lifetime uint32, names ...string) []byte {
	var wire []byte
	for _, n := range names {
		for _, l := range splitLabels(n) {
			wire = append(wire, byte(len(l)))
			wire = append(wire, l...)
		}
		wire = append(wire, 0)
	}
	for (8+len(wire))%8 != 0 {
		wire = append(wire, 0)
	}
	o := make([]byte, 8)
	o[0], o[1] = ndOptDNSSL, byte((8+len(wire))/8)
	binary.BigEndian.PutUint32(o[4:8], lifetime)
	return append(o, wire...)
}

func splitLabels(n string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(n); i++ {
		if i == len(n) || n[i] == '.' {
			out = append(out, n[start:i])
			start = i + 1
		}
	}
	return out
}

func TestParseNDUserOpt(t *testing.T) {
	router := netip.MustParseAddr("fe80::1")
	opts := append(rdnss(600, "2001:db8::53", "2001:db8::54"), dnssl(300, "example.org", "lab.example.org")...)
	r, err := parseNDUserOpt(ndUserOpt(7, opts, router))
	if err != nil {
		t.Fatal(err)
	}
	if r.Link != 7 || r.From != router {
		t.Errorf("link %d from %s, want 7 from %s", r.Link, r.From, router)
	}
	want := []raEntry[netip.Addr]{{netip.MustParseAddr("2001:db8::53"), 600 * time.Second}, {netip.MustParseAddr("2001:db8::54"), 600 * time.Second}}
	if !slices.Equal(r.Servers, want) {
		t.Errorf("servers %v, want %v", r.Servers, want)
	}
	if !slices.Equal(r.Search, []raEntry[string]{{"example.org", 300 * time.Second}, {"lab.example.org", 300 * time.Second}}) {
		t.Errorf("search %v", r.Search)
	}

	for name, b := range map[string][]byte{
		"short":              make([]byte, 10),
		"IPv4":               append([]byte{unix.AF_INET}, make([]byte, 15)...),
		"options past end":   ndUserOpt(1, rdnss(1, "2001:db8::1"), router)[:30],
		"zero-length option": ndUserOpt(1, make([]byte, 8), router),
	} {
		if _, err := parseNDUserOpt(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestRAStateLearnsAndExpires(t *testing.T) {
	var s raState
	now := time.Unix(1000, 0)
	a, b := netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("2001:db8::54")
	if !s.learn(raDNS{Link: 2, Servers: []raEntry[netip.Addr]{{a, 10 * time.Second}, {b, 30 * time.Second}}}, now) {
		t.Error("new servers: no change reported")
	}
	// The same again only moves the expiry.
	if s.learn(raDNS{Link: 2, Servers: []raEntry[netip.Addr]{{a, 20 * time.Second}}}, now) {
		t.Error("a refresh reported a change")
	}
	s.learn(raDNS{Link: 1, Search: []raEntry[string]{{"example.org", 5 * time.Second}}}, now)
	servers, search := s.snapshot()
	if !slices.Equal(servers, []netip.Addr{a, b}) || !slices.Equal(search, []string{"example.org"}) {
		t.Errorf("snapshot %v %v", servers, search)
	}
	c := s.clone()
	if next := s.expire(now.Add(6 * time.Second)); next != now.Add(20*time.Second) {
		t.Errorf("next expiry %v, want the refreshed server's", next)
	}
	if _, search := s.snapshot(); len(search) != 0 {
		t.Errorf("expired domain kept: %v", search)
	}
	if _, search := c.snapshot(); len(search) != 1 {
		t.Error("expiring the state changed its clone")
	}
	// A lifetime of zero withdraws.
	if !s.learn(raDNS{Link: 2, Servers: []raEntry[netip.Addr]{{b, 0}}}, now) {
		t.Error("a withdrawal reported no change")
	}
	if servers, _ := s.snapshot(); !slices.Equal(servers, []netip.Addr{a}) {
		t.Errorf("after withdrawal %v", servers)
	}
	if next := s.expire(now.Add(time.Hour)); !next.IsZero() {
		t.Errorf("next expiry %v with nothing left", next)
	}
}

func TestDNSNamesMalformed(t *testing.T) {
	// A label running past the end is dropped with what follows.
	if got := dnsNames([]byte{3, 'o', 'r', 'g', 0, 9, 'x'}); !slices.Equal(got, []string{"org"}) {
		t.Errorf("got %v", got)
	}
}
