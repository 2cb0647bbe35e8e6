// Package dhcp is netd's DHCPv4 client: it acquires a lease for one
// interface, renews and rebinds it, keeps it on disk across restarts of netd
// and tells its caller when a lease is bound or lost (RFC 2131).
//
// It configures nothing on the host: the caller adds the address, routes and
// DNS in OnBound and removes them in OnExpired. Packets are built, sent and
// parsed by github.com/insomniacslk/dhcp.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Config is one client's configuration; DefaultConfig fills it in.
type Config struct {
	// Interface is the link the client runs on.
	Interface string
	// StateDir keeps the lease as <Interface>.lease.json, so that a
	// restarted client resumes it instead of starting over. "" keeps
	// nothing.
	StateDir string
	// Hostname is sent to the server as option 12, for its DNS and logs.
	Hostname string
	// BackoffMin is how long the first message waits for a reply, and the
	// pause after a failure that came sooner. Each failed attempt doubles
	// it, up to BackoffMax (RFC 2131 section 4.1 retransmission).
	BackoffMin time.Duration
	BackoffMax time.Duration
	// Log gets one line per event; nil logs nothing.
	Log *slog.Logger
	// OnBound is called with every lease the client holds anew: acquired,
	// renewed, rebound, or restored from disk at start. Compare it with
	// the previous one to see what changed. Run waits for it: renewals
	// are sent from the leased address, so configure it here.
	OnBound func(Lease)
	// OnExpired is called when a lease is lost: it expired, the server
	// refused it, or the one found on disk had expired. Remove its
	// address.
	OnExpired func(Lease)
}

// DefaultConfig returns the config of a client on iface without
// persistence.
func DefaultConfig(iface string) Config {
	return Config{
		Interface: iface,
		// A server on the link answers within milliseconds; dnsmasq holds
		// the first offer of a new address for its 3 s ping check, which
		// the doubled wait of the second attempt still catches.
		BackoffMin: 2 * time.Second,
		BackoffMax: 64 * time.Second,
		Log:        slog.Default(),
	}
}

// State is where a client is in RFC 2131's state machine (figure 5).
type State string

const (
	StateInit       State = "init"
	StateSelecting  State = "selecting"  // DISCOVER sent, waiting for an offer
	StateRequesting State = "requesting" // REQUEST for an offer sent
	StateRebooting  State = "rebooting"  // confirming a lease restored from disk
	StateBound      State = "bound"
	StateRenewing   State = "renewing"  // asking the lease's server, past T1
	StateRebinding  State = "rebinding" // asking any server, past T2
)

// Status is a snapshot of a client, for netd's status socket.
type Status struct {
	State State
	Lease *Lease // nil without a lease
	// Attempts counts failed attempts since the last success; LastError
	// is the latest one's error.
	Attempts  int
	LastError string
	// NextAttempt is when the client sends its next message if no reply
	// comes first.
	NextAttempt time.Time
}

// Client runs DHCP on one interface. Its zero value is not usable: call New.
type Client struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	state    State
	lease    *Lease
	attempts int
	lastErr  string
	next     time.Time
}

// New returns a client for cfg; zero durations take DefaultConfig's.
func New(cfg Config) *Client {
	def := DefaultConfig(cfg.Interface)
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
	return &Client{cfg: cfg, log: log.With("iface", cfg.Interface), state: StateInit}
}

// Status returns what the client is doing.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{State: c.state, Attempts: c.attempts, LastError: c.lastErr, NextAttempt: c.next}
	if c.lease != nil {
		l := *c.lease
		s.Lease = &l
	}
	return s
}

// Run keeps a lease on the interface until ctx is done: it resumes the one
// on disk or acquires one, renews it at T1, rebinds at T2, and starts over
// when it is lost. Failures are retried without end. Run returns ctx's error
// without releasing the lease, so that it survives a restart of netd; it
// returns sooner only for a config it cannot run.
func (c *Client) Run(ctx context.Context) error {
	if c.cfg.Interface == "" {
		return errors.New("dhcp: Config.Interface is empty")
	}
	rebooting := c.restore()
	for ctx.Err() == nil {
		l := c.current()
		now := time.Now()
		var deadline time.Time // a failed attempt's pause ends by then
		var step func(ctx context.Context, wait time.Duration) error
		switch {
		case l == nil:
			step = c.acquire
		case !now.Before(l.Expires()):
			c.expire(*l, "lease expired")
			continue
		case rebooting:
			rebooting = false
			step = func(ctx context.Context, wait time.Duration) error { return c.reboot(ctx, *l, wait) }
		case now.Before(l.RenewAt()):
			c.setState(StateBound, l.RenewAt())
			sleep(ctx, l.RenewAt().Sub(now))
			continue
		case now.Before(l.RebindAt()):
			deadline = l.RebindAt()
			step = func(ctx context.Context, wait time.Duration) error { return c.extend(ctx, *l, StateRenewing, wait) }
		default:
			deadline = l.Expires()
			step = func(ctx context.Context, wait time.Duration) error { return c.extend(ctx, *l, StateRebinding, wait) }
		}
		c.attempt(ctx, step, deadline)
	}
	return ctx.Err()
}

