// Package host is hostd, the layer-0 agent every plinth host runs: it gives
// the host a stable identity, makes it a member of the cluster's Serf gossip
// pool, and serves the host API over mutual TLS, with a typed Go client.
//
// It owns membership (who is alive, at which address, with which roles) and
// the API surface; it does not configure the network (netd does; hostd
// follows the kernel's addresses) and it does not hold cluster-wide state
// (the controller will). The cluster's shared secrets come from package
// bundle. Run it with New and Daemon.Run, from `plinth hostd` or any Go
// program on a normal Linux host.
package host

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/host/labels"
)

// Config says how one hostd runs. Build it from DefaultConfig.
type Config struct {
	// StateDir keeps the node ID, the Serf snapshot and, for a host given no
	// bundle, its own single-host bundle. On a diskless image it is on
	// tmpfs, so such a host gets a new identity every boot.
	StateDir string
	// RunDir keeps what must not outlive a boot: the containers' runtime
	// state. Default /run/plinth/host.
	RunDir string
	// Init is the static init every job runs under as PID 1 (it forwards
	// signals and reaps orphans); DefaultConfig finds the image's
	// tini, else Debian's tini-static. Empty runs commands as PID 1.
	Init string
	// ContainerNetwork gives jobs a bridge, addresses and the overlay
	// (needs root; it changes the host's links). Default true.
	ContainerNetwork bool
	// ContainerRange is the cluster's container address range, the same
	// on every host; default cnet.DefaultRange (10.200.0.0/16).
	ContainerRange netip.Prefix
	// ContainerSubnet is this host's /24 of ContainerRange. Zero picks
	// one from the node ID, avoiding the subnets of the members this
	// host knows, and keeps it in StateDir; see pickSubnet.
	ContainerSubnet netip.Prefix
	// JobDNS gives every job with a network (host or bridge) an
	// /etc/resolv.conf naming this host first: 127.0.0.1 for host-network
	// jobs, the container bridge's gateway for bridge jobs. A DNS server
	// that the platform runs with the host's network, on port 53 of every
	// address, answers there; the host's own resolvers follow. Default
	// false: jobs keep their rootfs's resolv.conf.
	JobDNS bool
	// HostResolvConf is the file of the host's own resolvers that jobs'
	// resolv.conf lists after the host; default /run/plinth/resolv.conf
	// (netd's), else /etc/resolv.conf.
	HostResolvConf string
	// Hostname is advertised to other hosts; empty means the kernel's.
	Hostname string
	// Roles are labels advertised with the host ("controller", "router").
	Roles []string
	// Labels are the operator's key=value facts about the host
	// ("zone": "eu-1"), advertised over gossip for formations'
	// constraints (package labels has the rules).
	Labels map[string]string
	// CgroupParent is the cgroup the jobs' cgroups go under; default
	// /plinth. Give each hostd of one machine its own.
	CgroupParent string
	// VolumeRoot, when set, holds the jobs' volume sources: a volume of
	// /var/lib/x binds VolumeRoot/var/lib/x. Give each hostd of one
	// machine its own.
	VolumeRoot string
	// StartJobs are created once the API serves, each unless a job with
	// its ID exists, and created again while it ended without succeeding:
	// a machine config's one-time jobs, such as the cluster's bootstrap.
	StartJobs []job.Spec
	// Bundle holds the cluster's CA and gossip key. Nil makes hostd load or
	// create a single-host bundle in StateDir; such a host cannot join
	// others.
	Bundle *bundle.Bundle
	// JoinToken, when Bundle is nil, makes hostd fetch the bundle from a
	// seed's host API (at APIPort) and keep it in StateDir; see
	// `plinth cluster token`.
	JoinToken string
	// Join lists seed hosts ("host" or "host:port"); the port defaults to
	// GossipPort. hostd keeps retrying them while it is alone.
	Join []string
	// Advertise picks the address other hosts reach this one at: an
	// interface name, a CIDR (the address inside it) or an IP. Empty means
	// the address of the link with the default route, else the first
	// global address. hostd follows changes of that address.
	Advertise string
	// BindAddr is the IP the gossip sockets listen on. The default,
	// 0.0.0.0, keeps them working when the advertised address changes;
	// with an IPv6 address advertised, it means "::".
	BindAddr string
	// GossipPort is Serf's UDP and TCP port; 0 picks a free one.
	GossipPort int
	// APIPort is the host API's HTTPS port; 0 picks a free one.
	APIPort int
	// APIBind is the IP the API listens on; empty means all addresses.
	APIBind string
	// Gossip tunes failure detection.
	Gossip Gossip
}

// Gossip holds the SWIM timings that decide how fast a dead host is
// noticed and how easily a slow one is wrongly suspected. A host that
// cannot answer a probe within ProbeTimeout, nor through any of the
// indirect probes, is suspected; it is declared failed when it has not
// refuted the suspicion within SuspicionMult × max(1, log10(members)) ×
// ProbeInterval.
type Gossip struct {
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	GossipInterval time.Duration
	SuspicionMult  int
	// SuspicionMaxTimeoutMult bounds how long suspicion may last when few
	// other members confirm it.
	SuspicionMaxTimeoutMult int
	// ReconnectInterval is how often a failed member is retried, which is
	// what heals a partition.
	ReconnectInterval time.Duration
	// TCPTimeout bounds joins and push-pull syncs with one host.
	TCPTimeout time.Duration
}

// Default ports.
const (
	DefaultGossipPort = 7946
	DefaultAPIPort    = 7947
)

