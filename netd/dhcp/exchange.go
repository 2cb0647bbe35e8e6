package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// requested are the options asked for in every DISCOVER and REQUEST
// (option 55): servers such as dnsmasq send only what is asked for.
var requested = []dhcpv4.OptionCode{
	dhcpv4.OptionSubnetMask,
	dhcpv4.OptionRouter,
	dhcpv4.OptionDomainNameServer,
	dhcpv4.OptionDomainName,
	dhcpv4.OptionDNSDomainSearchList,
	dhcpv4.OptionHostName,
	dhcpv4.OptionInterfaceMTU,
	dhcpv4.OptionIPAddressLeaseTime,
	dhcpv4.OptionRenewTimeValue,
	dhcpv4.OptionRebindingTimeValue,
	dhcpv4.OptionTFTPServerName,
	dhcpv4.OptionBootfileName,
	dhcpv4.GenericOptionCode(OptionConfigURL),
}

func (c *Client) options() []dhcpv4.Modifier {
	m := []dhcpv4.Modifier{dhcpv4.WithRequestedOptions(requested...)}
	if c.cfg.Hostname != "" {
		m = append(m, dhcpv4.WithOption(dhcpv4.OptHostName(c.cfg.Hostname)))
	}
	return m
}

// acquire gets a new lease: DISCOVER, OFFER, REQUEST, ACK (RFC 2131
// section 3.1).
func (c *Client) acquire(ctx context.Context, wait time.Duration) error {
	c.setState(StateSelecting, time.Time{})
	nc, err := c.broadcastClient(wait)
	if err != nil {
		return err
	}
	defer nc.Close()
	offer, err := nc.DiscoverOffer(ctx, c.options()...)
	if err != nil {
		return fmt.Errorf("discover: %w", noReply(err, "offer", wait))
	}
	c.setState(StateRequesting, time.Time{})
	sent := time.Now()
	ack, err := nc.RequestFromOffer(ctx, offer, c.options()...)
	if err != nil {
		return fmt.Errorf("request %s from %s: %w", offer.YourIPAddr, offer.ServerIdentifier(), noReply(err, "ACK", wait))
	}
	l, err := leaseFromACK(c.cfg.Interface, nc.InterfaceAddr(), ack.ACK, sent)
	if err != nil {
		return fmt.Errorf("request %s from %s: %w", offer.YourIPAddr, offer.ServerIdentifier(), err)
	}
	c.bind(l, "acquired")
	return nil
}

// reboot asks any server to confirm l, restored from disk (INIT-REBOOT,
// RFC 2131 section 3.2). Without a reply, Run keeps l until T1, as the RFC
// allows.
func (c *Client) reboot(ctx context.Context, l Lease, wait time.Duration) error {
	c.setState(StateRebooting, time.Time{})
	nc, err := c.broadcastClient(wait)
	if err != nil {
		return err
	}
	defer nc.Close()
	req, err := dhcpv4.New(append(c.options(),
		dhcpv4.WithHwAddr(nc.InterfaceAddr()),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(l.Address.Addr().AsSlice())))...)
	if err != nil {
		return fmt.Errorf("build REQUEST: %w", err)
	}
	return c.confirm(ctx, nc, nclient4.DefaultServers, req, l, "confirmed", wait)
}

