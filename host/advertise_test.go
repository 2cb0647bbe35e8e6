package host

import (
	"net/netip"
	"testing"
)

func TestPickAdvertise(t *testing.T) {
	addrs := []hostAddr{
		{Link: "eth0", Index: 2, Addr: netip.MustParseAddr("10.0.2.15")},
		{Link: "lan0", Index: 3, Addr: netip.MustParseAddr("fd00::5")},
		{Link: "lan0", Index: 3, Addr: netip.MustParseAddr("192.168.7.5")},
		{Link: "br0", Index: 4, Addr: netip.MustParseAddr("172.16.0.1")},
	}
	none := netip.Prefix{}
	for _, tc := range []struct {
		spec        string
		defaultLink int
		want        string
	}{
		{"", 0, "10.0.2.15"},
		{"", 3, "192.168.7.5"}, // IPv4 preferred on the default route's link
		{"", 9, "10.0.2.15"},   // default link without addresses: first address
		{"lan0", 0, "192.168.7.5"},
		{"br0", 2, "172.16.0.1"},
		{"192.168.0.0/16", 0, "192.168.7.5"},
		{"fd00::/8", 0, "fd00::5"},
		{"172.16.0.1", 0, "172.16.0.1"},
		{"127.0.0.1", 0, "127.0.0.1"},
	} {
		got, err := pickAdvertise(tc.spec, addrs, tc.defaultLink, none)
		if err != nil || got.String() != tc.want {
			t.Errorf("pickAdvertise(%q, default link %d) = %v, %v; want %s", tc.spec, tc.defaultLink, got, err, tc.want)
		}
	}
	for _, spec := range []string{"wlan0", "10.9.9.9", "10.9.0.0/16"} {
		if got, err := pickAdvertise(spec, addrs, 0, none); err == nil {
			t.Errorf("pickAdvertise(%q) = %v, want an error", spec, got)
		}
	}
	if _, err := pickAdvertise("", nil, 0, none); err == nil {
		t.Error("no addresses: want an error")
	}

	// An IPv6-only host: its one IPv4 address is the container bridge's,
	// which is never advertised without a spec that names it.
	v6only := []hostAddr{
		{Link: "lan0", Index: 2, Addr: netip.MustParseAddr("2001:db8:60::1")},
		{Link: "plinth0", Index: 5, Addr: netip.MustParseAddr("10.200.21.1")},
	}
	containers := netip.MustParsePrefix("10.200.0.0/16")
	for _, defaultLink := range []int{0, 2} {
		if got, err := pickAdvertise("", v6only, defaultLink, containers); err != nil || got != netip.MustParseAddr("2001:db8:60::1") {
			t.Errorf("IPv6-only host, default link %d: %v, %v; want its IPv6 address", defaultLink, got, err)
		}
	}
	if got, err := pickAdvertise("plinth0", v6only, 2, containers); err != nil || got != netip.MustParseAddr("10.200.21.1") {
		t.Errorf("a spec naming the bridge: %v, %v", got, err)
	}
	if _, err := pickAdvertise("", v6only[1:], 0, containers); err == nil {
		t.Error("only a container address: want an error")
	}
}

func TestPickSubnetKeptAndAvoidsTaken(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	id := NewNodeID()
	first, err := pickSubnet(cfg, id, nil)
	if err != nil || first.Bits() != 24 || !cnetRange().Contains(first.Addr()) {
		t.Fatalf("pickSubnet = %v, %v", first, err)
	}
	again, _ := pickSubnet(cfg, id, []string{first.String()})
	if again != first {
		t.Errorf("kept subnet %v changed to %v", first, again)
	}
	other := DefaultConfig()
	other.StateDir = t.TempDir()
	// The same node ID starts at the same slice; taken, it moves on.
	if p, _ := pickSubnet(other, id, []string{first.String()}); p == first {
		t.Errorf("picked the taken subnet %v", p)
	}
}

func cnetRange() netip.Prefix { return netip.MustParsePrefix("10.200.0.0/16") }
