package dhcp6

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/server6"
	"github.com/insomniacslk/dhcp/iana"
)

// scenarioEnv makes the test binary run the lifecycle scenario in the
// network namespace TestLifecycle made, instead of the tests.
const scenarioEnv = "PLINTH_DHCP6_SCENARIO"

func TestMain(m *testing.M) {
	if os.Getenv(scenarioEnv) != "" {
		if err := lifecycle(); err != nil {
			fmt.Fprintln(os.Stderr, "scenario:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestLifecycle binds, renews, loses the lease while the server is
// silent (renew, then rebind, fail until the addresses' valid lifetime
// ends) and binds again once it answers: a Go server with lifetimes of
// seconds on a veth pair in a namespace of the test's own.
func TestLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	ns := fmt.Sprintf("plinth-dhcp6-%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	// No duplicate address detection: the link-local addresses are
	// usable at once.
	run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
	run("ip", "-n", ns, "link", "add", "cl0", "type", "veth", "peer", "name", "sv0")
	run("ip", "-n", ns, "link", "set", "cl0", "up")
	run("ip", "-n", ns, "link", "set", "sv0", "up")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), scenarioEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("scenario:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
}

// server answers as a DHCPv6 server with short lifetimes while answering
// is set.
type server struct {
	answering atomic.Bool
	mu        sync.Mutex
	seen      []dhcpv6.MessageType
}

func (s *server) handle(conn net.PacketConn, peer net.Addr, m dhcpv6.DHCPv6) {
	msg, ok := m.(*dhcpv6.Message)
	if !ok {
		return
	}
	s.mu.Lock()
	s.seen = append(s.seen, msg.MessageType)
	s.mu.Unlock()
	if !s.answering.Load() {
		return
	}
	var resp *dhcpv6.Message
	var err error
	switch msg.MessageType {
	case dhcpv6.MessageTypeSolicit:
		resp, err = dhcpv6.NewAdvertiseFromSolicit(msg)
	case dhcpv6.MessageTypeRequest, dhcpv6.MessageTypeRenew, dhcpv6.MessageTypeRebind, dhcpv6.MessageTypeRelease:
		resp, err = dhcpv6.NewReplyFromMessage(msg)
	default:
		return
	}
	if err != nil {
		return
	}
	resp.AddOption(dhcpv6.OptServerID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: net.HardwareAddr{2, 0, 0, 0, 0, 0x53}}))
	ia := &dhcpv6.OptIANA{IaId: msg.Options.OneIANA().IaId, T1: time.Second, T2: 2 * time.Second}
	ia.Options.Add(&dhcpv6.OptIAAddress{IPv6Addr: net.ParseIP("2001:db8::100"), PreferredLifetime: 3 * time.Second, ValidLifetime: 4 * time.Second})
	resp.UpdateOption(ia)
	resp.AddOption(dhcpv6.OptDNS(net.ParseIP("2001:db8::53")))
	conn.WriteTo(resp.ToBytes(), peer)
}

func (s *server) count(t dhcpv6.MessageType) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.seen {
		if m == t {
			n++
		}
	}
	return n
}

func lifecycle() error {
	srv := &server{}
	srv.answering.Store(true)
	s, err := server6.NewServer("sv0", nil, srv.handle)
	if err != nil {
		return err
	}
	go s.Serve()
	defer s.Close()

	events := make(chan string, 16)
	cfg := DefaultConfig("cl0")
	cfg.Timeout, cfg.Retries = 200*time.Millisecond, 2
	cfg.BackoffMin, cfg.BackoffMax = 200*time.Millisecond, time.Second
	cfg.OnBound = func(l Lease) { events <- "bound " + l.Addresses[0].Addr.String() }
	cfg.OnExpired = func(Lease) { events <- "expired" }
	cfg.ReleaseOnStop = func() bool { return true }
	cfg.OnReleased = func(l Lease) { events <- "released " + l.Addresses[0].Addr.String() }
	c := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	next := func(want string, within time.Duration) error {
		select {
		case e := <-events:
			if e != want {
				return fmt.Errorf("got %q, want %q", e, want)
			}
			fmt.Printf("%s: %s\n", time.Now().Format("15:04:05.000"), e)
			return nil
		case <-time.After(within):
			return fmt.Errorf("no %q within %s (state %+v)", want, within, c.Status())
		}
	}
	if err := next("bound 2001:db8::100", 5*time.Second); err != nil {
		return err
	}
	// Renewed at T1 (1 s), before its addresses' preferred lifetime ends.
	if err := next("bound 2001:db8::100", 2*time.Second); err != nil {
		return fmt.Errorf("renewal: %w", err)
	}
	if srv.count(dhcpv6.MessageTypeRenew) == 0 {
		return fmt.Errorf("bound again without a Renew")
	}
	// Silent server: Renew, then Rebind, until the valid lifetime (4 s).
	srv.answering.Store(false)
	if err := next("expired", 6*time.Second); err != nil {
		return err
	}
	if srv.count(dhcpv6.MessageTypeRebind) == 0 {
		return fmt.Errorf("lease lost without a Rebind")
	}
	srv.answering.Store(true)
	if err := next("bound 2001:db8::100", 5*time.Second); err != nil {
		return fmt.Errorf("after the server came back: %w", err)
	}
	if st := c.Status(); st.State != "bound" || st.Lease == nil {
		return fmt.Errorf("status %+v", st)
	}
	// Stopped, it gives the lease back.
	cancel()
	if err := next("released 2001:db8::100", 3*time.Second); err != nil {
		return err
	}
	if srv.count(dhcpv6.MessageTypeRelease) != 1 {
		return fmt.Errorf("%d releases sent, want 1", srv.count(dhcpv6.MessageTypeRelease))
	}
	return nil
}
