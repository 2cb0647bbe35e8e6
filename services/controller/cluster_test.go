package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/internal/testwait"
)

// testCluster is hostds and controllers in this process on loopback
// addresses 127.0.0.1, .2, …: each "host" has its own IP, as real hosts
// do, so the controllers share their ports.
type testCluster struct {
	t      testing.TB
	b      *bundle.Bundle
	creds  *bundle.Credentials
	ports  Ports
	hostPt int
	nodes  []*testNode
}

type testNode struct {
	ip      string
	dataDir string
	hostDir string
	runDir  string
	hostd   *host.Daemon
	stopH   context.CancelFunc
	doneH   chan error
	ctrl    *Controller
	stopC   context.CancelFunc
	doneC   chan error
	expect  int
}

// freePorts returns n distinct free ports: all are held open until all
// are found, so the kernel cannot hand the same one out twice.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func newTestCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	b, err := bundle.Create("test")
	if err != nil {
		t.Fatal(err)
	}
	return newTestClusterWith(t, b, n)
}

func newTestClusterWith(t testing.TB, b *bundle.Bundle, n int) *testCluster {
	t.Helper()
	creds, err := b.IssueClient("admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 3)
	c := &testCluster{t: t, b: b, creds: creds, ports: Ports{API: ports[0], Raft: ports[1]}, hostPt: ports[2]}
	for i := range n {
		node := &testNode{ip: fmt.Sprintf("127.0.%d.%d", 50+os.Getpid()%100, i+1), dataDir: t.TempDir(), expect: n}
		c.nodes = append(c.nodes, node)
	}
	for _, node := range c.nodes {
		c.startHost(node)
	}
	for _, node := range c.nodes {
		c.startController(node)
	}
	return c
}

func (c *testCluster) startHost(node *testNode) {
	t := c.t
	t.Helper()
	cfg := host.DefaultConfig()
	if node.hostDir == "" {
		node.hostDir, node.runDir = t.TempDir(), t.TempDir()
	}
	cfg.StateDir, cfg.RunDir = node.hostDir, node.runDir
	cfg.ContainerNetwork = false
	cfg.Hostname = "h" + node.ip[len(node.ip)-1:]
	cfg.Advertise, cfg.BindAddr, cfg.APIBind = node.ip, node.ip, node.ip
	cfg.GossipPort, cfg.APIPort = 0, c.hostPt
	cfg.Bundle, cfg.Roles = c.b, []string{RoleController}
	for _, other := range c.nodes {
		if other != node && other.hostd != nil {
			cfg.Join = append(cfg.Join, other.hostd.Members()[0].Addr)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	opts := host.Options{Ready: func() { close(ready) }}
	d, err := host.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- d.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("hostd %s: %v", node.ip, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("hostd %s not ready", node.ip)
	}
	node.hostd, node.stopH, node.doneH = d, cancel, done
	t.Cleanup(func() { c.stopHost(node) })
}

func (c *testCluster) stopHost(node *testNode) {
	if node.stopH == nil {
		return
	}
	node.stopH()
	<-node.doneH
	node.stopH = nil
}

func (c *testCluster) startController(node *testNode) {
	t := c.t
	t.Helper()
	cert, err := c.b.HostCertificate(node.hostd.ID(), "h", []net.IP{net.ParseIP(node.ip)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.DataDir = node.dataDir
	cfg.Bind = node.ip
	cfg.Ports = c.ports
	cfg.HostAPI = net.JoinHostPort(node.ip, strconv.Itoa(c.hostPt))
	cfg.Credentials = &bundle.Credentials{Cluster: c.b.Cluster, CACert: c.b.CACert, Cert: cert}
	cfg.Expect = node.expect
	cfg.Raft.HeartbeatTimeout, cfg.Raft.ElectionTimeout, cfg.Raft.LeaderLeaseTimeout = 500*time.Millisecond, 500*time.Millisecond, 250*time.Millisecond
	if testing.Verbose() {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", node.ip)
	}
	ctrl, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrl.Run(ctx) }()
	node.ctrl, node.stopC, node.doneC = ctrl, cancel, done
	t.Cleanup(func() { c.stopController(node) })
}

func (c *testCluster) stopController(node *testNode) {
	if node.stopC == nil {
		return
	}
	node.stopC()
	if err := <-node.doneC; err != nil && !errors.Is(err, context.Canceled) {
		c.t.Errorf("controller %s: %v", node.ip, err)
	}
	node.stopC = nil
}

// client returns a client of the given nodes' controllers (all when
// none given).
func (c *testCluster) client(nodes ...*testNode) *Client {
	if len(nodes) == 0 {
		nodes = c.nodes
	}
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, net.JoinHostPort(n.ip, strconv.Itoa(c.ports.API)))
	}
	return NewClient(addrs, c.creds.TLS())
}

// leader waits until every running controller agrees on one leader
// with all voters, and returns its node.
func (c *testCluster) leader(timeout time.Duration) *testNode {
	c.t.Helper()
	var lead *testNode
	testwait.For(c.t, "one leader", timeout, func() error {
		lead = nil
		var id string
		for _, n := range c.nodes {
			if n.stopC == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := c.client(n).Status(ctx)
			cancel()
			if err != nil {
				return err
			}
			if st.Leader == "" || id != "" && st.Leader != id {
				return fmt.Errorf("%s sees leader %q", n.ip, st.Leader)
			}
			id = st.Leader
			if st.State == "leader" {
				lead = n
			}
		}
		if lead == nil {
			return errors.New("no node says it leads")
		}
		return nil
	})
	return lead
}
