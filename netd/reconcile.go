package netd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/netd/dhcp"
	"github.com/plinth-os/plinth/netd/dhcp6"
)

// Route protocols netd marks its routes with, so that it can tell them
// from the kernel's and remove the ones no longer wanted.
const (
	protoStatic = unix.RTPROT_STATIC
	protoDHCP   = unix.RTPROT_DHCP
)

// dhcpRouteMetric keeps DHCP default routes behind static ones.
const dhcpRouteMetric = 1024

// managed is one link netd configures, resolved against the kernel's links.
type managed struct {
	name   string
	kind   string // interface, vlan, bond, bridge
	addr   Addressing
	link   netlink.Link // nil: not present (yet)
	master string       // bond or bridge that enslaves it
	err    error
}

// reconcile makes one pass from the kernel's state to the desired one. It
// is idempotent: a pass over a converged system changes nothing.
func (d *Daemon) reconcile(ctx context.Context, wg *sync.WaitGroup) error {
	links, err := d.nl.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	// Loopback first: services reach each other on 127.0.0.1 (a platform
	// job calls its host's API there), and the kernel leaves lo down.
	for _, l := range links {
		if l.Type() == "device" && l.Attrs().Flags&net.FlagLoopback != 0 && l.Attrs().Flags&net.FlagUp == 0 {
			if err := d.nl.LinkSetUp(l); err != nil {
				return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
			}
		}
	}
	ms := d.resolve(links)
	byName := func(name string) *managed {
		for _, m := range ms {
			if m.name == name {
				return m
			}
		}
		return nil
	}

	// Containers first (bonds, bridges), then what goes into them, then
	// VLANs on top, then addresses and routes on everything that is up.
	for _, b := range d.cfg.Bonds {
		m := byName(b.Name)
		m.link, m.err = d.ensureBond(b, m.link)
	}
	for _, b := range d.cfg.Bridges {
		m := byName(b.Name)
		m.link, m.err = d.ensureBridge(b, m.link)
	}
	for _, m := range ms {
		if m.master == "" || m.link == nil {
			continue
		}
		if master := byName(m.master); master.link != nil {
			m.err = d.enslave(m.link, master.link)
		}
	}
	for _, b := range d.cfg.Bonds {
		if m := byName(b.Name); m.link != nil && b.Primary != "" {
			m.err = errors.Join(m.err, writeSysfs("/sys/class/net/"+b.Name+"/bonding/primary", b.Primary))
		}
	}
	for _, v := range d.cfg.VLANs {
		m := byName(v.Name)
		parent := byName(v.Link)
		if parent == nil || parent.link == nil {
			m.err = fmt.Errorf("parent link %s is not present", v.Link)
			continue
		}
		m.link, m.err = d.ensureVLAN(v, parent.link, m.link)
	}

	d.mu.Lock()
	leases := make(map[string]dhcp.Lease, len(d.leases))
	for k, v := range d.leases {
		leases[k] = v
	}
	leases6 := maps.Clone(d.leases6)
	ra := d.ra.clone()
	d.mu.Unlock()

	var errs []error
	for _, m := range ms {
		if m.link == nil {
			if m.err == nil {
				m.err = fmt.Errorf("link %s is not present", m.name)
			}
			continue
		}
		if m.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.name, m.err))
			continue
		}
		lease, leased := leases[m.name]
		if err := d.configureLink(m, lease, leased, leases6[m.name]); err != nil {
			m.err = err
			errs = append(errs, fmt.Errorf("%s: %w", m.name, err))
			continue
		}
		if m.addr.DHCP && m.master == "" {
			d.startDHCP(ctx, wg, m.name)
		}
		if m.addr.DHCP6 && m.master == "" {
			d.startDHCP6(ctx, wg, m.name)
		}
	}
	if err := d.writeResolvConf(leases, leases6, ra); err != nil {
		errs = append(errs, err)
	}
	d.applyDHCPHostname(leases)
	d.updateStatus(ms)
	return errors.Join(errs...)
}

