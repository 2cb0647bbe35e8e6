package netd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/init/kmod"
	"github.com/plinth-os/plinth/netd/dhcp"
	"github.com/plinth-os/plinth/netd/dhcp6"
)

// Options are what the caller of Run provides besides the Config.
type Options struct {
	Log *slog.Logger
	// Ready is called once, when the required links have addresses (or, with
	// none required, when any link has one or Config.ReadyTimeout passed).
	Ready func()
	// SetHostname applies the hostname a DHCP server offers when
	// Config.Hostname is empty. Nil leaves the hostname alone (so that netd
	// run as a toolkit on a workstation never renames it).
	SetHostname func(string) error
	// ReleaseOnStop sends DHCPRELEASE for every lease when Run ends; without
	// it leases stay valid for the next netd (a restart or an upgrade).
	ReleaseOnStop func() bool
}

// Daemon keeps the network in the state its Config describes.
type Daemon struct {
	cfg  Config
	opts Options
	log  *slog.Logger
	nl   *netlink.Handle

	kick chan struct{} // a reconcile is wanted

	mu      sync.Mutex
	leases  map[string]dhcp.Lease    // link name → current lease
	clients map[string]*dhcp.Client  // link name → its DHCP client
	leases6 map[string]dhcp6.Lease   // link name → current DHCPv6 lease
	client6 map[string]*dhcp6.Client // link name → its DHCPv6 client
	owned   map[string][]netip.Prefix
	ra      raState     // DNS from router advertisements
	raTimer *time.Timer // the next of them to expire
	status  Status
	ready   bool
	started time.Time
	nics    int // Ethernet controllers on the PCI bus at start that have a driver
}

// New checks cfg and returns a daemon for it.
func New(cfg Config, opts Options) (*Daemon, error) {
	if errs := cfg.Check(); len(errs) > 0 {
		return nil, fmt.Errorf("network config: %w", errors.Join(configErrors(errs)...))
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Daemon{
		cfg:     cfg,
		opts:    opts,
		log:     opts.Log,
		kick:    make(chan struct{}, 1),
		leases:  map[string]dhcp.Lease{},
		clients: map[string]*dhcp.Client{},
		leases6: map[string]dhcp6.Lease{},
		client6: map[string]*dhcp6.Client{},
		owned:   map[string][]netip.Prefix{},
	}, nil
}

func configErrors(errs []ConfigError) []error {
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return out
}

// Run reconciles until ctx is done: at start, on every netlink event, after
// a DHCP lease changes, and every resyncInterval in case an event was lost.
// It serves the status API on RunDir/netd.sock meanwhile.
func (d *Daemon) Run(ctx context.Context) error {
	d.started = time.Now()
	var driverless []string
	d.nics, driverless = countPCINICs("/sys", imageAliases())
	for _, c := range driverless {
		d.log.Warn("eth controller " + c + " has no driver in this image; it is not waited for (docs/operator-guide.md: adding a driver)")
	}
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE) // only rtnetlink: the image has no xfrm
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer nl.Close()
	d.nl = nl

	if err := os.MkdirAll(d.cfg.RunDir, 0o755); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	stopAPI, err := d.serveStatus(filepath.Join(d.cfg.RunDir, SocketName))
	if err != nil {
		return err
	}
	defer stopAPI()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := d.subscribe(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	defer d.stopDHCP()
	defer func() {
		d.mu.Lock()
		if d.raTimer != nil {
			d.raTimer.Stop()
		}
		d.mu.Unlock()
	}()

	readyDeadline := time.NewTimer(d.cfg.ReadyTimeout)
	defer readyDeadline.Stop()
	resync := time.NewTicker(resyncInterval)
	defer resync.Stop()
	backoff := retryMin
	retry := time.NewTimer(0) // first reconcile now
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.kick:
		case <-resync.C:
		case <-retry.C:
		case <-readyDeadline.C:
			if !d.anyRequired() {
				d.markReady("ready timeout: no link has an address yet")
			}
			continue
		}
		err := d.reconcile(ctx, &wg)
		d.recordReconcile(err)
		if err != nil {
			d.log.Warn("reconcile", "err", err, "retry_in", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, retryMax)
		} else {
			backoff = retryMin
		}
		d.checkReady()
	}
}

