package host

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
)

// hostAddr is one address the kernel has, with the link that holds it.
type hostAddr struct {
	Link  string
	Index int
	Addr  netip.Addr
}

// kernelAddrs lists the host's global unicast addresses (no loopback, no
// link-local) in interface order. netd applies the machine's addresses, so
// these are netd's state, and hostd works the same where no netd runs.
func kernelAddrs() ([]hostAddr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []hostAddr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue // the link went away while we looked
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
				continue
			}
			out = append(out, hostAddr{Link: ifc.Name, Index: ifc.Index, Addr: ip})
		}
	}
	return out, nil
}

// defaultRouteLink returns the index of the link holding the IPv4 default
// route, else the IPv6 one (an IPv6-only network), or 0.
func defaultRouteLink() int {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
		if err != nil {
			continue
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
				return r.LinkIndex
			}
		}
	}
	return 0
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// pickAdvertise chooses the address to advertise from addrs by spec (see
// Config.Advertise). IPv4 is preferred when the spec leaves a choice,
// because most LANs that plinth hosts share are IPv4. Without a spec,
// addresses inside avoid (the container range, whose bridge address is
// this host's alone) are never chosen: on an IPv6-only network the
// bridge's would otherwise be the only IPv4 one.
func pickAdvertise(spec string, addrs []hostAddr, defaultLink int, avoid netip.Prefix) (netip.Addr, error) {
	v4first := func(cands []hostAddr) []hostAddr {
		return slices.SortedStableFunc(slices.Values(cands), func(a, b hostAddr) int {
			switch {
			case a.Addr.Is4() == b.Addr.Is4():
				return 0
			case a.Addr.Is4():
				return -1
			}
			return 1
		})
	}
	pick := func(match func(hostAddr) bool, what string) (netip.Addr, error) {
		var cands []hostAddr
		for _, a := range addrs {
			if match(a) {
				cands = append(cands, a)
			}
		}
		if len(cands) == 0 {
			return netip.Addr{}, fmt.Errorf("no address %s yet", what)
		}
		return v4first(cands)[0].Addr, nil
	}
	if spec == "" {
		addrs = slices.DeleteFunc(slices.Clone(addrs), func(a hostAddr) bool { return avoid.IsValid() && avoid.Contains(a.Addr) })
		if defaultLink != 0 {
			if ip, err := pick(func(a hostAddr) bool { return a.Index == defaultLink }, "on the default route's link"); err == nil {
				return ip, nil
			}
		}
		return pick(func(hostAddr) bool { return true }, "on any link")
	}
	if ip, err := netip.ParseAddr(spec); err == nil {
		if ip.IsLoopback() {
			return ip, nil // a host that only talks to itself (tests, one-box setups)
		}
		return pick(func(a hostAddr) bool { return a.Addr == ip }, "equal to "+spec)
	}
	if p, err := netip.ParsePrefix(spec); err == nil {
		return pick(func(a hostAddr) bool { return p.Contains(a.Addr) }, "inside "+spec)
	}
	return pick(func(a hostAddr) bool { return a.Link == spec }, "on link "+spec)
}

// currentAdvertise evaluates spec against the kernel's addresses now.
func currentAdvertise(spec string, avoid netip.Prefix) (netip.Addr, error) {
	addrs, err := kernelAddrs()
	if err != nil {
		return netip.Addr{}, err
	}
	ip, err := pickAdvertise(spec, addrs, defaultRouteLink(), avoid)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("advertise address: %w", err)
	}
	return ip, nil
}