// extend asks for more time on l: when renewing, from its server by
// unicast; when rebinding, from any server by broadcast (RFC 2131 section
// 4.4.5). Both are sent from l's address, which OnBound configured, so a
// plain UDP socket does and the server's unicast reply reaches it.
func (c *Client) extend(ctx context.Context, l Lease, state State, wait time.Duration) error {
	c.setState(state, time.Time{})
	dest, how := nclient4.DefaultServers, "rebound"
	if state == StateRenewing {
		how = "renewed"
		if l.Server.IsValid() {
			dest = &net.UDPAddr{IP: l.Server.AsSlice(), Port: nclient4.ServerPort}
		}
	}
	// server4's helper is the library's UDP socket bound to an interface and
	// allowed to broadcast, which is what a client needs here too.
	conn, err := server4.NewIPv4UDPConn(c.cfg.Interface, &net.UDPAddr{Port: nclient4.ClientPort})
	if err != nil {
		return fmt.Errorf("open UDP socket on %s: %w", c.cfg.Interface, err)
	}
	nc, err := nclient4.NewWithConn(conn, l.MAC, nclient4.WithTimeout(wait), nclient4.WithRetry(1), nclient4.WithServerAddr(dest))
	if err != nil {
		conn.Close()
		return fmt.Errorf("start DHCP client on %s: %w", c.cfg.Interface, err)
	}
	defer nc.Close()
	req, err := dhcpv4.New(append(c.options(),
		dhcpv4.WithHwAddr(l.MAC),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(l.Address.Addr().AsSlice()))...)
	if err != nil {
		return fmt.Errorf("build REQUEST: %w", err)
	}
	return c.confirm(ctx, nc, dest, req, l, how, wait)
}

// confirm sends req, a REQUEST for l, to dest and binds the lease that
// comes back; a NAK loses l.
func (c *Client) confirm(ctx context.Context, nc *nclient4.Client, dest *net.UDPAddr, req *dhcpv4.DHCPv4, l Lease, how string, wait time.Duration) error {
	sent := time.Now()
	resp, err := nc.SendAndRead(ctx, dest, req, nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak))
	if err != nil {
		return fmt.Errorf("request %s from %s: %w", l.Address.Addr(), dest.IP, noReply(err, "ACK", wait))
	}
	if resp.MessageType() == dhcpv4.MessageTypeNak {
		reason := fmt.Sprintf("server %s refused it", resp.ServerIdentifier())
		if msg := resp.Message(); msg != "" {
			reason += ": " + msg
		}
		c.expire(l, reason)
		return nil
	}
	nl, err := leaseFromACK(c.cfg.Interface, req.ClientHWAddr, resp, sent)
	if err != nil {
		return fmt.Errorf("request %s from %s: %w", l.Address.Addr(), dest.IP, err)
	}
	c.bind(nl, how)
	return nil
}

// sendRelease gives l back to its server; no reply comes (RFC 2131
// section 4.4.6).
func (c *Client) sendRelease(ctx context.Context, l Lease) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !l.Server.IsValid() {
		return errors.New("lease has no server identifier to send the release to")
	}
	msg, err := dhcpv4.New(
		dhcpv4.WithHwAddr(l.MAC),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease),
		dhcpv4.WithClientIP(l.Address.Addr().AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(l.Server.AsSlice())))
	if err != nil {
		return fmt.Errorf("build RELEASE: %w", err)
	}
	conn, err := server4.NewIPv4UDPConn(c.cfg.Interface, &net.UDPAddr{Port: nclient4.ClientPort})
	if err != nil {
		return fmt.Errorf("open UDP socket: %w", err)
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		if err := conn.SetWriteDeadline(d); err != nil {
			return fmt.Errorf("set write deadline: %w", err)
		}
	}
	if _, err := conn.WriteTo(msg.ToBytes(), &net.UDPAddr{IP: l.Server.AsSlice(), Port: nclient4.ServerPort}); err != nil {
		return fmt.Errorf("send to %s: %w", l.Server, err)
	}
	return nil
}

// broadcastClient sends and receives through a raw socket, which works
// before the interface has an address.
func (c *Client) broadcastClient(wait time.Duration) (*nclient4.Client, error) {
	nc, err := nclient4.New(c.cfg.Interface, nclient4.WithTimeout(wait), nclient4.WithRetry(1))
	if err != nil {
		return nil, fmt.Errorf("open raw socket on %s: %w", c.cfg.Interface, err)
	}
	return nc, nil
}

// noReply words nclient4's timeout as what was awaited and for how long.
func noReply(err error, what string, wait time.Duration) error {
	if errors.Is(err, nclient4.ErrNoResponse) {
		return fmt.Errorf("no %s within %s", what, wait.Round(time.Millisecond))
	}
	return err
}
