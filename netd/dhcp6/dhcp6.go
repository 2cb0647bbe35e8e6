// Package dhcp6 is netd's DHCPv6 client (RFC 8415, stateful): it asks for
// non-temporary addresses (IA_NA) and DNS servers and search domains for
// one interface, renews and rebinds them, and tells its caller when a lease
// is bound or lost. Messages are built, sent and parsed by
// github.com/insomniacslk/dhcp's dhcpv6 and nclient6.
//
// It configures nothing: the caller adds the addresses (as /128s, with
// their lifetimes; the on-link prefix and the default route come from the
// router advertisements the kernel acts on) and removes them when lost.
// The client identifies itself by a DUID made of the interface's MAC
// alone (DUID-LL), so a restarted client is the same client to the
// server, which gives it the same addresses again.
package dhcp6

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/nclient6"
	"github.com/insomniacslk/dhcp/iana"
)

// Config is one client's configuration.
type Config struct {
	// Interface is the link the client runs on.
	Interface string
	// Timeout is how long one message waits for a reply before it is
	// sent again, Retries how often (RFC 8415's first retransmission is
	// 1 s for a Solicit).
	Timeout time.Duration
	Retries int
	// BackoffMin and BackoffMax bound the pause between failed rounds.
	BackoffMin, BackoffMax time.Duration
	// Log gets one line per event; nil logs nothing.
	Log *slog.Logger
	// OnBound is called with every lease held anew (acquired, renewed,
	// rebound); Run waits for it.
	OnBound func(Lease)
	// OnExpired is called when a lease is lost.
	OnExpired func(Lease)
	// ReleaseOnStop, asked when Run's context ends with a lease held,
	// says whether to give it back to the server (a machine shutting
	// down) or keep it for the next client (a restart); OnReleased is
	// called once it was given back.
	ReleaseOnStop func() bool
	OnReleased    func(Lease)
}

// DefaultConfig returns the config of a client on iface.
func DefaultConfig(iface string) Config {
	return Config{
		Interface:  iface,
		Timeout:    time.Second,
		Retries:    3,
		BackoffMin: time.Second,
		BackoffMax: time.Minute,
	}
}

// Address is a leased address with its lifetimes, from when the lease
// was bound.
type Address struct {
	Addr      netip.Addr    `json:"addr"`
	Preferred time.Duration `json:"preferred"`
	Valid     time.Duration `json:"valid"`
}

// Lease is what a server's Reply gave.
type Lease struct {
	Addresses []Address     `json:"addresses"`
	DNS       []netip.Addr  `json:"dns,omitempty"`
	Search    []string      `json:"search,omitempty"`
	Server    string        `json:"server"` // the server's DUID, as text
	T1        time.Duration `json:"t1"`
	T2        time.Duration `json:"t2"`
	Bound     time.Time     `json:"bound"`

	serverID dhcpv6.DUID
	iana     *dhcpv6.OptIANA
}

// Expires is when the last of the lease's addresses becomes invalid.
func (l Lease) Expires() time.Time {
	var longest time.Duration
	for _, a := range l.Addresses {
		longest = max(longest, a.Valid)
	}
	return l.Bound.Add(longest)
}