// attempt runs step, which waits at most the current backoff for each reply.
// After a failure it pauses until that backoff has passed since the start,
// so that quick failures (no such interface) are not retried in a spin.
func (c *Client) attempt(ctx context.Context, step func(context.Context, time.Duration) error, deadline time.Time) {
	start := time.Now()
	wait := c.backoff(start, deadline)
	c.mu.Lock()
	c.next = start.Add(wait)
	c.mu.Unlock()
	err := step(ctx, wait)
	if err == nil || ctx.Err() != nil {
		return
	}
	c.mu.Lock()
	c.attempts++
	c.lastErr = err.Error()
	n, state := c.attempts, c.state
	c.mu.Unlock()
	pause := max(time.Until(start.Add(wait)), 0)
	c.log.Warn("dhcp attempt failed", "state", state, "attempt", n, "err", err, "retry_in", pause.Round(time.Millisecond))
	sleep(ctx, pause)
}

// backoff is how long the next attempt waits for replies: BackoffMin
// doubled per failed attempt up to BackoffMax, with up to 1/8 added so
// that clients that failed together do not retry together, and cut short
// at deadline (T2 for a renewal, expiry for a rebind).
func (c *Client) backoff(now, deadline time.Time) time.Duration {
	c.mu.Lock()
	n := c.attempts
	c.mu.Unlock()
	d := c.cfg.BackoffMin
	for i := 0; i < n && d < c.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d+rand.N(d/8+1), c.cfg.BackoffMax)
	if !deadline.IsZero() {
		d = max(min(d, deadline.Sub(now)), 10*time.Millisecond)
	}
	return d
}

// restore takes up the lease persisted by an earlier Run and reports
// whether it is to be confirmed with the server.
func (c *Client) restore() bool {
	path := c.leasePath()
	if path == "" {
		return false
	}
	l, err := loadLease(path)
	if err != nil {
		c.log.Warn("dhcp lease file unusable, starting afresh", "err", err)
		c.removeLease()
		return false
	}
	if l == nil {
		return false
	}
	// A NIC swapped under the same name must not claim the old one's lease.
	if ifc, err := net.InterfaceByName(c.cfg.Interface); err == nil && ifc.HardwareAddr.String() != l.MAC.String() {
		c.log.Info("dhcp lease on disk is for another MAC, starting afresh", "mac", l.MAC, "iface_mac", ifc.HardwareAddr)
		c.removeLease()
		return false
	}
	if !time.Now().Before(l.Expires()) {
		c.expire(*l, "lease on disk expired")
		return false
	}
	c.bind(*l, "restored")
	return true
}

func (c *Client) current() *Lease {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease
}

func (c *Client) setState(s State, next time.Time) {
	c.mu.Lock()
	c.state = s
	if !next.IsZero() {
		c.next = next
	}
	c.mu.Unlock()
}

// bind makes l the client's lease; how says where it came from.
func (c *Client) bind(l Lease, how string) {
	c.mu.Lock()
	c.lease = &l
	c.state = StateBound
	c.attempts = 0
	c.lastErr = ""
	c.next = l.RenewAt()
	c.mu.Unlock()
	if how != "restored" {
		if path := c.leasePath(); path != "" {
			if err := saveLease(path, l); err != nil {
				c.log.Warn("dhcp lease not persisted", "err", err)
			}
		}
	}
	c.log.Info("dhcp lease "+how, "addr", l.Address, "server", l.Server, "router", l.Router,
		"lease", l.Duration, "renew_at", l.RenewAt().Format(time.RFC3339), "expires", l.Expires().Format(time.RFC3339))
	if c.cfg.OnBound != nil {
		c.cfg.OnBound(l)
	}
}

// expire drops l, which is no longer valid, and starts over.
func (c *Client) expire(l Lease, reason string) {
	c.mu.Lock()
	c.lease = nil
	c.state = StateInit
	c.next = time.Now()
	c.mu.Unlock()
	c.removeLease()
	c.log.Warn("dhcp lease lost", "addr", l.Address, "reason", reason)
	if c.cfg.OnExpired != nil {
		c.cfg.OnExpired(l)
	}
}

// Release gives the lease back to its server (DHCPRELEASE) and deletes it
// from disk; without a lease in memory it releases the one on disk, so that
// it works after Run has returned or in a fresh Client. Stop Run first: a
// running client would acquire a new lease. OnExpired is not called. The
// address must still be configured, as the release is sent from it.
func (c *Client) Release(ctx context.Context) error {
	l := c.current()
	if l == nil && c.leasePath() != "" {
		var err error
		if l, err = loadLease(c.leasePath()); err != nil {
			c.removeLease()
			return fmt.Errorf("release on %s: %w", c.cfg.Interface, err)
		}
	}
	if l == nil {
		return nil
	}
	err := c.sendRelease(ctx, *l)
	c.mu.Lock()
	c.lease = nil
	c.state = StateInit
	c.mu.Unlock()
	c.removeLease()
	if err != nil {
		return fmt.Errorf("release %s on %s: %w", l.Address, c.cfg.Interface, err)
	}
	c.log.Info("dhcp lease released", "addr", l.Address, "server", l.Server)
	return nil
}

func (c *Client) leasePath() string {
	if c.cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(c.cfg.StateDir, c.cfg.Interface+".lease.json")
}

func (c *Client) removeLease() {
	path := c.leasePath()
	if path == "" {
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("dhcp lease file not removed", "err", err)
	}
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
