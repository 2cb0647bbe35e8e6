package cnet_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/plinth-os/plinth/host/cnet"
	"github.com/plinth-os/plinth/internal/netnstest"
)

// The bridge keeps the MAC that follows from the gateway's address
// whatever its ports are, also when it was there before hostd started.
func TestBridgeMACStaysPut(t *testing.T) {
	if !netnstest.InOwnNetns(t) {
		return
	}
	// A bridge left by an earlier hostd, with a port whose MAC is lower
	// than any other: an unset bridge MAC would be that port's.
	low := net.HardwareAddr{0, 0, 0, 0, 0, 1}
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "plinth0"}}); err != nil {
		t.Fatal(err)
	}
	br, _ := netlink.LinkByName("plinth0")
	port(t, br, "low0", low)
	macOf := func() net.HardwareAddr {
		t.Helper()
		l, err := netlink.LinkByName("plinth0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr
	}
	if !bytes.Equal(macOf(), low) {
		t.Fatalf("the bridge's MAC is %s; the kernel was expected to give it its port's %s", macOf(), low)
	}

	n, err := cnet.New(cnet.Config{Subnet: netip.MustParsePrefix("10.200.9.0/24"), NetnsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	want := net.HardwareAddr{0x02, 0x42, 10, 200, 9, 1}
	if !bytes.Equal(macOf(), want) {
		t.Fatalf("after New the bridge's MAC is %s, want %s", macOf(), want)
	}
	// Ports come and go with jobs, one of them lower than the bridge.
	for i, id := range []string{"a", "b"} {
		if _, err := n.Attach(id, netip.AddrFrom4([4]byte{10, 200, 9, byte(2 + i)})); err != nil {
			t.Fatal(err)
		}
	}
	port(t, br, "low1", net.HardwareAddr{0, 0, 0, 0, 0, 2})
	if err := n.Detach("a"); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "low0"}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(macOf(), want) {
		t.Fatalf("after ports came and went the bridge's MAC is %s, want %s", macOf(), want)
	}
	n.Detach("b")
}

// port puts a veth end with MAC mac on the bridge.
func port(t *testing.T, br netlink.Link, name string, mac net.HardwareAddr) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac, MasterIndex: br.Attrs().Index}, PeerName: name + "p"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("port %s: %v", name, err)
	}
	if err := netlink.LinkSetUp(v); err != nil {
		t.Fatal(err)
	}
}
