// Package netd is plinth's layer-0 network daemon: it brings a machine's
// links, addresses, routes and DNS to the state its Config describes, with
// netlink, and keeps them there when links flap or someone changes them by
// hand. DHCPv4 leases come from package netd/dhcp, DHCPv6 ones from
// netd/dhcp6.
//
// netd reads no flags or environment: callers build a Config (the machine
// config's [network] section, see init/config) and call Run.
package netd

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Config is the desired network state of one machine.
type Config struct {
	// Interfaces are the physical NICs netd manages. With none (and no
	// VLANs, Bonds or Bridges), netd runs DHCP on every physical interface
	// that has carrier.
	Interfaces []Interface
	VLANs      []VLAN
	Bonds      []Bond
	// Bridges are software bridges, e.g. the one containers attach to.
	Bridges []Bridge

	// DNS servers and search domains written to resolv.conf, ahead of those
	// learnt from DHCP.
	DNS    []netip.Addr
	Search []string

	// Hostname is the machine's configured hostname. When empty, netd sets
	// the hostname a DHCP server offers.
	Hostname string

	// StateDir keeps DHCP leases across restarts of netd.
	StateDir string
	// RunDir holds resolv.conf and the status socket.
	RunDir string
	// ReadyTimeout bounds the wait for an address when no link is Required:
	// netd then reports ready anyway. Required links are waited for without
	// limit (init's supervisor has its own timeout and moves on).
	ReadyTimeout time.Duration
}

// DefaultConfig returns the config of a machine whose machine config has no
// [network] section.
func DefaultConfig() Config {
	return Config{
		StateDir:     "/var/lib/plinth/netd",
		RunDir:       "/run/plinth",
		ReadyTimeout: 15 * time.Second,
	}
}

// Addressing is how a link gets its addresses and routes.
type Addressing struct {
	// DHCP runs a DHCPv4 client on the link. It excludes Addresses and
	// Gateway.
	DHCP bool
	// DHCP6 runs a DHCPv6 client on the link for addresses (IA_NA) and
	// DNS; the on-link prefix and the default route come from router
	// advertisements. It goes with static addresses and DHCPv4 alike.
	DHCP6 bool
	// Addresses are static addresses with their prefix length.
	Addresses []netip.Prefix
	// Gateway is the default route's next hop; it must be inside one of
	// Addresses.
	Gateway netip.Addr
	Routes  []Route
	// MTU of the link; 0 leaves it alone (or takes DHCP's).
	MTU int
	// Required links must have an address before netd reports ready.
	Required bool
}

// Route is a static route through the link.
type Route struct {
	To     netip.Prefix
	Via    netip.Addr // optional: without it the route is on-link
	Metric int
}

// Interface is a physical NIC, matched by MAC when MAC is set (and then
// renamed to Name if Name is set), else by Name.
type Interface struct {
	Name string
	MAC  net.HardwareAddr
	Addressing
}

// VLAN is an 802.1Q sub-interface of Link (an Interface or Bond name).
type VLAN struct {
	Name string
	Link string
	ID   int
	Addressing
}

// Bond modes, by the bonding driver's names.
const (
	BondBalanceRR    = "balance-rr"
	BondActiveBackup = "active-backup"
	BondBalanceXOR   = "balance-xor"
	BondBroadcast    = "broadcast"
	Bond8023AD       = "802.3ad"
	BondBalanceTLB   = "balance-tlb"
	BondBalanceALB   = "balance-alb"
)

// BondModes lists every mode in the driver's numbering (0 to 6).
var BondModes = []string{BondBalanceRR, BondActiveBackup, BondBalanceXOR, BondBroadcast, Bond8023AD, BondBalanceTLB, BondBalanceALB}

// LACPRates are the 802.3ad LACPDU rates: every 30 s, or every second
// (a dead partner is then noticed in 3 s instead of 90 s).
var LACPRates = []string{"slow", "fast"}

// XmitHashPolicies are the ways balance-xor, 802.3ad and balance-tlb pick a
// member for each packet.
var XmitHashPolicies = []string{"layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4", "vlan+srcmac"}

// DefaultMiimon is the bond's link check interval when the config names
// none: a dead member is noticed within 100 ms.
const DefaultMiimon = 100

// Bond aggregates Members (Interface names) into one link.
type Bond struct {
	Name    string
	Mode    string
	Members []string
	// Primary is the member preferred while it has carrier; optional, for
	// active-backup, balance-tlb and balance-alb.
	Primary string
	// Miimon is the interval of the members' link checks in milliseconds;
	// 0 means DefaultMiimon.
	Miimon int
	// LACPRate is "slow" (default) or "fast"; 802.3ad only.
	LACPRate string
	// XmitHashPolicy picks a member per packet (default "layer2");
	// balance-xor, 802.3ad and balance-tlb only.
	XmitHashPolicy string
	Addressing
}

// MiimonOrDefault is the link check interval netd gives the kernel.
func (b Bond) MiimonOrDefault() int {
	if b.Miimon == 0 {
		return DefaultMiimon
	}
	return b.Miimon
}