// DefaultStateDir is where hostd keeps its state on a plinth machine.
const DefaultStateDir = "/var/lib/plinth/host"

// DefaultRunDir is where hostd keeps state that ends with the boot.
const DefaultRunDir = "/run/plinth/host"

// initPaths are where findInit looks: the image's copy, then Debian's
// tini package.
var initPaths = []string{"/usr/lib/plinth/tini", "/usr/bin/tini-static"}

func findInit() string {
	for _, p := range initPaths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// FastGossip declares a silent host failed in 1.5 to 2.5 s at 5 to 20
// members on a quiet LAN (measured by make bench-gossip), about three times
// faster than Serf's LAN defaults. The price: a host paused for more than
// ProbeTimeout (200 ms) is probed indirectly, and one paused for over a
// second is suspected and must refute, so a badly overloaded host can flap.
func FastGossip() Gossip {
	return Gossip{
		ProbeInterval:           500 * time.Millisecond,
		ProbeTimeout:            200 * time.Millisecond,
		GossipInterval:          100 * time.Millisecond,
		SuspicionMult:           2,
		SuspicionMaxTimeoutMult: 2,
		ReconnectInterval:       5 * time.Second,
		TCPTimeout:              3 * time.Second,
	}
}

// DefaultConfig returns the config of a host with no cluster bundle.
func DefaultConfig() Config {
	return Config{
		StateDir:         DefaultStateDir,
		RunDir:           DefaultRunDir,
		ContainerNetwork: true,
		Init:             findInit(),
		BindAddr:         "0.0.0.0",
		GossipPort:       DefaultGossipPort,
		APIPort:          DefaultAPIPort,
		Gossip:           FastGossip(),
	}
}

// check reports the first problem that would stop hostd from starting.
func (c *Config) check() error {
	if c.StateDir == "" {
		return fmt.Errorf("hostd: no state directory")
	}
	if c.CgroupParent != "" && (!strings.HasPrefix(c.CgroupParent, "/") || path.Clean(c.CgroupParent) != c.CgroupParent || c.CgroupParent == "/") {
		return fmt.Errorf("hostd: cgroup parent %q: give a clean absolute cgroup path such as /plinth-h1", c.CgroupParent)
	}
	if c.VolumeRoot != "" && !path.IsAbs(c.VolumeRoot) {
		return fmt.Errorf("hostd: volume root %q: give an absolute path", c.VolumeRoot)
	}
	if net.ParseIP(c.BindAddr) == nil {
		return fmt.Errorf("hostd: bind address %q is not an IP", c.BindAddr)
	}
	if c.APIBind != "" && net.ParseIP(c.APIBind) == nil {
		return fmt.Errorf("hostd: API bind address %q is not an IP", c.APIBind)
	}
	if c.GossipPort < 0 || c.GossipPort > 65535 || c.APIPort < 0 || c.APIPort > 65535 {
		return fmt.Errorf("hostd: ports must be 0..65535 (gossip %d, api %d)", c.GossipPort, c.APIPort)
	}
	// Gossip listens on TCP too, so the two would collide at bind.
	if c.GossipPort != 0 && c.GossipPort == c.APIPort {
		return fmt.Errorf("hostd: gossip and API both on port %d; give them different ports", c.APIPort)
	}
	// A spec with a slash is meant as a CIDR; anything else unparsed is an
	// interface name, which may appear later.
	if strings.Contains(c.Advertise, "/") {
		if _, err := netip.ParsePrefix(c.Advertise); err != nil {
			return fmt.Errorf("hostd: advertise %q is not a CIDR; write one like 10.0.0.0/24", c.Advertise)
		}
	}
	for _, r := range c.Roles {
		if r == "" || strings.Contains(r, ",") {
			return fmt.Errorf("hostd: role %q: roles are non-empty and hold no ',' (the gossip tag's separator)", r)
		}
	}
	if err := labels.Check(c.Labels); err != nil {
		return fmt.Errorf("hostd: %w", err)
	}
	switch {
	case c.JoinToken != "" && c.Bundle != nil:
		return fmt.Errorf("hostd: give either a cluster bundle or a join token, not both")
	case c.JoinToken != "" && len(c.Join) == 0:
		return fmt.Errorf("hostd: a join token needs seed hosts to fetch the cluster bundle from; add them to join")
	case c.JoinToken != "" && c.APIPort == 0:
		// The seeds are asked at this host's API port.
		return fmt.Errorf("hostd: a join token needs the cluster's API port to reach the seeds; set the API port (default %d)", DefaultAPIPort)
	case len(c.Join) > 0 && c.Bundle == nil && c.JoinToken == "":
		return fmt.Errorf("hostd: joining %v needs the cluster bundle (the gossip key) or its join token; make them with `plinth cluster init`", c.Join)
	}
	if c.JoinToken != "" {
		if _, _, err := bundle.ParseJoinToken(c.JoinToken); err != nil {
			return fmt.Errorf("hostd: %w", err)
		}
	}
	g := c.Gossip
	if g.ProbeInterval <= 0 || g.ProbeTimeout <= 0 || g.GossipInterval <= 0 || g.SuspicionMult < 1 ||
		g.SuspicionMaxTimeoutMult < 1 || g.ReconnectInterval <= 0 || g.TCPTimeout <= 0 {
		return fmt.Errorf("hostd: gossip timings must all be positive: %+v", g)
	}
	if g.ProbeTimeout >= g.ProbeInterval {
		return fmt.Errorf("hostd: probe timeout %v must be shorter than the probe interval %v", g.ProbeTimeout, g.ProbeInterval)
	}
	return nil
}