// resolve lists the links the config manages and finds each in the kernel,
// renaming interfaces matched by MAC to their configured name. With a
// default config the managed links are the physical NICs, on DHCP once they
// have carrier.
func (d *Daemon) resolve(links []netlink.Link) []*managed {
	find := func(name string) netlink.Link {
		for _, l := range links {
			if l.Attrs().Name == name {
				return l
			}
		}
		return nil
	}
	var ms []*managed
	if d.cfg.Default() {
		for _, l := range links {
			if !physical(l) {
				continue
			}
			m := &managed{name: l.Attrs().Name, kind: "interface", link: l}
			// A NIC without carrier gets no DHCP client: it would only
			// retry. It gets one as soon as the cable is in (a link event).
			m.addr.DHCP = l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
			ms = append(ms, m)
		}
		return ms
	}
	master := map[string]string{}
	for _, b := range d.cfg.Bonds {
		for _, n := range b.Members {
			master[n] = b.Name
		}
	}
	for _, b := range d.cfg.Bridges {
		for _, n := range b.Members {
			master[n] = b.Name
		}
	}
	for _, itf := range d.cfg.Interfaces {
		m := &managed{name: itf.Name, kind: "interface", addr: itf.Addressing, master: master[itf.Name]}
		if len(itf.MAC) > 0 {
			m.link = byMAC(links, itf.MAC)
			if m.name == "" {
				m.name = "mac:" + itf.MAC.String()
				if m.link != nil {
					m.name = m.link.Attrs().Name
				}
			}
			if m.link != nil && itf.Name != "" && m.link.Attrs().Name != itf.Name {
				m.link, m.err = d.rename(m.link, m.name)
			}
		} else {
			m.link = find(itf.Name)
		}
		ms = append(ms, m)
	}
	for _, b := range d.cfg.Bonds {
		ms = append(ms, &managed{name: b.Name, kind: "bond", addr: b.Addressing, link: find(b.Name)})
	}
	for _, b := range d.cfg.Bridges {
		ms = append(ms, &managed{name: b.Name, kind: "bridge", addr: b.Addressing, link: find(b.Name)})
	}
	for _, v := range d.cfg.VLANs {
		ms = append(ms, &managed{name: v.Name, kind: "vlan", addr: v.Addressing, link: find(v.Name)})
	}
	return ms
}

// byMAC finds the NIC whose permanent MAC is mac. The permanent one, because
// bonding gives its members the bond's MAC, and bonds and VLANs copy their
// parent's.
func byMAC(links []netlink.Link, mac net.HardwareAddr) netlink.Link {
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "device" && l.Type() != "veth" {
			continue
		}
		hw := a.PermHWAddr
		if len(hw) == 0 {
			hw = a.HardwareAddr
		}
		if slices.Equal(hw, mac) {
			return l
		}
	}
	return nil
}

// physical reports whether l is a NIC backed by a device (not loopback, a
// bridge, a veth or a tunnel).
func physical(l netlink.Link) bool {
	if l.Type() != "device" || l.Attrs().EncapType != "ether" {
		return false
	}
	_, err := os.Stat("/sys/class/net/" + l.Attrs().Name + "/device")
	return err == nil
}

func (d *Daemon) rename(l netlink.Link, name string) (netlink.Link, error) {
	// The kernel renames only links that are down.
	if err := d.nl.LinkSetDown(l); err != nil {
		return l, fmt.Errorf("set %s down to rename it: %w", l.Attrs().Name, err)
	}
	if err := d.nl.LinkSetName(l, name); err != nil {
		return l, fmt.Errorf("rename %s to %s: %w", l.Attrs().Name, name, err)
	}
	d.log.Info("renamed link", "from", l.Attrs().Name, "to", name, "mac", l.Attrs().HardwareAddr.String())
	return d.nl.LinkByName(name)
}

func (d *Daemon) ensureBond(b Bond, cur netlink.Link) (netlink.Link, error) {
	want := bondLink(b)
	if cur != nil {
		have, ok := cur.(*netlink.Bond)
		if !ok {
			return cur, fmt.Errorf("link %s exists but is not a bond; delete it or rename the bond", b.Name)
		}
		diff := bondDiff(have, want)
		if diff == "" {
			return cur, nil
		}
		// The driver changes a mode only on a bond that is down and empty:
		// replace it, and the members are enslaved again below.
		if err := d.nl.LinkDel(cur); err != nil {
			return cur, fmt.Errorf("delete bond %s to change its %s: %w", b.Name, diff, err)
		}
		d.log.Info("replacing bond", "name", b.Name, "changed", diff)
	}
	if err := d.nl.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("create bond %s (mode %s): %w (is the bonding module loaded?)", b.Name, b.Mode, err)
	}
	d.log.Info("created bond", "name", b.Name, "mode", b.Mode, "members", strings.Join(b.Members, ","))
	return d.nl.LinkByName(b.Name)
}

