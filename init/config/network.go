package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/plinth-os/plinth/netd"
)

// networkField is the [network] section. Once it decodes without problems,
// netd's own checks run on the result, and each finding is reported at the
// line of the key it is about.
func networkField(c *netd.Config) field {
	seen := map[string][]entry{} // "vlan" → the [[network.vlan]] entries
	fields := networkFields(c, seen)
	return field{
		key: "network",
		decode: func(d *decoder, at path, p toml.Primitive) {
			keys, ok := d.table(at, p)
			if !ok {
				return
			}
			n := len(d.problems)
			d.fields(at, keys, fields, "known keys in [network]")
			if len(d.problems) > n {
				return // Check would only repeat them, or trip over half-decoded links
			}
			for _, e := range c.Check() {
				d.checkProblem(at, p, keys, seen, e)
			}
		},
		encode: func() any { return encodeTable(fields) },
	}
}

// checkProblem records e, found by netd.Check in the [network] section at
// `at`, on the line of the key it names in the entry it names, or, when the
// file leaves that key out, on the entry's first line.
func (d *decoder) checkProblem(at path, p toml.Primitive, keys map[string]toml.Primitive, seen map[string][]entry, e netd.ConfigError) {
	if entries := seen[e.Section]; e.Index < len(entries) {
		at, p, keys = entries[e.Index].at, entries[e.Index].p, entries[e.Index].keys
	}
	d.keyProblem(at, p, keys, e.Field, "%s", e.Msg)
}

func networkFields(c *netd.Config, seen map[string][]entry) []field {
	return []field{
		textsField("dns", &c.DNS, ipAddr),
		textsField("search", &c.Search, anyString),
		textField("ready_timeout", &c.ReadyTimeout, duration(0, 10*time.Minute)),
		tablesField("interface", &c.Interfaces, interfaceFields, seen),
		tablesField("vlan", &c.VLANs, vlanFields, seen),
		tablesField("bond", &c.Bonds, bondFields, seen),
		tablesField("bridge", &c.Bridges, bridgeFields, seen),
	}
}

func interfaceFields(i *netd.Interface) []field {
	return append([]field{
		textField("name", &i.Name, anyString),
		textField("mac", &i.MAC, macAddr),
	}, addressingFields(&i.Addressing)...)
}

func vlanFields(v *netd.VLAN) []field {
	return append([]field{
		textField("name", &v.Name, anyString),
		textField("link", &v.Link, anyString),
		intField("id", &v.ID, math.MinInt32, math.MaxInt32),
	}, addressingFields(&v.Addressing)...)
}

func bondFields(b *netd.Bond) []field {
	return append([]field{
		textField("name", &b.Name, anyString),
		textField("mode", &b.Mode, anyString),
		textsField("members", &b.Members, anyString),
		textField("primary", &b.Primary, anyString),
		intField("miimon", &b.Miimon, math.MinInt32, math.MaxInt32),
		textField("lacp_rate", &b.LACPRate, anyString),
		textField("xmit_hash_policy", &b.XmitHashPolicy, anyString),
	}, addressingFields(&b.Addressing)...)
}

func bridgeFields(b *netd.Bridge) []field {
	return append([]field{
		textField("name", &b.Name, anyString),
		textsField("members", &b.Members, anyString),
	}, addressingFields(&b.Addressing)...)
}

// addressingFields are the keys every link has.
//
// Integers are only held to 32 bits, what netd hands the kernel. Which
// values make sense (MTU 68 to 65535, VLAN ID 1 to 4094, metrics not
// negative), like which names and references do, is netd.Check's to say:
// each rule lives in one place.
func addressingFields(a *netd.Addressing) []field {
	return []field{
		boolField("dhcp", &a.DHCP),
		boolField("dhcp6", &a.DHCP6),
		textsField("addresses", &a.Addresses, hostAddress),
		textField("gateway", &a.Gateway, ipAddr),
		inlineTablesField("routes", &a.Routes, "route", `[{ to = "10.0.0.0/8", via = "192.0.2.254" }]`, routeFields),
		intField("mtu", &a.MTU, math.MinInt32, math.MaxInt32),
		boolField("required", &a.Required),
	}
}

func routeFields(r *netd.Route) []field {
	return []field{
		textField("to", &r.To, destination),
		textField("via", &r.Via, ipAddr),
		intField("metric", &r.Metric, math.MinInt32, math.MaxInt32),
	}
}

var ipAddr = text[netip.Addr]{
	want: `an IP address string such as "192.0.2.1"`,
	parse: func(s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Addr{}, fmt.Errorf(`%q is not an IP address; write it like "192.0.2.1" or "2001:db8::1"`, s)
		}
		return a, nil
	},
	format: func(a netip.Addr) string {
		if !a.IsValid() {
			return ""
		}
		return a.String()
	},
}

// hostAddress is a link's address with the length of its subnet.
var hostAddress = text[netip.Prefix]{
	want: `an address with prefix length such as "192.0.2.10/24"`,
	parse: func(s string) (netip.Prefix, error) {
		return parseCIDR(s, "192.0.2.10/24", func(a netip.Addr) string {
			bits := 24
			if a.Is6() {
				bits = 64
			}
			return fmt.Sprintf("add the length of its subnet, as in \"%s/%d\"", a, bits)
		})
	},
	format: formatPrefix,
}

// destination is where a route leads.
var destination = text[netip.Prefix]{
	want: `a destination such as "10.0.0.0/8"`,
	parse: func(s string) (netip.Prefix, error) {
		return parseCIDR(s, "10.0.0.0/8", func(a netip.Addr) string {
			return fmt.Sprintf("add one, as in \"%s/%d\" for a route to that address alone", a, a.BitLen())
		})
	},
	format: formatPrefix,
}

// parseCIDR parses an address with prefix length. For a bare address,
// suggest says what to add.
func parseCIDR(s, example string, suggest func(netip.Addr) string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.Prefix{}, fmt.Errorf("%q has no prefix length; %s", s, suggest(a.WithZone("")))
	}
	return netip.Prefix{}, fmt.Errorf("%q is not an address with prefix length (CIDR); write it like %q", s, example)
}

func formatPrefix(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

var macAddr = text[net.HardwareAddr]{
	want: `a MAC address string such as "52:54:00:12:34:56"`,
	parse: func(s string) (net.HardwareAddr, error) {
		mac, err := net.ParseMAC(s)
		if err != nil {
			return nil, fmt.Errorf(`%q is not a MAC address; write it like "52:54:00:12:34:56"`, s)
		}
		return mac, nil
	},
	format: net.HardwareAddr.String,
}
