// Package controller is the cluster's control plane: a state machine on
// hashicorp/raft, replicated over the hosts whose machine config has the
// role "controller", holding typed, versioned objects (hosts, services
// and their instances, settings, events) in go-memdb, served by an HTTPS
// API with blocking queries, and a typed Go client.
//
// It runs as a platform job (host network, system rootfs), reaches its
// host only through the host API, and knows its peers by node ID: their
// addresses come from Serf, through that API, whenever raft dials. It
// does not place jobs (the scheduler does) nor run health checks (the
// discovery agents do, on each host).
package controller

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
)

// Default ports of every controller; a cluster uses the same ones on all
// its controllers.
const (
	DefaultAPIPort  = 7948
	DefaultRaftPort = 7949
)

// Ports are the controller's listening ports.
type Ports struct {
	API  int
	Raft int
}

// RaftTiming tunes raft.
type RaftTiming struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// CommitTimeout is how long the leader waits, with nothing new to
	// send, before telling followers the commit index again: what a
	// watch on a follower waits for at most (plus replication), paid
	// with an empty AppendEntries per follower that often.
	CommitTimeout time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot;
	// TrailingLogs how many stay in the log after one.
	SnapshotThreshold uint64
	TrailingLogs      uint64
}

// Config is a controller's configuration, built by its caller.
type Config struct {
	// DataDir holds the raft log, snapshots and the cluster ID.
	DataDir string
	// Bind is the address the API and raft listen on; empty is every
	// address, so an address change needs no new listener.
	Bind  string
	Ports Ports
	// HostAPI is the local host API (hostd), which names this host and
	// its Serf members.
	HostAPI string
	// Credentials are a host certificate of the cluster CA: served to
	// clients and peers, presented to hostd and peers.
	Credentials *bundle.Credentials
	// Expect is how many voters the first start waits for before it
	// bootstraps the cluster; 0 or 1 bootstraps alone. Ignored once the
	// controller has state.
	Expect int
	Raft   RaftTiming
	// ApplyTimeout bounds a write's wait for raft.
	ApplyTimeout time.Duration
	Log          *slog.Logger
}

// DefaultConfig returns the defaults: a leader is replaced about 1–2 s
// after it stops answering.
func DefaultConfig() Config {
	return Config{
		DataDir: "/var/lib/plinth/controller",
		Ports:   Ports{API: DefaultAPIPort, Raft: DefaultRaftPort},
		HostAPI: net.JoinHostPort("127.0.0.1", strconv.Itoa(host.DefaultAPIPort)),
		Raft: RaftTiming{
			HeartbeatTimeout: time.Second, ElectionTimeout: time.Second, LeaderLeaseTimeout: 500 * time.Millisecond,
			CommitTimeout:     10 * time.Millisecond,
			SnapshotThreshold: 8192, TrailingLogs: 10240,
		},
		ApplyTimeout: 10 * time.Second,
	}
}

// withDefaults fills the zero fields of cfg from DefaultConfig.
func withDefaults(cfg *Config) {
	def := DefaultConfig()
	if cfg.Ports.API == 0 {
		cfg.Ports.API = def.Ports.API
	}
	if cfg.Ports.Raft == 0 {
		cfg.Ports.Raft = def.Ports.Raft
	}
	if cfg.HostAPI == "" {
		cfg.HostAPI = def.HostAPI
	}
	r, d := &cfg.Raft, def.Raft
	for _, f := range []struct{ v, d *time.Duration }{
		{&r.HeartbeatTimeout, &d.HeartbeatTimeout}, {&r.ElectionTimeout, &d.ElectionTimeout},
		{&r.LeaderLeaseTimeout, &d.LeaderLeaseTimeout}, {&r.CommitTimeout, &d.CommitTimeout}, {&cfg.ApplyTimeout, &def.ApplyTimeout},
	} {
		if *f.v == 0 {
			*f.v = *f.d
		}
	}
	if r.SnapshotThreshold == 0 {
		r.SnapshotThreshold = d.SnapshotThreshold
	}
	if r.TrailingLogs == 0 {
		r.TrailingLogs = d.TrailingLogs
	}
}

