// Package discovery is the discovery agent, a platform service that runs
// as a host-network job on every host. It runs the health checks of the
// services that its host's jobs declare, reports the host's instances to
// the controller, and answers DNS for the names in Zone (plinth.) from a
// local cache of the controller's instances, services and hosts, which
// keeps answering while the controller is away. Other names go to the
// host's resolvers.
//
// It does not decide where jobs run (the scheduler does), which instance
// leads a service (the controller does), or route HTTP (the router
// does). docs/discovery.md describes it for operators.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// HostAPI is what the agent uses of its host's API; a *host.Client for
// the local hostd has it.
type HostAPI interface {
	Host(ctx context.Context) (host.HostInfo, error)
	Jobs(ctx context.Context) ([]job.Job, error)
	JobEvents(ctx context.Context) (*host.EventStream, error)
	Members(ctx context.Context) ([]host.Member, error)
	Events(ctx context.Context) (*host.EventStream, error)
	ExecJob(ctx context.Context, id string, cmd []string, timeout time.Duration) (job.ExecResult, error)
}

var _ HostAPI = (*host.Client)(nil)

// Controller is what the agent uses of the controller's API; a
// *controller.Client has it.
type Controller interface {
	Instances(ctx context.Context, q controller.QueryOptions) ([]controller.Instance, controller.QueryMeta, error)
	Services(ctx context.Context, q controller.QueryOptions) ([]controller.Service, controller.QueryMeta, error)
	Hosts(ctx context.Context, q controller.QueryOptions) ([]controller.Host, controller.QueryMeta, error)
	ReportInstances(ctx context.Context, hostID string, instances []controller.Instance) error
}

var _ Controller = (*controller.Client)(nil)

// Config configures an agent. Make it with DefaultConfig and set Host
// and Controller; New fills other zero fields from DefaultConfig.
type Config struct {
	// Host is the API of the host the agent runs on.
	Host HostAPI
	// Controller is the controller's API.
	Controller Controller

	// DNSAddr is the address that DNS is served on, over UDP and TCP.
	// With port 0, New picks a port free for both.
	DNSAddr string
	// ResolvConf lists the resolvers that queries for names outside
	// Zone are forwarded to: its nameserver lines, each an address or,
	// unlike for the C library, an address and port.
	ResolvConf string
	// ForwardTimeout bounds the forwarding of one query, over all the
	// resolvers; then the client gets SERVFAIL.
	ForwardTimeout time.Duration
	// ForwardFrom are the clients whose queries for names outside Zone
	// are forwarded; others get REFUSED. The agent listens on the
	// host's network, and must not be an open resolver to the world.
	ForwardFrom []netip.Prefix
	// TTL of the answers for names in Zone, and of their absence.
	TTL time.Duration

	// ResyncInterval is how often the host's jobs are listed again,
	// besides after each of their events.
	ResyncInterval time.Duration
	// ReportInterval is how often the host's instances are reported
	// when nothing changed: the controller's record heals from a lost
	// report without waiting for a change.
	ReportInterval time.Duration
	// ReportTimeout bounds one report.
	ReportTimeout time.Duration
	// WatchWait is how long one blocking query on the controller waits
	// for a change.
	WatchWait time.Duration
	// MinBackoff and MaxBackoff bound the delay between retries of a
	// failed call to the controller or the host; it doubles from
	// MinBackoff.
	MinBackoff, MaxBackoff time.Duration

	// Logger receives the agent's log; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of every field but Host and
// Controller.
func DefaultConfig() Config {
	return Config{
		DNSAddr:        ":53",
		ResolvConf:     "/run/plinth/resolv.conf",
		ForwardTimeout: 2 * time.Second,
		ForwardFrom: []netip.Prefix{
			netip.MustParsePrefix("127.0.0.0/8"),
			netip.MustParsePrefix("::1/128"),
			netip.MustParsePrefix("10.0.0.0/8"),
			netip.MustParsePrefix("172.16.0.0/12"),
			netip.MustParsePrefix("192.168.0.0/16"),
			netip.MustParsePrefix("100.64.0.0/10"), // shared address space (carrier-grade NAT)
			netip.MustParsePrefix("169.254.0.0/16"),
			netip.MustParsePrefix("fc00::/7"),
			netip.MustParsePrefix("fe80::/10"),
		},
		TTL:            5 * time.Second,
		ResyncInterval: 30 * time.Second,
		ReportInterval: 30 * time.Second,
		ReportTimeout:  10 * time.Second,
		WatchWait:      controller.MaxWait,
		MinBackoff:     time.Second,
		MaxBackoff:     30 * time.Second,
	}
}

// Agent is a running discovery agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	udp     net.PacketConn
	tcp     net.Listener
	cache   cache
	local   *local
	checker *checker
	// back is signalled when the controller answers a watch after
	// failing: the reporter then reports at once.
	back chan struct{}
}

