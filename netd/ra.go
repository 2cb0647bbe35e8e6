package netd

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The kernel does SLAAC itself but leaves the DNS options of router
// advertisements (RFC 8106) to userspace: it passes them on as
// RTM_NEWNDUSEROPT messages to the RTNLGRP_ND_USEROPT group, which netd
// listens to and writes into resolv.conf.

// ND option types the kernel passes on.
const (
	ndOptRDNSS = 25 // recursive DNS servers
	ndOptDNSSL = 31 // DNS search list
)

// raDNS is what one router advertisement said about DNS on a link. A
// lifetime of zero withdraws what an earlier one said.
type raDNS struct {
	Link    int // interface index
	From    netip.Addr
	Servers []raEntry[netip.Addr]
	Search  []raEntry[string]
}

type raEntry[T any] struct {
	Value    T
	Lifetime time.Duration
}

// parseNDUserOpt reads an RTM_NEWNDUSEROPT message's body: struct
// nduseroptmsg, its ND options, then netlink attributes (the router's
// address).
func parseNDUserOpt(b []byte) (raDNS, error) {
	const hdr = 16 // family, pad, opts_len, ifindex, icmp6 type and code, pads
	if len(b) < hdr {
		return raDNS{}, fmt.Errorf("nduseropt: %d bytes, shorter than its header", len(b))
	}
	if b[0] != unix.AF_INET6 {
		return raDNS{}, fmt.Errorf("nduseropt: family %d, not IPv6", b[0])
	}
	optsLen := int(binary.NativeEndian.Uint16(b[2:4]))
	r := raDNS{Link: int(int32(binary.NativeEndian.Uint32(b[4:8])))}
	if hdr+optsLen > len(b) {
		return raDNS{}, fmt.Errorf("nduseropt: options of %d bytes in %d", optsLen, len(b)-hdr)
	}
	opts, attrs := b[hdr:hdr+optsLen], b[hdr+optsLen:]
	for len(opts) >= 8 {
		typ, size := opts[0], int(opts[1])*8
		if size == 0 || size > len(opts) {
			return raDNS{}, fmt.Errorf("nduseropt: option %d of length %d in %d bytes", typ, size, len(opts))
		}
		opt := opts[:size]
		opts = opts[size:]
		lifetime := time.Duration(binary.BigEndian.Uint32(opt[4:8])) * time.Second
		switch typ {
		case ndOptRDNSS:
			for a := opt[8:]; len(a) >= 16; a = a[16:] {
				r.Servers = append(r.Servers, raEntry[netip.Addr]{netip.AddrFrom16([16]byte(a[:16])), lifetime})
			}
		case ndOptDNSSL:
			for _, d := range dnsNames(opt[8:]) {
				r.Search = append(r.Search, raEntry[string]{d, lifetime})
			}
		}
	}
	// NDUSEROPT_SRCADDR, the advertising router.
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		if l < 4 || l > len(attrs) {
			break
		}
		if binary.NativeEndian.Uint16(attrs[2:4]) == 1 && l == 4+16 {
			r.From = netip.AddrFrom16([16]byte(attrs[4:20]))
		}
		attrs = attrs[(l+3)&^3:]
	}
	return r, nil
}

// dnsNames decodes the uncompressed, zero-padded domain names of a DNSSL
// option; a malformed rest is dropped.
func dnsNames(b []byte) []string {
	var names []string
	var labels []string
	for len(b) > 0 {
		n := int(b[0])
		b = b[1:]
		if n == 0 {
			if len(labels) > 0 {
				names = append(names, strings.Join(labels, "."))
			}
			labels = nil
			continue
		}
		if n > 63 || n > len(b) {
			break
		}
		labels = append(labels, string(b[:n]))
		b = b[n:]
	}
	return names
}

// raState holds the unexpired DNS servers and domains routers advertised,
// by link index.
type raState struct {
	servers map[int][]raLearnt[netip.Addr]
	search  map[int][]raLearnt[string]
}

type raLearnt[T comparable] struct {
	Value   T
	Expires time.Time
}

// learn applies one advertisement at now: each entry is added or its
// expiry moved, and a lifetime of zero removes it. It reports whether
// the set of values changed.
func (s *raState) learn(r raDNS, now time.Time) bool {
	if s.servers == nil {
		s.servers, s.search = map[int][]raLearnt[netip.Addr]{}, map[int][]raLearnt[string]{}
	}
	a := learnEntries(s.servers, r.Link, r.Servers, now)
	b := learnEntries(s.search, r.Link, r.Search, now)
	return a || b
}

