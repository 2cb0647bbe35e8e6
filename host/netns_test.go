package host

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/internal/netnstest"
	"github.com/plinth-os/plinth/internal/testwait"
)

// These tests run real hostd processes (this test binary re-executed under
// `ip netns exec`), each in its own network namespace, wired by veths to a
// bridge in one more namespace: five hosts on one LAN segment.

const helperEnv = "PLINTH_HOSTD_TEST_CONFIG"

// helperConfig is what a re-executed test binary runs hostd with.
type helperConfig struct {
	StateDir, Hostname, BundlePath, Token string
	Join                                  []string
	Subnet                                string // container subnet; empty picks one
	JobDNS                                bool
	HostResolvConf                        string
}

func TestMain(m *testing.M) {
	container.Init() // jobs re-execute this binary as their container's init
	if path := os.Getenv(helperEnv); path != "" {
		os.Exit(runHelper(path))
	}
	os.Exit(m.Run())
}

func runHelper(path string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	data, err := os.ReadFile(path)
	if err != nil {
		return fail(err)
	}
	var hc helperConfig
	if err := json.Unmarshal(data, &hc); err != nil {
		return fail(err)
	}
	cfg := DefaultConfig()
	cfg.StateDir, cfg.Hostname, cfg.Join, cfg.JoinToken = hc.StateDir, hc.Hostname, hc.Join, hc.Token
	cfg.RunDir = filepath.Join(hc.StateDir, "run")
	cfg.JobDNS, cfg.HostResolvConf = hc.JobDNS, hc.HostResolvConf
	if hc.Subnet != "" {
		cfg.ContainerSubnet = netip.MustParsePrefix(hc.Subnet)
	}
	if hc.BundlePath != "" {
		if cfg.Bundle, err = bundle.Load(hc.BundlePath); err != nil {
			return fail(err)
		}
	}
	d, err := New(cfg, Options{Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		return fail(err)
	}
	return 0
}

// segment is a test LAN (internal/netnstest) whose hosts run hostd.
type segment struct {
	*netnstest.Segment
	t     *testing.T
	dir   string
	hosts []*netnsHost
}

type netnsHost struct {
	*netnstest.Host
	hc   helperConfig
	cmd  *exec.Cmd
	done chan struct{}
	id   string
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newSegment(t *testing.T) *segment {
	return &segment{Segment: netnstest.New(t, "plhd", "10.77.0"), t: t, dir: t.TempDir()}
}

// addHost makes a namespace on the segment with address 10.77.0.<n>/24.
func (s *segment) addHost(n int, bundlePath string) *netnsHost {
	h := &netnsHost{Host: s.AddHost(n)}
	h.hc = helperConfig{StateDir: filepath.Join(s.dir, h.Name), Hostname: h.Name, BundlePath: bundlePath}
	s.hosts = append(s.hosts, h)
	return h
}

// start runs hostd in h's namespace until stop or the end of the test.
func (s *segment) start(h *netnsHost) {
	t := s.t
	t.Helper()
	data, _ := json.Marshal(h.hc)
	path := filepath.Join(s.dir, h.Name+".json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	cmd := s.Command(h.Host, exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	log, err := os.OpenFile(filepath.Join(s.dir, h.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.cmd, h.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(h.done) }()
	t.Cleanup(func() { s.kill(h, syscall.SIGTERM) })
}

// kill signals h's hostd (nsenter has exec'd it, so the PID is hostd's
// own) and waits for it to exit.
func (s *segment) kill(h *netnsHost, sig syscall.Signal) {
	if h.cmd == nil {
		return
	}
	select {
	case <-h.done:
	default:
		h.cmd.Process.Signal(sig)
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			h.cmd.Process.Kill()
			<-h.done
		}
	}
	h.cmd = nil
}

// client calls h's API from inside h's namespace, as its own root would.
func (s *segment) client(h *netnsHost, creds *bundle.Credentials) *Client {
	return s.clientTLS(h, creds.TLS())
}

func (s *segment) clientTLS(h *netnsHost, conf *tls.Config) *Client {
	return NewClientTransport(h.Addr, &http.Transport{TLSClientConfig: conf, DialContext: s.DialContext(h.Host)})
}

// logs returns every host's log, for failure messages.
func (s *segment) logs() string {
	var b strings.Builder
	for _, h := range s.hosts {
		data, _ := os.ReadFile(filepath.Join(s.dir, h.Name+".log"))
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(&b, "--- %s (last lines)\n%s\n", h.Name, strings.Join(lines, "\n"))
	}
	return b.String()
}

// writeBundle stores b for the helper processes.
func (s *segment) writeBundle(name string, b *bundle.Bundle) string {
	data, err := b.Marshal()
	if err != nil {
		s.t.Fatal(err)
	}
	path := filepath.Join(s.dir, name)
	if err := bundle.WriteFile(path, data); err != nil {
		s.t.Fatal(err)
	}
	return path
}

// membersOf asks h for its members.
func membersOf(c *Client) ([]Member, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return c.Members(ctx)
}

// wantStatus checks that the member list has id with status and, if addr
// is not empty, gossip address addr.
func wantStatus(ms []Member, id, status, addr string) error {
	for _, m := range ms {
		if m.ID == id {
			if m.Status != status || addr != "" && !strings.HasPrefix(m.Addr, addr+":") {
				return fmt.Errorf("%s is %s at %s, want %s at %s", id, m.Status, m.Addr, status, addr)
			}
			return nil
		}
	}
	return fmt.Errorf("%s not among %s", id, summary(ms))
}

func TestFiveHostsOnABridge(t *testing.T) {
	s := newSegment(t)
	b := newBundle(t)
	creds, err := b.IssueClient("admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path := s.writeBundle("bundle.toml", b)
	var seeds []string
	for n := 1; n <= 5; n++ {
		seeds = append(seeds, fmt.Sprintf("10.77.0.%d", n))
	}
	clients := map[*netnsHost]*Client{}
	for n := 1; n <= 5; n++ {
		h := s.addHost(n, path)
		h.hc.Join = seeds
		if n == 3 {
			// This one has only the join token and fetches the bundle.
			h.hc.BundlePath, h.hc.Token = "", b.JoinToken
		}
		s.start(h)
		clients[h] = s.client(h, creds)
	}
	// The hosts' logs explain a condition that never held.
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.logs())
		}
	})
	check := func(what string, timeout time.Duration, cond func() error) {
		t.Helper()
		testwait.For(t, what, timeout, cond)
	}

	// Every host sees all five alive.
	start := time.Now()
	check("all hosts see 5 alive members", 20*time.Second, func() error {
		for h, c := range clients {
			ms, err := membersOf(c)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			alive := 0
			for _, m := range ms {
				if m.Status == StatusAlive {
					alive++
				}
			}
			if alive != 5 {
				return fmt.Errorf("%s sees %s", h.Name, summary(ms))
			}
			if h.id == "" {
				info, err := c.Host(context.Background())
				if err != nil {
					return err
				}
				h.id = info.ID
			}
		}
		return nil
	})
	t.Logf("5 hosts converged %.2fs after the first start", time.Since(start).Seconds())
	if data, _ := os.ReadFile(filepath.Join(s.dir, "h3.log")); !strings.Contains(string(data), "cluster bundle fetched with the join token") {
		t.Errorf("h3 (token only) did not fetch the bundle:\n%s", data)
	}

	victim, others := s.hosts[4], s.hosts[:4]

	// SIGKILL one: the others report it failed within 3 s, on their event
	// streams.
	streams := map[*netnsHost]*EventStream{}
	for _, h := range others {
		es, err := clients[h].Events(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer es.Close()
		streams[h] = es
	}
	killed := time.Now()
	s.kill(victim, syscall.SIGKILL)
	var wg sync.WaitGroup
	var mu sync.Mutex
	detect := map[string]time.Duration{}
	for h, es := range streams {
		wg.Go(func() {
			for {
				e, err := es.Next()
				if err != nil {
					return
				}
				if e.Type == "member-failed" && e.Member.ID == victim.id {
					mu.Lock()
					detect[h.Name] = time.Since(killed)
					mu.Unlock()
					return
				}
			}
		})
	}
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(10 * time.Second):
		for _, es := range streams {
			es.Close()
		}
		<-waitDone
	}
	t.Logf("failure of %s reported after %v", victim.Name, detect)
	if len(detect) != len(others) {
		t.Fatalf("only %v reported %s failed within 10s\n%s", detect, victim.Name, s.logs())
	}
	for name, d := range detect {
		if d > 3*time.Second {
			t.Errorf("%s reported the failure after %v, want at most 3s", name, d)
		}
	}

	// Restarted with its state: alive again, with the same ID.
	s.start(victim)
	check("restarted host alive again with the same ID", 15*time.Second, func() error {
		for _, h := range others {
			ms, err := membersOf(clients[h])
			if err != nil {
				return err
			}
			if err := wantStatus(ms, victim.id, StatusAlive, victim.Addr); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		}
		return nil
	})

	// A new address (as from DHCP): the same member, at the new address.
	s.MoveHost(victim.Host, 105)
	clients[victim] = s.client(victim, creds)
	movedAt := time.Now()
	check("moved host seen at its new address", 20*time.Second, func() error {
		for _, h := range s.hosts {
			ms, err := membersOf(clients[h])
			if err != nil {
				return err
			}
			if len(ms) != 5 {
				return fmt.Errorf("%s sees %s", h.Name, summary(ms))
			}
			if err := wantStatus(ms, victim.id, StatusAlive, victim.Addr); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		}
		return nil
	})
	t.Logf("address change settled after %.2fs", time.Since(movedAt).Seconds())

	// A partition: one host's link down long enough to be declared failed,
	// then up again. Serf's reconnects heal it with no help.
	cut := s.hosts[3]
	run(t, "ip", "-n", cut.NS, "link", "set", "eth0", "down")
	check("partitioned host failed", 10*time.Second, func() error {
		ms, err := membersOf(clients[s.hosts[0]])
		if err != nil {
			return err
		}
		return wantStatus(ms, cut.id, StatusFailed, "")
	})
	run(t, "ip", "-n", cut.NS, "link", "set", "eth0", "up")
	healedAt := time.Now()
	check("partition healed", 30*time.Second, func() error {
		for _, h := range s.hosts {
			ms, err := membersOf(clients[h])
			if err != nil {
				return err
			}
			for _, m := range ms {
				if m.Status != StatusAlive {
					return fmt.Errorf("%s sees %s", h.Name, summary(ms))
				}
			}
		}
		return nil
	})
	t.Logf("partition healed %.2fs after the link came back", time.Since(healedAt).Seconds())

	// A host with another cluster's gossip key cannot join.
	strangerPath := s.writeBundle("stranger.toml", newBundle(t))
	stranger := s.addHost(6, strangerPath)
	stranger.hc.Join = seeds
	s.start(stranger)
	check("the stranger reports its failed join", 15*time.Second, func() error {
		data, _ := os.ReadFile(filepath.Join(s.dir, stranger.Name+".log"))
		if !strings.Contains(string(data), "join cluster: no seed answered") {
			return errors.New("no failed join in its log yet")
		}
		return nil
	})
	for _, h := range s.hosts[:5] {
		ms, err := membersOf(clients[h])
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 5 {
			t.Errorf("%s sees %s after a host with the wrong key tried to join", h.Name, summary(ms))
		}
	}

	// The API refuses a caller without a client certificate.
	c := s.clientTLS(s.hosts[0], bundle.ClientTLS(b.CACert, tls.Certificate{}))
	if _, err := membersOf(c); err == nil {
		t.Error("API answered a caller without a client certificate")
	}
}