// Controller is one running controller voter.
type Controller struct {
	cfg       Config
	log       *slog.Logger
	id        string // node ID = raft server ID
	clusterID string
	hosts     *host.Client
	members   *members
	fsm       *fsm
	wal       *wal.WAL
	walMeta   *metadb.BoltMetaDB
	transport *raft.NetworkTransport
	raft      *raft.Raft
	hasState  bool

	joinMu    sync.Mutex           // one voter change at a time; guards leftSince
	leftSince map[string]time.Time // voters' hosts that left Serf, since when

	proxy *httputil.ReverseProxy
	peers *http.Transport // calls to other controllers, forwarded writes too
	// kick wakes the leader's loop (after a restore).
	kick chan struct{}
}

// New checks cfg and prepares a controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	switch {
	case cfg.Credentials == nil:
		return nil, errors.New("controller: no credentials: the job needs a host certificate (job spec credentials = true)")
	case cfg.DataDir == "":
		return nil, errors.New("controller: no data directory")
	case cfg.Expect != 0 && cfg.Expect != 1 && cfg.Expect != 3 && cfg.Expect != 5:
		return nil, fmt.Errorf("controller: expect %d: use 1, 3 or 5 voters", cfg.Expect)
	}
	withDefaults(&cfg)
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{cfg: cfg, log: log, fsm: newFSM(), kick: make(chan struct{}, 1), leftSince: map[string]time.Time{}, clusterID: ClusterID(cfg.Credentials.CACert)}
	c.hosts = host.NewClient(cfg.HostAPI, c.clientTLS())
	c.peers = newTransport(c.clientTLS())
	c.proxy = c.newForwarder()
	return c, nil
}

// ClusterID names a cluster by its CA: the first 16 bytes of the SHA-256
// of the CA's public key, in hex. Backups carry it.
func ClusterID(ca *x509.Certificate) string {
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:16])
}

func (c *Controller) serverTLS() *tls.Config { return c.cfg.Credentials.ServerTLS() }

func (c *Controller) clientTLS() *tls.Config { return c.cfg.Credentials.TLS() }

// Run serves until ctx ends: it learns who this host is from hostd,
// follows Serf, starts raft (bootstrapping or joining on a first start),
// serves the API, and while leader keeps the hosts collection and the
// voters in line with Serf.
func (c *Controller) Run(ctx context.Context) error {
	info, err := c.waitHost(ctx)
	if err != nil {
		return err
	}
	c.id = info.ID
	c.log.Info("controller starting", "node", c.id, "cluster", c.clusterID, "data", c.cfg.DataDir)
	c.members = newMembers(c.hosts, c.cfg.Ports, c.log)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go c.members.run(ctx)
	select {
	case <-c.members.synced:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := c.openRaft(); err != nil {
		return err
	}
	defer c.shutdown()

	ln, err := net.Listen("tcp", net.JoinHostPort(c.cfg.Bind, strconv.Itoa(c.cfg.Ports.API)))
	if err != nil {
		return fmt.Errorf("controller API: %w", err)
	}
	srv := &http.Server{Handler: c.handler(), TLSConfig: c.serverTLS(), ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
		// Blocking queries end with the controller, not at their wait.
		BaseContext: func(net.Listener) context.Context { return ctx }}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(tls.NewListener(ln, srv.TLSConfig)) }()
	c.log.Info("controller API listening", "addr", ln.Addr().String())

	if !c.hasState {
		go c.firstStart(ctx)
	}
	go c.rejoin(ctx)
	go c.leaderLoop(ctx)

	select {
	case <-ctx.Done():
	case err = <-served:
	}
	// The background loops and open requests end before raft shuts down
	// (deferred above).
	cancel()
	shut, cancelShut := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelShut()
	if srv.Shutdown(shut) != nil {
		srv.Close()
	}
	c.peers.CloseIdleConnections()
	return err
}