// Status is a client's state for netd's status.
type Status struct {
	State       string    `json:"state"` // soliciting, bound, renewing, rebinding
	Lease       *Lease    `json:"lease,omitempty"`
	Attempts    int       `json:"attempts,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// Client runs the exchanges of one interface.
type Client struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	status Status
	lease  *Lease
	conn   *nclient6.Client
	duid   dhcpv6.DUID
}

// New returns a client for cfg; Run starts it.
func New(cfg Config) *Client {
	def := DefaultConfig(cfg.Interface)
	if cfg.Timeout <= 0 {
		cfg.Timeout = def.Timeout
	}
	if cfg.Retries <= 0 {
		cfg.Retries = def.Retries
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = def.BackoffMin
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(def.BackoffMax, cfg.BackoffMin)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: log, status: Status{State: "soliciting"}}
}

// Status returns a copy of the client's state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	if c.lease != nil {
		l := *c.lease
		s.Lease = &l
	}
	return s
}

func (c *Client) setState(state string, err error, next time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status.State, c.status.NextAttempt = state, next
	if err != nil {
		c.status.Attempts++
		c.status.LastError = err.Error()
	} else {
		c.status.Attempts, c.status.LastError = 0, ""
	}
}

// Run acquires a lease and keeps it until ctx is done.
func (c *Client) Run(ctx context.Context) error {
	defer c.close()
	defer c.releaseOnStop()
	backoff := c.cfg.BackoffMin
	for ctx.Err() == nil {
		l, err := c.acquire(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			next := time.Now().Add(backoff)
			c.setState("soliciting", err, next)
			c.log.Warn("dhcpv6 solicit", "err", err, "retry_in", backoff)
			if !sleep(ctx, backoff) {
				break
			}
			backoff = min(2*backoff, c.cfg.BackoffMax)
			continue
		}
		backoff = c.cfg.BackoffMin
		c.bound(l)
		c.keep(ctx, l)
	}
	return nil
}

// keep renews the lease at T1 and rebinds it at T2 until it expires or
// ctx is done.
func (c *Client) keep(ctx context.Context, l Lease) {
	for {
		t1, t2, end := l.Bound.Add(l.T1), l.Bound.Add(l.T2), l.Expires()
		if !sleep(ctx, time.Until(t1)) {
			return
		}
		renewed := false
		for !renewed && time.Now().Before(end) {
			state, server := "renewing", l.serverID
			if !time.Now().Before(t2) {
				state, server = "rebinding", nil // any server may answer
			}
			n, err := c.extend(ctx, l, server)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				l, renewed = n, true
				break
			}
			// Retry at half the time left to the next deadline, at least
			// the minimum backoff (RFC 8415 section 18.2.4's spirit).
			deadline := t2
			if state == "rebinding" || !time.Now().Before(t2) {
				deadline = end
			}
			wait := max(time.Until(deadline)/2, c.cfg.BackoffMin)
			c.setState(state, err, time.Now().Add(wait))
			c.log.Warn("dhcpv6 "+state, "err", err, "retry_in", wait)
			if !sleep(ctx, min(wait, max(time.Until(end), 0))) {
				return
			}
		}
		if !renewed {
			c.expired(l)
			return
		}
		c.bound(l)
	}
}

func (c *Client) bound(l Lease) {
	c.mu.Lock()
	c.lease = &l
	c.mu.Unlock()
	c.setState("bound", nil, time.Time{})
	addrs := make([]string, len(l.Addresses))
	for i, a := range l.Addresses {
		addrs[i] = a.Addr.String()
	}
	c.log.Info("dhcpv6 lease", "addresses", addrs, "dns", len(l.DNS), "t1", l.T1, "expires", l.Expires().Format(time.RFC3339))
	if c.cfg.OnBound != nil {
		c.cfg.OnBound(l)
	}
}

func (c *Client) expired(l Lease) {
	c.mu.Lock()
	c.lease = nil
	c.mu.Unlock()
	c.setState("soliciting", errors.New("lease expired"), time.Time{})
	c.log.Warn("dhcpv6 lease lost")
	if c.cfg.OnExpired != nil {
		c.cfg.OnExpired(l)
	}
}

// client opens the interface's DHCPv6 socket on first use: it needs the
// link-local address, which is unusable until duplicate address detection
// has passed (~1 s after the link comes up).
func (c *Client) client() (*nclient6.Client, dhcpv6.DUID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		return c.conn, c.duid, nil
	}
	ifi, err := net.InterfaceByName(c.cfg.Interface)
	if err != nil {
		return nil, nil, err
	}
	if len(ifi.HardwareAddr) < 4 {
		return nil, nil, fmt.Errorf("%s has no hardware address for a DHCPv6 client ID", c.cfg.Interface)
	}
	conn, err := nclient6.New(c.cfg.Interface, nclient6.WithTimeout(c.cfg.Timeout), nclient6.WithRetry(c.cfg.Retries))
	if err != nil {
		return nil, nil, fmt.Errorf("open DHCPv6 socket on %s: %w", c.cfg.Interface, err)
	}
	c.conn, c.duid = conn, &dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: ifi.HardwareAddr}
	return c.conn, c.duid, nil
}

func (c *Client) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// acquire runs Solicit, Advertise, Request, Reply.
func (c *Client) acquire(ctx context.Context) (Lease, error) {
	conn, duid, err := c.client()
	if err != nil {
		return Lease{}, err
	}
	adv, err := conn.Solicit(ctx, dhcpv6.WithClientID(duid))
	if err != nil {
		return Lease{}, fmt.Errorf("solicit: %w", err)
	}
	if err := replyError(adv); err != nil {
		return Lease{}, fmt.Errorf("advertise: %w", err)
	}
	reply, err := conn.Request(ctx, adv, dhcpv6.WithClientID(duid))
	if err != nil {
		return Lease{}, fmt.Errorf("request: %w", err)
	}
	return leaseFrom(reply, time.Now())
}

// extend sends a Renew (to server) or, with server nil, a Rebind, for
// the lease's addresses.
func (c *Client) extend(ctx context.Context, l Lease, server dhcpv6.DUID) (Lease, error) {
	conn, duid, err := c.client()
	if err != nil {
		return Lease{}, err
	}
	msg, err := dhcpv6.NewMessage()
	if err != nil {
		return Lease{}, err
	}
	msg.MessageType = dhcpv6.MessageTypeRebind
	if server != nil {
		msg.MessageType = dhcpv6.MessageTypeRenew
		msg.AddOption(dhcpv6.OptServerID(server))
	}
	msg.AddOption(dhcpv6.OptClientID(duid))
	msg.AddOption(dhcpv6.OptElapsedTime(0))
	msg.AddOption(l.iana)
	msg.AddOption(dhcpv6.OptRequestedOption(dhcpv6.OptionDNSRecursiveNameServer, dhcpv6.OptionDomainSearchList))
	reply, err := conn.SendAndRead(ctx, nclient6.AllDHCPRelayAgentsAndServers, msg, nclient6.IsMessageType(dhcpv6.MessageTypeReply))
	if err != nil {
		return Lease{}, fmt.Errorf("%s: %w", msg.MessageType, err)
	}
	return leaseFrom(reply, time.Now())
}

// releaseOnStop gives the lease back when the config asks for it.
func (c *Client) releaseOnStop() {
	c.mu.Lock()
	l := c.lease
	c.mu.Unlock()
	if l == nil || c.cfg.ReleaseOnStop == nil || !c.cfg.ReleaseOnStop() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.release(ctx, *l); err != nil {
		c.log.Warn("dhcpv6 release", "err", err)
		return
	}
	c.log.Info("dhcpv6 lease released")
	if c.cfg.OnReleased != nil {
		c.cfg.OnReleased(*l)
	}
}

// release gives l's addresses back to its server.
func (c *Client) release(ctx context.Context, l Lease) error {
	conn, duid, err := c.client()
	if err != nil {
		return err
	}
	msg, err := dhcpv6.NewMessage()
	if err != nil {
		return err
	}
	msg.MessageType = dhcpv6.MessageTypeRelease
	msg.AddOption(dhcpv6.OptClientID(duid))
	msg.AddOption(dhcpv6.OptServerID(l.serverID))
	msg.AddOption(dhcpv6.OptElapsedTime(0))
	msg.AddOption(l.iana)
	if _, err := conn.SendAndRead(ctx, nclient6.AllDHCPRelayAgentsAndServers, msg, nclient6.IsMessageType(dhcpv6.MessageTypeReply)); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	c.mu.Lock()
	c.lease = nil
	c.mu.Unlock()
	return nil
}

// replyError returns the status a message carries when it is not
// success, for the whole message or its IA_NA.
func replyError(m *dhcpv6.Message) error {
	if s := m.Options.Status(); s != nil && s.StatusCode != iana.StatusSuccess {
		return fmt.Errorf("server says %s: %s", s.StatusCode, s.StatusMessage)
	}
	if ia := m.Options.OneIANA(); ia != nil {
		if s := ia.Options.Status(); s != nil && s.StatusCode != iana.StatusSuccess {
			return fmt.Errorf("server says %s: %s", s.StatusCode, s.StatusMessage)
		}
	}
	return nil
}

// leaseFrom reads a Reply bound at now.
func leaseFrom(reply *dhcpv6.Message, now time.Time) (Lease, error) {
	if reply.MessageType != dhcpv6.MessageTypeReply {
		return Lease{}, fmt.Errorf("%s instead of a reply", reply.MessageType)
	}
	if err := replyError(reply); err != nil {
		return Lease{}, err
	}
	ia := reply.Options.OneIANA()
	if ia == nil {
		return Lease{}, errors.New("reply without an IA_NA")
	}
	server := reply.Options.ServerID()
	if server == nil {
		return Lease{}, errors.New("reply without a server ID")
	}
	l := Lease{Server: server.String(), serverID: server, iana: ia, Bound: now, T1: ia.T1, T2: ia.T2}
	var shortest time.Duration
	for _, a := range ia.Options.Addresses() {
		addr, ok := netip.AddrFromSlice(a.IPv6Addr)
		if !ok || a.ValidLifetime == 0 || a.PreferredLifetime > a.ValidLifetime {
			continue // withdrawn or invalid (RFC 8415 section 21.6)
		}
		l.Addresses = append(l.Addresses, Address{Addr: addr.Unmap(), Preferred: a.PreferredLifetime, Valid: a.ValidLifetime})
		if shortest == 0 || a.PreferredLifetime < shortest {
			shortest = a.PreferredLifetime
		}
	}
	if len(l.Addresses) == 0 {
		return Lease{}, errors.New("reply without a usable address")
	}
	// Servers may leave T1 and T2 to the client: half and 0.8 of the
	// shortest preferred lifetime (RFC 8415 section 21.4).
	if l.T1 == 0 || l.T2 == 0 || l.T1 > l.T2 {
		l.T1, l.T2 = shortest/2, shortest*4/5
	}
	for _, ip := range reply.Options.DNS() {
		if a, ok := netip.AddrFromSlice(ip); ok && !slices.Contains(l.DNS, a) {
			l.DNS = append(l.DNS, a)
		}
	}
	if labels := reply.Options.DomainSearchList(); labels != nil {
		l.Search = slices.Clone(labels.Labels)
	}
	return l, nil
}

// sleep waits d or until ctx is done, and says whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