// bondLink is the bond link b asks for. Options that do not apply to b's
// mode stay unset (-1), so the kernel keeps its defaults for them.
func bondLink(b Bond) *netlink.Bond {
	bond := netlink.NewLinkBond(netlink.LinkAttrs{Name: b.Name})
	bond.Mode = netlink.StringToBondMode(b.Mode)
	bond.Miimon = b.MiimonOrDefault()
	if b.Mode == Bond8023AD {
		bond.LacpRate = netlink.BOND_LACP_RATE_SLOW
		if b.LACPRate != "" {
			bond.LacpRate = netlink.StringToBondLacpRate(b.LACPRate)
		}
	}
	if hashesTraffic(b.Mode) {
		bond.XmitHashPolicy = netlink.BOND_XMIT_HASH_POLICY_LAYER2
		if b.XmitHashPolicy != "" {
			bond.XmitHashPolicy = netlink.StringToBondXmitHashPolicy(b.XmitHashPolicy)
		}
	}
	return bond
}

// bondDiff names the settings in which have differs from want, or "".
func bondDiff(have, want *netlink.Bond) string {
	var d []string
	if have.Mode != want.Mode {
		d = append(d, fmt.Sprintf("mode %s→%s", have.Mode, want.Mode))
	}
	if have.Miimon != want.Miimon {
		d = append(d, fmt.Sprintf("miimon %d→%d", have.Miimon, want.Miimon))
	}
	if want.LacpRate >= 0 && have.LacpRate != want.LacpRate {
		d = append(d, fmt.Sprintf("lacp_rate %s→%s", have.LacpRate, want.LacpRate))
	}
	if want.XmitHashPolicy >= 0 && have.XmitHashPolicy != want.XmitHashPolicy {
		d = append(d, fmt.Sprintf("xmit_hash_policy %s→%s", have.XmitHashPolicy, want.XmitHashPolicy))
	}
	return strings.Join(d, ", ")
}

func (d *Daemon) ensureBridge(b Bridge, cur netlink.Link) (netlink.Link, error) {
	if cur != nil {
		if _, ok := cur.(*netlink.Bridge); ok {
			return cur, nil
		}
		return cur, fmt.Errorf("link %s exists but is not a bridge", b.Name)
	}
	if err := d.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: b.Name}}); err != nil {
		return nil, fmt.Errorf("create bridge %s: %w", b.Name, err)
	}
	d.log.Info("created bridge", "name", b.Name)
	return d.nl.LinkByName(b.Name)
}

func (d *Daemon) ensureVLAN(v VLAN, parent, cur netlink.Link) (netlink.Link, error) {
	if cur != nil {
		if vl, ok := cur.(*netlink.Vlan); ok && vl.VlanId == v.ID && vl.ParentIndex == parent.Attrs().Index {
			return cur, nil
		}
		// Same name, other parent or ID: the config changed. Replace it.
		if err := d.nl.LinkDel(cur); err != nil {
			return cur, fmt.Errorf("delete mismatched link %s: %w", v.Name, err)
		}
	}
	vl := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: v.Name, ParentIndex: parent.Attrs().Index}, VlanId: v.ID}
	if err := d.nl.LinkAdd(vl); err != nil {
		return nil, fmt.Errorf("create VLAN %s (id %d on %s): %w (is the 8021q module loaded?)", v.Name, v.ID, v.Link, err)
	}
	d.log.Info("created vlan", "name", v.Name, "id", v.ID, "link", v.Link)
	return d.nl.LinkByName(v.Name)
}

func (d *Daemon) enslave(l, master netlink.Link) error {
	if l.Attrs().MasterIndex == master.Attrs().Index {
		return nil
	}
	if _, isBond := master.(*netlink.Bond); isBond {
		// Bonding takes members only while they are down.
		if err := d.nl.LinkSetDown(l); err != nil {
			return fmt.Errorf("set %s down to enslave it: %w", l.Attrs().Name, err)
		}
	}
	if err := d.nl.LinkSetMaster(l, master); err != nil {
		return fmt.Errorf("add %s to %s: %w", l.Attrs().Name, master.Attrs().Name, err)
	}
	d.log.Info("enslaved link", "link", l.Attrs().Name, "master", master.Attrs().Name)
	return d.nl.LinkSetUp(l)
}

