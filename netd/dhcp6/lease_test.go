package dhcp6

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/insomniacslk/dhcp/rfc1035label"
)

func reply(t *testing.T, t1, t2 time.Duration, addrs ...*dhcpv6.OptIAAddress) *dhcpv6.Message {
	t.Helper()
	m, err := dhcpv6.NewMessage()
	if err != nil {
		t.Fatal(err)
	}
	m.MessageType = dhcpv6.MessageTypeReply
	m.AddOption(dhcpv6.OptServerID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}}))
	ia := &dhcpv6.OptIANA{IaId: [4]byte{1, 2, 3, 4}, T1: t1, T2: t2}
	for _, a := range addrs {
		ia.Options.Add(a)
	}
	m.AddOption(ia)
	m.AddOption(dhcpv6.OptDNS(net.ParseIP("2001:db8::53")))
	m.AddOption(dhcpv6.OptDomainSearchList(&rfc1035label.Labels{Labels: []string{"example.org"}}))
	return m
}

func iaAddr(a string, preferred, valid time.Duration) *dhcpv6.OptIAAddress {
	return &dhcpv6.OptIAAddress{IPv6Addr: net.ParseIP(a), PreferredLifetime: preferred, ValidLifetime: valid}
}

func TestLeaseFrom(t *testing.T) {
	now := time.Unix(1000, 0)
	l, err := leaseFrom(reply(t, 0, 0,
		iaAddr("2001:db8::100", time.Hour, 2*time.Hour),
		iaAddr("2001:db8::101", 0, 0),                   // withdrawn
		iaAddr("2001:db8::102", 3*time.Hour, time.Hour), // preferred past valid: invalid
		iaAddr("2001:db8::103", 20*time.Minute, 3*time.Hour),
	), now)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range l.Addresses {
		got = append(got, a.Addr.String())
	}
	if !slices.Equal(got, []string{"2001:db8::100", "2001:db8::103"}) {
		t.Errorf("addresses %v", got)
	}
	// No T1/T2 from the server: half and 0.8 of the shortest preferred.
	if l.T1 != 10*time.Minute || l.T2 != 16*time.Minute {
		t.Errorf("T1 %v T2 %v, want 10m and 16m", l.T1, l.T2)
	}
	if l.Expires() != now.Add(3*time.Hour) {
		t.Errorf("expires %v, want the longest valid lifetime after binding", l.Expires())
	}
	if !slices.Equal(l.DNS, []netip.Addr{netip.MustParseAddr("2001:db8::53")}) || !slices.Equal(l.Search, []string{"example.org"}) {
		t.Errorf("DNS %v search %v", l.DNS, l.Search)
	}
	// The server's own T1/T2 are kept.
	l, err = leaseFrom(reply(t, 5*time.Minute, 8*time.Minute, iaAddr("2001:db8::100", time.Hour, 2*time.Hour)), now)
	if err != nil || l.T1 != 5*time.Minute || l.T2 != 8*time.Minute {
		t.Errorf("T1 %v T2 %v (%v)", l.T1, l.T2, err)
	}
}

func TestLeaseFromRefusals(t *testing.T) {
	noAddr := reply(t, 0, 0, iaAddr("2001:db8::101", 0, 0))
	status := reply(t, 0, 0)
	status.Options.OneIANA().Options.Add(&dhcpv6.OptStatusCode{StatusCode: iana.StatusNoAddrsAvail, StatusMessage: "pool empty"})
	advertise := reply(t, 0, 0, iaAddr("2001:db8::100", time.Hour, 2*time.Hour))
	advertise.MessageType = dhcpv6.MessageTypeAdvertise
	for name, c := range map[string]struct {
		m    *dhcpv6.Message
		want string
	}{
		"no usable address": {noAddr, "without a usable address"},
		"status":            {status, "pool empty"},
		"not a reply":       {advertise, "instead of a reply"},
	} {
		if _, err := leaseFrom(c.m, time.Now()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.want)
		}
	}
}
