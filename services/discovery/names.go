package discovery

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/plinth-os/plinth/services/controller"
)

// Zone is the DNS zone the agent answers for itself.
const Zone = "plinth."

// Names under Zone with a fixed meaning.
const (
	// controllerLabel names the alive hosts with role "controller".
	controllerLabel = "controller"
	// leaderLabel, in front of a service's name, names its leader.
	leaderLabel = "leader"
)

// table holds the answer to every name in Zone. It is built whole from
// the controller's collections each time one of them changes, and never
// changed after, so DNS queries read it without locks.
type table struct {
	services map[string]*serviceNames // by lowercase name
	// controllers are the alive hosts with role "controller".
	controllers []netip.Addr
}

// serviceNames are the names of one service: the service's own name (its
// healthy instances), leader.<service> and one name per instance address.
type serviceNames struct {
	healthy []netip.AddrPort // in instance ID order
	leader  netip.AddrPort   // invalid when the service has none
	// addrs maps an address label ("10-0-1-5", "fd00--1") to its
	// address, for every instance, healthy or not: SRV targets.
	addrs map[string]netip.Addr
}

// buildTable makes the names of the controller's collections. Instances
// whose address does not parse are left out.
func buildTable(instances []controller.Instance, services []controller.Service, hosts []controller.Host) *table {
	t := &table{services: map[string]*serviceNames{}}
	get := func(name string) *serviceNames {
		name = strings.ToLower(name)
		s := t.services[name]
		if s == nil {
			s = &serviceNames{addrs: map[string]netip.Addr{}}
			t.services[name] = s
		}
		return s
	}
	for _, s := range services {
		get(s.Name)
	}
	byID := map[string]netip.AddrPort{} // healthy instances
	instances = slices.SortedFunc(slices.Values(instances), func(a, b controller.Instance) int { return cmp.Compare(a.ID, b.ID) })
	for _, in := range instances {
		s := get(in.Service)
		ap, err := netip.ParseAddrPort(in.Addr)
		if err != nil {
			continue
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		s.addrs[addrLabel(ap.Addr())] = ap.Addr()
		if in.Healthy {
			byID[in.ID] = ap
			s.healthy = append(s.healthy, ap)
		}
	}
	for _, s := range services {
		if ap, ok := byID[s.Leader]; ok && s.Leader != "" {
			get(s.Name).leader = ap
		}
	}
	for _, h := range hosts {
		if h.Status != "alive" || !slices.Contains(h.Roles, "controller") {
			continue
		}
		if ip, ok := hostIP(h); ok && !slices.Contains(t.controllers, ip) {
			t.controllers = append(t.controllers, ip)
		}
	}
	return t
}

// hostIP is the address a host advertises for its API, or for gossip.
func hostIP(h controller.Host) (netip.Addr, bool) {
	for _, a := range []string{h.API, h.Addr} {
		if ap, err := netip.ParseAddrPort(a); err == nil {
			return ap.Addr().Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// addrLabel writes an address as one DNS label: 10.0.1.5 as 10-0-1-5,
// fd00::1 as fd00--1.
func addrLabel(ip netip.Addr) string {
	return strings.NewReplacer(".", "-", ":", "-").Replace(ip.WithZone("").String())
}

// lookup answers a question for a name in Zone: the records of the
// answer section and of the additional section, with owner names as
// asked (qname) and the given TTL. exists is false when the name does
// not exist (NXDOMAIN); a name that exists may have no record of the
// type asked.
func (t *table) lookup(qname string, qtype uint16, ttl uint32) (answer, extra []dns.RR, exists bool) {
	name := strings.ToLower(qname)
	if name == Zone {
		if qtype == dns.TypeSOA || qtype == dns.TypeANY {
			answer = append(answer, soa(qname, ttl))
		}
		return answer, nil, true
	}
	rel, ok := strings.CutSuffix(name, "."+Zone)
	if !ok {
		return nil, nil, false
	}
	labels := strings.Split(rel, ".")
	switch {
	case len(labels) == 1 && labels[0] == controllerLabel:
		return addressRecords(qname, qtype, ttl, t.controllers), nil, true
	case len(labels) == 1:
		s := t.services[labels[0]]
		if s == nil {
			return nil, nil, false
		}
		answer, extra = s.records(qname, labels[0], qtype, ttl, s.healthy)
		return answer, extra, true
	case len(labels) == 2 && labels[0] == leaderLabel:
		s := t.services[labels[1]]
		if s == nil {
			return nil, nil, false
		}
		var leader []netip.AddrPort
		if s.leader.IsValid() {
			leader = append(leader, s.leader)
		}
		answer, extra = s.records(qname, labels[1], qtype, ttl, leader)
		return answer, extra, true
	case len(labels) == 2:
		s := t.services[labels[1]]
		if s == nil {
			return nil, nil, false
		}
		ip, ok := s.addrs[labels[0]]
		if !ok {
			return nil, nil, false
		}
		return addressRecords(qname, qtype, ttl, []netip.Addr{ip}), nil, true
	}
	return nil, nil, false
}

// records answers for a name that stands for the endpoints eps of
// service (a lowercase name): A and AAAA with their addresses, SRV with
// their ports and the address names of the service as targets, whose
// addresses go in the additional section.
func (s *serviceNames) records(qname, service string, qtype uint16, ttl uint32, eps []netip.AddrPort) (answer, extra []dns.RR) {
	var ips []netip.Addr
	for _, ep := range eps {
		if !slices.Contains(ips, ep.Addr()) {
			ips = append(ips, ep.Addr())
		}
	}
	answer = addressRecords(qname, qtype, ttl, ips)
	if qtype != dns.TypeSRV && qtype != dns.TypeANY {
		return answer, nil
	}
	for _, ep := range eps {
		target := addrLabel(ep.Addr()) + "." + service + "." + Zone
		answer = append(answer, &dns.SRV{
			Hdr:      dns.RR_Header{Name: qname, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl},
			Priority: 0, Weight: 1, Port: ep.Port(), Target: target,
		})
	}
	if qtype == dns.TypeSRV {
		for _, ip := range ips {
			extra = append(extra, addressRecords(addrLabel(ip)+"."+service+"."+Zone, dns.TypeANY, ttl, []netip.Addr{ip})...)
		}
	}
	return answer, extra
}

// addressRecords are the A (IPv4) and AAAA (IPv6) records of ips that
// qtype asks for.
func addressRecords(qname string, qtype uint16, ttl uint32, ips []netip.Addr) []dns.RR {
	var rrs []dns.RR
	for _, ip := range ips {
		switch {
		case ip.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
			rrs = append(rrs, &dns.A{Hdr: dns.RR_Header{Name: qname, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: ip.AsSlice()})
		case ip.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
			rrs = append(rrs, &dns.AAAA{Hdr: dns.RR_Header{Name: qname, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: ttl}, AAAA: ip.AsSlice()})
		}
	}
	return rrs
}

// soa is the zone's SOA record, which negative answers carry so that
// resolvers cache them for ttl only (RFC 2308).
func soa(name string, ttl uint32) *dns.SOA {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:  "ns." + Zone, Mbox: "hostmaster." + Zone,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl,
	}
}