// configureLink sets MTU and up, then addresses and routes.
func (d *Daemon) configureLink(m *managed, lease dhcp.Lease, leased bool, lease6 dhcp6.Lease) error {
	l, err := d.nl.LinkByIndex(m.link.Attrs().Index) // fresh flags after the steps above
	if err != nil {
		return fmt.Errorf("read link: %w", err)
	}
	m.link = l
	mtu := m.addr.MTU
	if mtu == 0 && leased && lease.MTU >= 68 {
		mtu = lease.MTU
	}
	if mtu != 0 && l.Attrs().MTU != mtu {
		if err := d.nl.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set MTU %d: %w", mtu, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := d.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("set up: %w", err)
		}
		d.log.Info("link set up", "link", m.name)
	}
	if m.master != "" {
		return nil // a member carries no addresses of its own
	}
	if err := d.syncAddresses(m, lease, leased, lease6); err != nil {
		return err
	}
	return d.syncRoutes(m, lease, leased)
}

// syncAddresses adds the desired addresses that are missing and removes the
// ones netd added earlier that are no longer desired (an expired lease, a
// changed config). Addresses netd never added are left alone.
func (d *Daemon) syncAddresses(m *managed, lease dhcp.Lease, leased bool, lease6 dhcp6.Lease) error {
	type wantAddr struct {
		p         netip.Prefix
		lifetime  time.Duration // 0: forever
		preferred time.Duration // 0: the lifetime
	}
	var want []wantAddr
	for _, p := range m.addr.Addresses {
		want = append(want, wantAddr{p: p})
	}
	if leased && lease.Address.IsValid() {
		// The kernel drops the address at expiry even if netd is gone.
		if left := time.Until(lease.Expires()); left > 0 {
			want = append(want, wantAddr{p: lease.Address, lifetime: left})
		}
	}
	// DHCPv6 addresses are /128s: the prefix's on-link route comes from
	// the router advertisement.
	for _, a := range lease6.Addresses {
		elapsed := time.Since(lease6.Bound)
		if left := a.Valid - elapsed; left > 0 {
			want = append(want, wantAddr{p: netip.PrefixFrom(a.Addr, 128), lifetime: left, preferred: max(a.Preferred-elapsed, time.Second)})
		}
	}
	have, err := d.nl.AddrList(m.link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	find := func(p netip.Prefix) *netlink.Addr {
		for i := range have {
			if pfx, ok := toPrefix(have[i].IPNet); ok && pfx == p {
				return &have[i]
			}
		}
		return nil
	}
	var errs []error
	var owned []netip.Prefix
	for _, w := range want {
		owned = append(owned, w.p)
		cur := find(w.p)
		a := &netlink.Addr{IPNet: prefixToIPNet(w.p)}
		if w.lifetime > 0 {
			secs := int(w.lifetime / time.Second)
			a.ValidLft, a.PreferedLft = secs, secs
			if w.preferred > 0 && w.preferred < w.lifetime {
				a.PreferedLft = int(w.preferred / time.Second)
			}
		}
		switch {
		case cur == nil:
			if err := d.nl.AddrReplace(m.link, a); err != nil {
				errs = append(errs, fmt.Errorf("add address %s: %w", w.p, err))
				continue
			}
			d.log.Info("address added", "link", m.name, "address", w.p)
		case w.lifetime > 0 && time.Duration(a.ValidLft-cur.ValidLft)*time.Second > 5*time.Second:
			// A renewed lease: extend the kernel's lifetime. Only on a real
			// change, because every update is an event that reconciles again.
			if err := d.nl.AddrReplace(m.link, a); err != nil {
				errs = append(errs, fmt.Errorf("refresh address %s: %w", w.p, err))
			}
		}
	}
	d.mu.Lock()
	prev := d.owned[m.name]
	d.owned[m.name] = owned
	d.mu.Unlock()
	for _, p := range prev {
		if slices.Contains(owned, p) {
			continue
		}
		if cur := find(p); cur != nil {
			if err := d.nl.AddrDel(m.link, cur); err != nil {
				errs = append(errs, fmt.Errorf("remove address %s: %w", p, err))
				continue
			}
			d.log.Info("address removed", "link", m.name, "address", p)
		}
	}
	return errors.Join(errs...)
}

// syncRoutes adds missing routes and removes netd-marked routes on the link
// that are no longer desired.
func (d *Daemon) syncRoutes(m *managed, lease dhcp.Lease, leased bool) error {
	idx := m.link.Attrs().Index
	var want []netlink.Route
	for _, r := range m.addr.Routes {
		rt := netlink.Route{LinkIndex: idx, Dst: prefixToIPNet(r.To), Priority: r.Metric, Protocol: protoStatic}
		if r.Via.IsValid() {
			rt.Gw = r.Via.AsSlice()
		} else {
			rt.Scope = netlink.SCOPE_LINK
		}
		want = append(want, rt)
	}
	if m.addr.Gateway.IsValid() {
		want = append(want, netlink.Route{LinkIndex: idx, Dst: defaultDst(m.addr.Gateway), Gw: m.addr.Gateway.AsSlice(), Protocol: protoStatic})
	}
	if leased && lease.Router.IsValid() && lease.Address.IsValid() && time.Until(lease.Expires()) > 0 {
		want = append(want, netlink.Route{LinkIndex: idx, Dst: defaultDst(lease.Router), Gw: lease.Router.AsSlice(),
			Src: lease.Address.Addr().AsSlice(), Priority: dhcpRouteMetric, Protocol: protoDHCP})
	}
	for i := range want {
		// The kernel gives an IPv6 route without a metric its default:
		// compare with that, or every pass would replace the route.
		if want[i].Priority == 0 && want[i].Dst.IP.To4() == nil {
			want[i].Priority = ipv6DefaultMetric
		}
	}
	have, err := d.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: idx, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	same := func(a, b netlink.Route) bool {
		return ipNetString(a.Dst) == ipNetString(b.Dst) && a.Gw.Equal(b.Gw) && a.Priority == b.Priority
	}
	var errs []error
	for _, w := range want {
		if slices.ContainsFunc(have, func(h netlink.Route) bool { return same(h, w) }) {
			continue
		}
		if err := d.nl.RouteReplace(&w); err != nil {
			errs = append(errs, fmt.Errorf("add route %s via %s: %w", ipNetString(w.Dst), w.Gw, err))
			continue
		}
		d.log.Info("route added", "link", m.name, "to", ipNetString(w.Dst), "via", w.Gw)
	}
	for _, h := range have {
		if h.Protocol != protoStatic && h.Protocol != protoDHCP {
			continue
		}
		if slices.ContainsFunc(want, func(w netlink.Route) bool { return same(h, w) }) {
			continue
		}
		if err := d.nl.RouteDel(&h); err != nil {
			errs = append(errs, fmt.Errorf("remove route %s: %w", ipNetString(h.Dst), err))
			continue
		}
		d.log.Info("route removed", "link", m.name, "to", ipNetString(h.Dst), "via", h.Gw)
	}
	return errors.Join(errs...)
}

// ipv6DefaultMetric is the metric the kernel gives an IPv6 route added
// without one (IP6_RT_PRIO_USER).
const ipv6DefaultMetric = 1024

func (d *Daemon) applyDHCPHostname(leases map[string]dhcp.Lease) {
	if d.cfg.Hostname != "" || d.opts.SetHostname == nil {
		return
	}
	for _, l := range leases {
		if l.Hostname == "" {
			continue
		}
		if cur, _ := os.Hostname(); cur == l.Hostname {
			return
		}
		if err := d.opts.SetHostname(l.Hostname); err != nil {
			d.log.Warn("set hostname from dhcp", "hostname", l.Hostname, "err", err)
		} else {
			d.log.Info("hostname from dhcp", "hostname", l.Hostname)
		}
		return
	}
}

// allAddressing lists the addressing of every configured link.
func (d *Daemon) allAddressing() []Addressing {
	var as []Addressing
	for _, i := range d.cfg.Interfaces {
		as = append(as, i.Addressing)
	}
	for _, v := range d.cfg.VLANs {
		as = append(as, v.Addressing)
	}
	for _, b := range d.cfg.Bonds {
		as = append(as, b.Addressing)
	}
	for _, b := range d.cfg.Bridges {
		as = append(as, b.Addressing)
	}
	return as
}

func writeSysfs(path, value string) error {
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 128
	if p.Addr().Is4() {
		bits = 32
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

func defaultDst(gw netip.Addr) *net.IPNet {
	if gw.Is4() {
		return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
}

func ipNetString(n *net.IPNet) string {
	if n == nil {
		return "default"
	}
	if ones, _ := n.Mask.Size(); ones == 0 {
		return "default"
	}
	return n.String()
}