const (
	resyncInterval = 30 * time.Second
	retryMin       = 500 * time.Millisecond
	retryMax       = 30 * time.Second
)

// trigger asks for a reconcile soon; bursts of events coalesce into one.
func (d *Daemon) trigger() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// subscribe turns netlink link, address and route changes into reconciles,
// so that a link that flaps or an address deleted by hand is put back.
func (d *Daemon) subscribe(ctx context.Context) error {
	onErr := func(err error) {
		if ctx.Err() == nil { // closing the sockets at stop is no news
			d.log.Warn("netlink subscription", "err", err)
		}
	}
	links := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, ctx.Done(), netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to link changes: %w", err)
	}
	addrs := make(chan netlink.AddrUpdate, 64)
	if err := netlink.AddrSubscribeWithOptions(addrs, ctx.Done(), netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to address changes: %w", err)
	}
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.RouteSubscribeWithOptions(routes, ctx.Done(), netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		return fmt.Errorf("subscribe to route changes: %w", err)
	}
	if err := subscribeRA(ctx.Done(), d.learnRA, onErr); err != nil {
		return err
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-links:
				if !ok {
					links = nil
				}
			case _, ok := <-addrs:
				if !ok {
					addrs = nil
				}
			case _, ok := <-routes:
				if !ok {
					routes = nil
				}
			}
			d.trigger()
		}
	}()
	return nil
}

// startDHCP starts a client for link unless one runs. Leases it reports go
// into the desired state.
func (d *Daemon) startDHCP(ctx context.Context, wg *sync.WaitGroup, link string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.clients[link] != nil {
		return
	}
	cfg := dhcp.DefaultConfig(link)
	cfg.StateDir = d.cfg.StateDir
	cfg.Hostname = d.cfg.Hostname
	cfg.Log = d.log.With("link", link)
	cfg.OnBound = func(l dhcp.Lease) {
		d.mu.Lock()
		d.leases[link] = l
		d.mu.Unlock()
		d.log.Info("dhcp lease", "link", link, "address", l.Address, "router", l.Router, "expires", l.Expires().Format(time.RFC3339))
		d.trigger()
	}
	cfg.OnExpired = func(l dhcp.Lease) {
		d.mu.Lock()
		delete(d.leases, link)
		d.mu.Unlock()
		d.log.Warn("dhcp lease lost", "link", link, "address", l.Address)
		d.trigger()
	}
	c := dhcp.New(cfg)
	d.clients[link] = c
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := c.Run(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("dhcp client stopped", "link", link, "err", err)
		}
	}()
}

// startDHCP6 starts a DHCPv6 client for link unless one runs.
func (d *Daemon) startDHCP6(ctx context.Context, wg *sync.WaitGroup, link string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.client6[link] != nil {
		return
	}
	cfg := dhcp6.DefaultConfig(link)
	cfg.Log = d.log.With("link", link)
	cfg.OnBound = func(l dhcp6.Lease) {
		d.mu.Lock()
		d.leases6[link] = l
		d.mu.Unlock()
		d.trigger()
	}
	cfg.OnExpired = func(dhcp6.Lease) {
		d.mu.Lock()
		delete(d.leases6, link)
		d.mu.Unlock()
		d.trigger()
	}
	// The client releases at stop, when netd's own stop does; its
	// addresses are no longer ours then. The package's functions, not
	// d.nl: this runs on the client's goroutine.
	cfg.ReleaseOnStop = d.opts.ReleaseOnStop
	cfg.OnReleased = func(l dhcp6.Lease) {
		nl, err := netlink.LinkByName(link)
		if err != nil {
			return
		}
		for _, a := range l.Addresses {
			netlink.AddrDel(nl, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(a.Addr, 128))})
		}
	}
	c := dhcp6.New(cfg)
	d.client6[link] = c
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := c.Run(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("dhcpv6 client stopped", "link", link, "err", err)
		}
	}()
}