func learnEntries[T comparable](m map[int][]raLearnt[T], link int, es []raEntry[T], now time.Time) (changed bool) {
	cur := m[link]
	for _, e := range es {
		i := slices.IndexFunc(cur, func(l raLearnt[T]) bool { return l.Value == e.Value })
		switch {
		case e.Lifetime == 0 && i >= 0:
			cur = slices.Delete(cur, i, i+1)
			changed = true
		case e.Lifetime == 0:
		case i >= 0:
			cur[i].Expires = now.Add(e.Lifetime)
		default:
			cur = append(cur, raLearnt[T]{e.Value, now.Add(e.Lifetime)})
			changed = true
		}
	}
	m[link] = cur
	return changed
}

// expire drops what has expired at now, and returns when the next entry
// expires (zero if none is left).
func (s *raState) expire(now time.Time) (next time.Time) {
	next = expireEntries(s.servers, now, next)
	return expireEntries(s.search, now, next)
}

func expireEntries[T comparable](m map[int][]raLearnt[T], now, next time.Time) time.Time {
	for link, es := range m {
		es = slices.DeleteFunc(es, func(e raLearnt[T]) bool { return !e.Expires.After(now) })
		m[link] = es
		for _, e := range es {
			if next.IsZero() || e.Expires.Before(next) {
				next = e.Expires
			}
		}
	}
	return next
}

// values returns the link's learnt values in the order first learnt.
func values[T comparable](es []raLearnt[T]) []T {
	out := make([]T, 0, len(es))
	for _, e := range es {
		out = append(out, e.Value)
	}
	return out
}

// clone returns a copy that later learning does not change.
func (s *raState) clone() raState {
	c := raState{servers: map[int][]raLearnt[netip.Addr]{}, search: map[int][]raLearnt[string]{}}
	for l, es := range s.servers {
		c.servers[l] = slices.Clone(es)
	}
	for l, es := range s.search {
		c.search[l] = slices.Clone(es)
	}
	return c
}

// snapshot returns the learnt servers and domains, by link index.
func (s *raState) snapshot() (servers []netip.Addr, search []string) {
	links := make([]int, 0, len(s.servers)+len(s.search))
	for l := range s.servers {
		links = append(links, l)
	}
	for l := range s.search {
		links = append(links, l)
	}
	slices.Sort(links)
	for _, l := range slices.Compact(links) {
		servers = append(servers, values(s.servers[l])...)
		search = append(search, values(s.search[l])...)
	}
	return servers, search
}

// subscribeRA hands every router advertisement's DNS options to learn
// until done is closed.
func subscribeRA(done <-chan struct{}, learn func(raDNS), onErr func(error)) error {
	s, err := nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_ND_USEROPT)
	if err != nil {
		return fmt.Errorf("subscribe to router advertisements' options: %w", err)
	}
	go func() {
		<-done
		s.Close()
	}()
	go func() {
		for {
			msgs, _, err := s.Receive()
			if err != nil {
				select {
				case <-done: // closed at stop
				default:
					onErr(err)
				}
				return
			}
			for _, m := range msgs {
				if m.Header.Type != unix.RTM_NEWNDUSEROPT {
					continue
				}
				r, err := parseNDUserOpt(m.Data)
				if err != nil {
					onErr(err)
					continue
				}
				learn(r)
			}
		}
	}()
	return nil
}

// learnRA takes one advertisement's DNS options into the state, and asks
// for a reconcile (which writes resolv.conf) when they change what is
// known. An expiry timer takes them out again.
func (d *Daemon) learnRA(r raDNS) {
	// A link-local server is reachable only with its link named.
	if ifi, err := net.InterfaceByIndex(r.Link); err == nil {
		for i, e := range r.Servers {
			if e.Value.IsLinkLocalUnicast() {
				r.Servers[i].Value = e.Value.WithZone(ifi.Name)
			}
		}
	}
	now := time.Now()
	d.mu.Lock()
	changed := d.ra.learn(r, now)
	d.scheduleRAExpiry(now)
	d.mu.Unlock()
	if changed {
		d.log.Info("router advertisement DNS", "link", r.Link, "router", r.From, "servers", len(r.Servers), "search", len(r.Search))
		d.trigger()
	}
}

// scheduleRAExpiry drops what expired and sets the timer for the next
// expiry. d.mu is held.
func (d *Daemon) scheduleRAExpiry(now time.Time) {
	next := d.ra.expire(now)
	if d.raTimer != nil {
		d.raTimer.Stop()
	}
	if next.IsZero() {
		return
	}
	d.raTimer = time.AfterFunc(next.Sub(now), func() {
		d.mu.Lock()
		d.scheduleRAExpiry(time.Now())
		d.mu.Unlock()
		d.log.Info("router advertisement DNS expired")
		d.trigger()
	})
}