// Bridge is a software bridge; Members are enslaved to it.
type Bridge struct {
	Name    string
	Members []string
	Addressing
}

// Default reports whether c configures no links, so that netd runs DHCP on
// every physical interface with carrier.
func (c Config) Default() bool {
	return len(c.Interfaces) == 0 && len(c.VLANs) == 0 && len(c.Bonds) == 0 && len(c.Bridges) == 0
}

// ConfigError is one problem Check found, located by section ("interface",
// "vlan", "bond", "bridge", or "" for top-level keys), entry index in that
// section and field name (as in the machine config's TOML keys), so that
// the machine config parser can point at the line.
type ConfigError struct {
	Section string
	Index   int
	Field   string
	Msg     string
}

func (e ConfigError) Error() string {
	if e.Section == "" {
		return fmt.Sprintf("network.%s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("network.%s[%d].%s: %s", e.Section, e.Index, e.Field, e.Msg)
}

// maxIfName is IFNAMSIZ-1, the longest link name the kernel accepts.
const maxIfName = 15

// Check returns every problem with c: bad names, conflicting addressing,
// references to links c does not declare, bonds without members.
func (c Config) Check() []ConfigError {
	var errs []ConfigError
	add := func(section string, i int, field, format string, args ...any) {
		errs = append(errs, ConfigError{section, i, field, fmt.Sprintf(format, args...)})
	}
	kind := map[string]string{} // link name → section that declares it
	declare := func(section string, i int, name string) {
		if err := CheckLinkName(name); err != nil {
			add(section, i, "name", "%v", err)
			return
		}
		if prev, ok := kind[name]; ok {
			add(section, i, "name", "%q is already declared in [[network.%s]]; link names must be unique", name, prev)
			return
		}
		kind[name] = section
	}
	for i, itf := range c.Interfaces {
		switch {
		case itf.Name == "" && len(itf.MAC) == 0:
			add("interface", i, "name", "an interface needs a name or a mac to match it")
		case itf.Name != "":
			declare("interface", i, itf.Name)
		}
		if len(itf.MAC) != 0 && len(itf.MAC) != 6 {
			add("interface", i, "mac", "%s is not an Ethernet MAC address (6 bytes, e.g. 52:54:00:12:34:56)", itf.MAC)
		}
		errs = append(errs, checkAddressing("interface", i, itf.Addressing)...)
	}
	for i, b := range c.Bonds {
		declare("bond", i, b.Name)
		errs = append(errs, checkBondOptions(i, b)...)
		errs = append(errs, checkAddressing("bond", i, b.Addressing)...)
	}
	for i, v := range c.VLANs {
		declare("vlan", i, v.Name)
		if v.ID < 1 || v.ID > 4094 {
			add("vlan", i, "id", "%d is not a VLAN ID; use 1 to 4094", v.ID)
		}
		errs = append(errs, checkAddressing("vlan", i, v.Addressing)...)
	}
	for i, b := range c.Bridges {
		declare("bridge", i, b.Name)
		errs = append(errs, checkAddressing("bridge", i, b.Addressing)...)
	}

	// References: only now is every name known.
	enslaved := map[string]string{} // interface → bond or bridge that takes it
	members := func(section string, i int, owner string, names []string) {
		for _, m := range names {
			switch {
			case kind[m] != "interface":
				add(section, i, "members", "%q is not a declared interface; add an [[network.interface]] with name = %q", m, m)
			case enslaved[m] != "":
				add(section, i, "members", "interface %q is already a member of %s", m, enslaved[m])
			default:
				enslaved[m] = owner
			}
		}
	}
	for i, b := range c.Bonds {
		if len(b.Members) == 0 {
			add("bond", i, "members", "a bond needs at least one member interface")
		}
		members("bond", i, b.Name, b.Members)
		if b.Primary != "" && !slices.Contains(b.Members, b.Primary) {
			add("bond", i, "primary", "%q is not one of the bond's members", b.Primary)
		}
	}
	for i, b := range c.Bridges {
		members("bridge", i, b.Name, b.Members)
	}
	for i, v := range c.VLANs {
		if k := kind[v.Link]; k != "interface" && k != "bond" {
			add("vlan", i, "link", "%q is not a declared interface or bond", v.Link)
		}
	}
	for i, itf := range c.Interfaces {
		if owner := enslaved[itf.Name]; owner != "" && itf.Addressing.configured() {
			add("interface", i, "name", "interface %q is a member of %s and cannot have its own addresses, DHCP or routes; configure them on %s", itf.Name, owner, owner)
		}
	}

	for _, s := range c.Search {
		if err := checkDomain(s); err != nil {
			add("", 0, "search", "%v", err)
		}
	}
	return errs
}

// checkBondOptions checks a bond's mode and the options that go with it.
func checkBondOptions(i int, b Bond) []ConfigError {
	var errs []ConfigError
	add := func(field, format string, args ...any) {
		errs = append(errs, ConfigError{"bond", i, field, fmt.Sprintf(format, args...)})
	}
	switch {
	case b.Mode == "":
		add("mode", "a bond needs a mode; use one of %s", quoteAll(BondModes))
		return errs
	case !slices.Contains(BondModes, b.Mode):
		add("mode", "%q is not a bond mode; use one of %s", b.Mode, quoteAll(BondModes))
		return errs
	}
	if b.Miimon < 0 || b.Miimon > 60000 {
		add("miimon", "%d is not a link check interval; use 1 to 60000 milliseconds (default %d)", b.Miimon, DefaultMiimon)
	}
	if b.LACPRate != "" {
		if !slices.Contains(LACPRates, b.LACPRate) {
			add("lacp_rate", "%q is not an LACP rate; use one of %s", b.LACPRate, quoteAll(LACPRates))
		} else if b.Mode != Bond8023AD {
			add("lacp_rate", "applies only to mode %q, not %q; remove it", Bond8023AD, b.Mode)
		}
	}
	if b.XmitHashPolicy != "" {
		if !slices.Contains(XmitHashPolicies, b.XmitHashPolicy) {
			add("xmit_hash_policy", "%q is not a transmit hash policy; use one of %s", b.XmitHashPolicy, quoteAll(XmitHashPolicies))
		} else if !hashesTraffic(b.Mode) {
			add("xmit_hash_policy", "applies only to modes %q, %q and %q, not %q; remove it", BondBalanceXOR, Bond8023AD, BondBalanceTLB, b.Mode)
		}
	}
	if b.Primary != "" && !hasPrimary(b.Mode) {
		add("primary", "applies only to modes %q, %q and %q, not %q; remove it", BondActiveBackup, BondBalanceTLB, BondBalanceALB, b.Mode)
	}
	return errs
}

// hashesTraffic reports whether mode spreads packets by xmit_hash_policy.
func hashesTraffic(mode string) bool {
	return mode == BondBalanceXOR || mode == Bond8023AD || mode == BondBalanceTLB
}

// hasPrimary reports whether mode has one preferred member.
func hasPrimary(mode string) bool {
	return mode == BondActiveBackup || mode == BondBalanceTLB || mode == BondBalanceALB
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

func (a Addressing) configured() bool {
	return a.DHCP || a.DHCP6 || len(a.Addresses) > 0 || a.Gateway.IsValid() || len(a.Routes) > 0
}

func checkAddressing(section string, i int, a Addressing) []ConfigError {
	var errs []ConfigError
	add := func(field, format string, args ...any) {
		errs = append(errs, ConfigError{section, i, field, fmt.Sprintf(format, args...)})
	}
	if a.DHCP && len(a.Addresses) > 0 {
		add("addresses", "static addresses conflict with dhcp = true; use one or the other")
	}
	if a.DHCP && a.Gateway.IsValid() {
		add("gateway", "a static gateway conflicts with dhcp = true (DHCP supplies the router)")
	}
	for _, p := range a.Addresses {
		if !p.IsValid() || p.Addr().IsUnspecified() || p.Addr().IsMulticast() {
			add("addresses", "%s is not a usable host address", p)
		}
	}
	if a.Gateway.IsValid() && !a.DHCP && !onLink(a.Gateway, a.Addresses) {
		add("gateway", "%s is not inside any of the link's addresses; it must be reachable on the link", a.Gateway)
	}
	for _, r := range a.Routes {
		if !r.To.IsValid() {
			add("routes", "a route needs a destination (to = \"10.0.0.0/8\")")
		} else if r.To != r.To.Masked() {
			add("routes", "destination %s has host bits set; write %s", r.To, r.To.Masked())
		}
		if r.Via.IsValid() && r.To.IsValid() && r.Via.Is4() != r.To.Addr().Is4() {
			add("routes", "gateway %s and destination %s are of different IP families", r.Via, r.To)
		}
		if r.Metric < 0 {
			add("routes", "metric %d is negative", r.Metric)
		}
	}
	if a.MTU != 0 && (a.MTU < 68 || a.MTU > 65535) {
		add("mtu", "%d is out of range; use 68 to 65535", a.MTU)
	}
	return errs
}

func onLink(gw netip.Addr, addrs []netip.Prefix) bool {
	for _, p := range addrs {
		if p.Masked().Contains(gw) {
			return true
		}
	}
	return false
}

// CheckLinkName reports whether the kernel accepts name as a link name.
func CheckLinkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("a name is required")
	case len(name) > maxIfName:
		return fmt.Errorf("%q is longer than %d characters, the kernel's limit for link names", name, maxIfName)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid link name", name)
	case strings.ContainsAny(name, "/: \t\n"):
		return fmt.Errorf("%q contains '/', ':' or whitespace, which link names cannot", name)
	}
	return nil
}

func checkDomain(s string) error {
	if s == "" || len(s) > 253 {
		return fmt.Errorf("%q is not a valid search domain", s)
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
			return fmt.Errorf("%q is not a valid search domain", s)
		}
	}
	return nil
}
