package cnet

import (
	"net/netip"
	"testing"
)

func TestAllocateSkipsReservedAndUsed(t *testing.T) {
	sub := netip.MustParsePrefix("10.200.7.0/30") // .0 network, .1 gateway, .2 free, .3 broadcast
	n := &Network{cfg: Config{Subnet: sub, Range: DefaultRange}, gw: netip.MustParseAddr("10.200.7.1")}
	a, err := n.Allocate(nil)
	if err != nil || a.String() != "10.200.7.2" {
		t.Fatalf("Allocate = %v, %v; want 10.200.7.2", a, err)
	}
	if a, err := n.Allocate([]netip.Addr{a}); err == nil {
		t.Fatalf("full subnet gave %v", a)
	}
}

func TestVethNamesFitAndDiffer(t *testing.T) {
	a, b := vethName("web"), vethName("web2")
	if len(a) > 15 || len(a+"p") > 15 || a == b {
		t.Errorf("veth names %q, %q: want distinct and, with the peer suffix, at most 15 characters", a, b)
	}
}