// waitHost asks hostd who this host is, retrying while hostd starts.
func (c *Controller) waitHost(ctx context.Context) (host.HostInfo, error) {
	delay := 100 * time.Millisecond
	for {
		call, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := c.hosts.Host(call)
		cancel()
		if err == nil {
			return info, nil
		}
		c.log.Warn("waiting for the host API", "addr", c.cfg.HostAPI, "err", err)
		select {
		case <-ctx.Done():
			return host.HostInfo{}, fmt.Errorf("controller: host API %s: %w", c.cfg.HostAPI, err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func (c *Controller) shutdown() {
	if c.raft != nil {
		if err := c.raft.Shutdown().Error(); err != nil {
			c.log.Warn("raft shutdown", "err", err)
		}
	}
	if c.transport != nil {
		c.transport.Close()
	}
	if c.wal != nil {
		c.wal.Close()
	}
	if c.walMeta != nil {
		c.walMeta.Close()
	}
}

// firstStart brings a controller without state into a cluster: if a
// controller elsewhere already leads one, it asks to be added;
// otherwise, once Expect controller hosts are alive, the lowest Expect
// node IDs bootstrap together (each computes the same set), and any
// other waits to be added.
func (c *Controller) firstStart(ctx context.Context) {
	expect := max(c.cfg.Expect, 1)
	for ctx.Err() == nil {
		if c.raft.Leader() != "" {
			return // a leader reached us: we are in a cluster
		}
		if err := c.askToJoin(ctx); err == nil {
			c.log.Info("joined the controller cluster")
			return
		}
		list, changed := c.members.snapshot()
		var ids []string
		for _, mb := range list {
			if IsControllerHost(mb) {
				ids = append(ids, mb.ID)
			}
		}
		if expect == 1 {
			ids = []string{c.id}
		}
		if len(ids) >= expect {
			ids = ids[:expect]
			if slices.Contains(ids, c.id) {
				var cfg raft.Configuration
				var err error
				for _, id := range ids {
					var addr raft.ServerAddress
					if addr, err = c.members.ServerAddr(raft.ServerID(id)); err != nil {
						break
					}
					cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: addr})
				}
				if err == nil {
					err = c.raft.BootstrapCluster(cfg).Error()
				}
				if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
					c.log.Error("bootstrap", "err", err)
				} else {
					c.log.Info("bootstrapped the controller cluster", "voters", ids)
					return
				}
			}
		} else {
			c.log.Info("waiting for controller hosts before bootstrapping", "alive", len(ids), "expect", expect)
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-time.After(2 * time.Second):
		}
	}
}

// rejoin asks to be added again when this controller has seen no leader
// for a while although other controller hosts are alive: it was removed
// while away (its host left the cluster for longer than a reboot), or
// its data was lost. Asking a cluster it is still a voter of is harmless.
func (c *Controller) rejoin(ctx context.Context) {
	const lonely = 10 * time.Second
	since := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
		if c.raft.Leader() != "" {
			since = time.Now()
			continue
		}
		if time.Since(since) < lonely {
			continue
		}
		if err := c.askToJoin(ctx); err == nil {
			c.log.Info("asked the controller leader to add this voter again")
			since = time.Now()
		}
	}
}

// askToJoin asks the controllers on other controller hosts to add this
// one as a voter; a follower forwards the request to its leader.
func (c *Controller) askToJoin(ctx context.Context) error {
	list, _ := c.members.snapshot()
	err := errors.New("no other controller host is alive")
	for _, mb := range list {
		if mb.ID == c.id || !IsControllerHost(mb) {
			continue
		}
		addr, aerr := c.members.apiAddr(mb.ID)
		if aerr != nil {
			continue
		}
		call, cancel := context.WithTimeout(ctx, 3*time.Second)
		err = c.peer(addr).AddVoter(call, c.id)
		cancel()
		if err == nil {
			return nil
		}
	}
	return err
}
