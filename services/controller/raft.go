package controller

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// openRaft starts this voter's raft: the log and stable store in
// raft-wal, snapshots in files, and a TLS transport on which peers are
// dialled by node ID through Serf.
func (c *Controller) openRaft() error {
	dir := c.cfg.DataDir
	for _, d := range []string{filepath.Join(dir, "wal"), filepath.Join(dir, "snapshots")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("controller data: %w", err)
		}
	}
	// raft logs through the controller's logger, one line per message.
	logger := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, DisableTime: true,
		Output: slog.NewLogLogger(c.log.Handler(), slog.LevelWarn).Writer()})
	// The WAL does not close a meta store it opened itself, whose file
	// lock would then outlive Close; so it gets one that shutdown closes.
	c.walMeta = &metadb.BoltMetaDB{}
	w, err := wal.Open(filepath.Join(dir, "wal"), wal.WithLogger(logger), wal.WithMetaStore(c.walMeta))
	if err != nil {
		return fmt.Errorf("open raft log %s: %w", filepath.Join(dir, "wal"), err)
	}
	c.wal = w
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(dir, "snapshots"), 2, logger)
	if err != nil {
		return fmt.Errorf("open raft snapshots: %w", err)
	}
	stream, err := c.listenRaft()
	if err != nil {
		return err
	}
	c.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: c.members, Stream: stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: logger,
	})
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.id)
	rc.Logger = logger
	rc.HeartbeatTimeout = c.cfg.Raft.HeartbeatTimeout
	rc.ElectionTimeout = c.cfg.Raft.ElectionTimeout
	rc.LeaderLeaseTimeout = c.cfg.Raft.LeaderLeaseTimeout
	rc.CommitTimeout = c.cfg.Raft.CommitTimeout
	rc.SnapshotThreshold = c.cfg.Raft.SnapshotThreshold
	rc.TrailingLogs = c.cfg.Raft.TrailingLogs
	if c.hasState, err = raft.HasExistingState(w, w, snaps); err != nil {
		return fmt.Errorf("raft state: %w", err)
	}
	r, err := raft.NewRaft(rc, c.fsm, w, w, snaps, c.transport)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	c.raft = r
	return nil
}

// tlsStream is raft's stream layer over mutual TLS with the cluster CA:
// only hosts of the cluster (certificates issued for serving) are peers.
type tlsStream struct {
	net.Listener
	advertise net.Addr
	client    *tls.Config
}

func (c *Controller) listenRaft() (*tlsStream, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(c.cfg.Bind, fmt.Sprint(c.cfg.Ports.Raft)))
	if err != nil {
		return nil, fmt.Errorf("raft listener: %w", err)
	}
	adv, err := c.members.addr(c.id, c.cfg.Ports.Raft)
	if err != nil {
		ln.Close()
		return nil, err
	}
	tcpAdv, err := net.ResolveTCPAddr("tcp", adv)
	if err != nil {
		ln.Close()
		return nil, err
	}
	server := c.serverTLS()
	server.VerifyPeerCertificate = requireHostCert
	client := c.clientTLS()
	return &tlsStream{Listener: tls.NewListener(ln, server), advertise: tcpAdv, client: client}, nil
}

// requireHostCert admits only certificates issued for serving, which
// hosts hold and operators' client credentials do not.
func requireHostCert(_ [][]byte, chains [][]*x509.Certificate) error {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return errors.New("no verified client certificate")
	}
	if !slices.Contains(chains[0][0].ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return errors.New("raft peers must present a host certificate")
	}
	return nil
}

func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	return tls.DialWithDialer(d, "tcp", string(addr), s.client)
}

func (s *tlsStream) Addr() net.Addr { return s.advertise }