// New checks cfg and opens the DNS sockets, so that a port in use is an
// error here. Run serves them and closes them when it returns.
func New(cfg Config) (*Agent, error) {
	if cfg.Host == nil || cfg.Controller == nil {
		return nil, errors.New("discovery: Config.Host and Config.Controller are required")
	}
	withDefaults(&cfg)
	udp, tcp, err := listenDNS(cfg.DNSAddr)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Agent{
		cfg: cfg, log: log.With("service", "discovery"),
		udp: udp, tcp: tcp,
		local: newLocal(), checker: newChecker(cfg.Host), back: make(chan struct{}, 1),
	}, nil
}

// withDefaults fills the zero fields of cfg from DefaultConfig.
func withDefaults(cfg *Config) {
	def := DefaultConfig()
	set := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if cfg.DNSAddr == "" {
		cfg.DNSAddr = def.DNSAddr
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = def.ResolvConf
	}
	if cfg.ForwardFrom == nil {
		cfg.ForwardFrom = def.ForwardFrom
	}
	set(&cfg.ForwardTimeout, def.ForwardTimeout)
	set(&cfg.TTL, def.TTL)
	set(&cfg.ResyncInterval, def.ResyncInterval)
	set(&cfg.ReportInterval, def.ReportInterval)
	set(&cfg.ReportTimeout, def.ReportTimeout)
	set(&cfg.WatchWait, def.WatchWait)
	set(&cfg.MinBackoff, def.MinBackoff)
	set(&cfg.MaxBackoff, def.MaxBackoff)
}

// listenDNS opens addr over UDP and TCP, on the same port. With port 0,
// the port the system picks for UDP may be taken for TCP: then it tries
// another.
func listenDNS(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("discovery: DNS address %q: %w", addr, err)
	}
	for try := 0; ; try++ {
		udp, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("discovery: listen for DNS: %w", err)
		}
		_, picked, _ := net.SplitHostPort(udp.LocalAddr().String())
		tcp, err := net.Listen("tcp", net.JoinHostPort(host, picked))
		if err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		if port != "0" || try == 10 {
			return nil, nil, fmt.Errorf("discovery: listen for DNS: %w", err)
		}
	}
}

// DNSAddr is the address DNS is served on (UDP and TCP).
func (a *Agent) DNSAddr() net.Addr { return a.udp.LocalAddr() }

// Run runs the agent until ctx ends, and returns nil then, or the error
// that stopped DNS service.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	self, _ := netip.ParseAddrPort(a.udp.LocalAddr().String())
	r := &resolver{
		ctx: ctx, names: &a.cache.names, ttl: uint32(a.cfg.TTL.Seconds()),
		fwd:         &forwarder{path: a.cfg.ResolvConf, timeout: a.cfg.ForwardTimeout, log: a.log, self: self},
		forwardFrom: a.cfg.ForwardFrom,
	}
	a.log.Info("serving DNS", "addr", a.DNSAddr().String(), "zone", Zone)

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, srv := range []*dns.Server{
		{PacketConn: a.udp, Handler: r, UDPSize: dns.DefaultMsgSize},
		{Listener: a.tcp, Handler: r},
	} {
		wg.Go(func() {
			if err := serveDNS(ctx, srv); err != nil {
				errs <- err
				cancel()
			}
		})
	}
	c := a.cfg.Controller
	wg.Go(func() { watch(ctx, a, "instances", c.Instances, a.cache.setInstances) })
	wg.Go(func() { watch(ctx, a, "services", c.Services, a.cache.setServices) })
	wg.Go(func() { watch(ctx, a, "hosts", c.Hosts, a.cache.setHosts) })
	wg.Go(func() { a.followJobs(ctx) })
	wg.Go(func() { a.followMembers(ctx) })
	wg.Go(func() { a.report(ctx) })
	wg.Wait()
	a.udp.Close()
	a.tcp.Close()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// controllerBack tells the reporter that the controller answers again.
func (a *Agent) controllerBack() {
	select {
	case a.back <- struct{}{}:
	default:
	}
}