// stopDHCP releases the leases when asked to (machine shutdown).
func (d *Daemon) stopDHCP() {
	if d.opts.ReleaseOnStop == nil || !d.opts.ReleaseOnStop() {
		return
	}
	d.mu.Lock()
	clients := make(map[string]*dhcp.Client, len(d.clients))
	for k, v := range d.clients {
		clients[k] = v
	}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for link, c := range clients {
		if err := c.Release(ctx); err != nil {
			d.log.Warn("dhcp release", "link", link, "err", err)
			continue
		}
		d.log.Info("dhcp lease released", "link", link)
		// The address is no longer ours; its routes go with it.
		d.mu.Lock()
		l, ok := d.leases[link]
		d.mu.Unlock()
		if nl, err := d.nl.LinkByName(link); ok && err == nil && l.Address.IsValid() {
			d.nl.AddrDel(nl, &netlink.Addr{IPNet: prefixToIPNet(l.Address)})
		}
	}
}

// checkReady reports readiness once its condition holds.
func (d *Daemon) checkReady() {
	d.mu.Lock()
	links := d.status.Links
	required, any, missing := false, false, ""
	for _, l := range links {
		has := len(l.Addresses) > 0
		any = any || has
		if l.Required {
			required = true
			if !d.linkReady(l) && missing == "" {
				missing = l.Name
			}
		}
	}
	d.mu.Unlock()
	switch {
	case required && missing == "":
		d.markReady("required links have addresses")
	case !required && any:
		d.markReady("a link has an address")
	case d.cfg.Default() && d.nics == 0:
		d.markReady("no network hardware with a driver")
	}
}

// linkReady reports whether a link has the addresses its config asks
// for: a DHCPv4 and a DHCPv6 lease when it runs those clients, else any
// global address (static, or SLAAC's). An address from the router's
// advertisement alone does not make a DHCP link ready on a dual-stack
// network. d.mu is held.
func (d *Daemon) linkReady(l LinkStatus) bool {
	if len(l.Addresses) == 0 {
		return false
	}
	if _, leased := d.leases[l.Name]; l.addr.DHCP && !leased {
		return false
	}
	if _, leased := d.leases6[l.Name]; l.addr.DHCP6 && !leased {
		return false
	}
	return true
}

// countPCINICs counts the PCI bus's Ethernet controllers that have a
// driver, or will have one: the image has a module whose alias matches
// the device, which coldplug is loading. Those that have none are
// returned as such, for a message: waiting for them would only hold
// ready until the timeout.
func countPCINICs(sysfs string, aliases *kmod.Aliases) (n int, driverless []string) {
	classes, _ := filepath.Glob(filepath.Join(sysfs, "bus/pci/devices/*/class"))
	for _, c := range classes {
		// PCI class 0x02 (network), subclass 0x00 (Ethernet).
		if data, err := os.ReadFile(c); err != nil || !strings.HasPrefix(strings.TrimSpace(string(data)), "0x0200") {
			continue
		}
		dev := filepath.Dir(c)
		if _, err := os.Stat(filepath.Join(dev, "driver")); err == nil {
			n++
			continue
		}
		modalias, _ := os.ReadFile(filepath.Join(dev, "modalias"))
		if len(aliases.Match(strings.TrimSpace(string(modalias)))) > 0 {
			n++
			continue
		}
		read := func(f string) string {
			b, _ := os.ReadFile(filepath.Join(dev, f))
			return strings.TrimPrefix(strings.TrimSpace(string(b)), "0x")
		}
		driverless = append(driverless, fmt.Sprintf("%s:%s (pci %s)", read("vendor"), read("device"), filepath.Base(dev)))
	}
	return n, driverless
}

// imageAliases is the alias table of the running image's drivers (empty
// on a machine not booted from a plinth image).
func imageAliases() *kmod.Aliases {
	var u unix.Utsname
	unix.Uname(&u)
	a, err := kmod.ReadAliases(filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:])))
	if err != nil {
		a, _ = kmod.ParseAliases(strings.NewReader(""))
	}
	return a
}

func (d *Daemon) anyRequired() bool {
	for _, a := range d.allAddressing() {
		if a.Required {
			return true
		}
	}
	return false
}

func (d *Daemon) markReady(why string) {
	d.mu.Lock()
	already := d.ready
	d.ready = true
	d.status.Ready = true
	d.mu.Unlock()
	if already {
		return
	}
	d.log.Info("network ready", "why", why, "after", time.Since(d.started).Round(time.Millisecond))
	if d.opts.Ready != nil {
		d.opts.Ready()
	}
}
