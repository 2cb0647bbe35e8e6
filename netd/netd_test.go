package netd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The tests run netd for real, as a subprocess inside a network namespace
// they create (this test binary re-executed under `ip netns exec`), wired
// by a veth pair to a peer namespace, and inspect the result with netlink.

const helperEnv = "PLINTH_NETD_TEST_CONFIG"

// TestMain runs netd when re-executed as the helper.
func TestMain(m *testing.M) {
	if path := os.Getenv(helperEnv); path != "" {
		os.Exit(runHelper(path))
	}
	os.Exit(m.Run())
}

func runHelper(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	d, err := New(cfg, Options{ReleaseOnStop: func() bool {
		_, err := os.Stat(filepath.Join(cfg.RunDir, ShutdownMarker))
		return err == nil
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testNet is a pair of namespaces joined by a veth: "host" runs netd on
// link Host, "peer" holds link Peer.
type testNet struct {
	Host, Peer     string // namespace names
	HostIf, PeerIf string
	dir            string
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

var nsCounter int

func newTestNet(t *testing.T) *testNet {
	needRoot(t)
	nsCounter++
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, nsCounter)
	n := &testNet{
		Host: "plinth-netd-" + id + "-h", Peer: "plinth-netd-" + id + "-p",
		HostIf: fmt.Sprintf("nd%sh", id), PeerIf: fmt.Sprintf("nd%sp", id),
		dir: t.TempDir(),
	}
	run(t, "ip", "netns", "add", n.Host)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.Host).Run() })
	run(t, "ip", "netns", "add", n.Peer)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.Peer).Run() })
	run(t, "ip", "link", "add", n.HostIf, "netns", n.Host, "type", "veth", "peer", "name", n.PeerIf, "netns", n.Peer)
	run(t, "ip", "-n", n.Peer, "link", "set", n.PeerIf, "up")
	run(t, "ip", "-n", n.Peer, "link", "set", "lo", "up")
	return n
}

// startNetd runs netd with cfg in the host namespace until the test ends
// (or stop is called) and returns a stop function.
func (n *testNet) startNetd(t *testing.T, cfg Config) (stop func(marker bool)) {
	t.Helper()
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(n.dir, fmt.Sprintf("netd-%d.json", time.Now().UnixNano()))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	cmd := exec.Command("ip", "netns", "exec", n.Host, exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	log, _ := os.Create(filepath.Join(n.dir, "netd.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stopped := false
	stop = func(marker bool) {
		if stopped {
			return
		}
		stopped = true
		if marker {
			os.WriteFile(filepath.Join(cfg.RunDir, ShutdownMarker), nil, 0o644)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("netd did not stop within 10s of SIGTERM")
		}
	}
	t.Cleanup(func() {
		stop(false)
		if t.Failed() {
			out, _ := os.ReadFile(filepath.Join(n.dir, "netd.log"))
			t.Logf("netd log:\n%s", out)
		}
	})
	return stop
}

func (n *testNet) handle(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// eventually polls cond for up to 15 s.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// whenReady polls netd's status until it says ready and hands check that
// first ready status, at once: what must hold from the moment netd is
// ready, not only eventually.
func whenReady(t *testing.T, runDir string, check func(Status)) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st, err := status(t, runDir)
		if err == nil && st.Ready {
			check(st)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 20s: %+v (%v)", st, err)
		}
	}
}

func hasAddr(nl *netlink.Handle, link string, want netip.Prefix) error {
	l, err := nl.LinkByName(link)
	if err != nil {
		return err
	}
	addrs, err := nl.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	var have []string
	for _, a := range addrs {
		if p, ok := toPrefix(a.IPNet); ok && p == want {
			return nil
		}
		have = append(have, a.IPNet.String())
	}
	return fmt.Errorf("%s has %v, want %s", link, have, want)
}

func hasRoute(nl *netlink.Handle, link, dst, gw string) error {
	l, err := nl.LinkByName(link)
	if err != nil {
		return err
	}
	routes, err := nl.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	var have []string
	for _, r := range routes {
		if ipNetString(r.Dst) == dst && r.Gw.String() == gw {
			return nil
		}
		have = append(have, ipNetString(r.Dst)+" via "+r.Gw.String())
	}
	return fmt.Errorf("%s routes %v, want %s via %s", link, have, dst, gw)
}

func status(t *testing.T, runDir string) (Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return NewClient(filepath.Join(runDir, SocketName)).Status(ctx)
}

func TestStaticPlanKeptApplied(t *testing.T) {
	n := newTestNet(t)
	run(t, "ip", "-n", n.Peer, "addr", "add", "10.77.0.1/24", "dev", n.PeerIf)
	cfg := DefaultConfig()
	cfg.StateDir, cfg.RunDir = filepath.Join(n.dir, "state"), filepath.Join(n.dir, "run")
	cfg.Interfaces = []Interface{{Name: n.HostIf, Addressing: Addressing{
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.77.0.2/24")},
		Gateway:   netip.MustParseAddr("10.77.0.1"),
		Routes:    []Route{{To: netip.MustParsePrefix("10.99.0.0/16"), Via: netip.MustParseAddr("10.77.0.254"), Metric: 50}},
		MTU:       1400,
		Required:  true,
	}}}
	cfg.Bridges = []Bridge{{Name: "plt0", Addressing: Addressing{Addresses: []netip.Prefix{netip.MustParsePrefix("10.88.0.1/24")}}}}
	cfg.DNS = []netip.Addr{netip.MustParseAddr("10.77.0.53")}
	cfg.Search = []string{"test.example"}
	n.startNetd(t, cfg)
	nl := n.handle(t, n.Host)

	eventually(t, "netd ready", func() error {
		st, err := status(t, cfg.RunDir)
		if err == nil && !st.Ready {
			err = fmt.Errorf("not ready: %+v", st)
		}
		return err
	})
	eventually(t, "static address", func() error { return hasAddr(nl, n.HostIf, netip.MustParsePrefix("10.77.0.2/24")) })
	eventually(t, "default route", func() error { return hasRoute(nl, n.HostIf, "default", "10.77.0.1") })
	eventually(t, "static route", func() error { return hasRoute(nl, n.HostIf, "10.99.0.0/16", "10.77.0.254") })
	eventually(t, "bridge address", func() error { return hasAddr(nl, "plt0", netip.MustParsePrefix("10.88.0.1/24")) })
	l, err := nl.LinkByName(n.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().MTU != 1400 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("link mtu %d flags %v, want 1400 and up", l.Attrs().MTU, l.Attrs().Flags)
	}
	resolv, err := os.ReadFile(filepath.Join(cfg.RunDir, ResolvConfName))
	if err != nil || !strings.Contains(string(resolv), "nameserver 10.77.0.53\n") || !strings.Contains(string(resolv), "search test.example\n") {
		t.Errorf("resolv.conf = %q (%v)", resolv, err)
	}

	// Someone deletes the address by hand: it comes back, with the routes
	// that depended on it.
	run(t, "ip", "-n", n.Host, "addr", "del", "10.77.0.2/24", "dev", n.HostIf)
	eventually(t, "address restored", func() error { return hasAddr(nl, n.HostIf, netip.MustParsePrefix("10.77.0.2/24")) })
	eventually(t, "default route restored", func() error { return hasRoute(nl, n.HostIf, "default", "10.77.0.1") })

	// The link is taken down: netd brings it up and re-applies the routes
	// the kernel dropped with it.
	run(t, "ip", "-n", n.Host, "link", "set", n.HostIf, "down")
	eventually(t, "link up again", func() error {
		l, err := nl.LinkByName(n.HostIf)
		if err == nil && l.Attrs().Flags&net.FlagUp == 0 {
			err = fmt.Errorf("%s is down", n.HostIf)
		}
		return err
	})
	eventually(t, "static route after flap", func() error { return hasRoute(nl, n.HostIf, "10.99.0.0/16", "10.77.0.254") })
	eventually(t, "default route after flap", func() error { return hasRoute(nl, n.HostIf, "default", "10.77.0.1") })

	// Loopback, which the new namespace left down, is up, and stays up.
	loUp := func() error {
		l, err := nl.LinkByName("lo")
		if err == nil && l.Attrs().Flags&net.FlagUp == 0 {
			err = errors.New("lo is down")
		}
		return err
	}
	eventually(t, "loopback up", loUp)
	run(t, "ip", "-n", n.Host, "link", "set", "lo", "down")
	eventually(t, "loopback up again", loUp)

	// A route deleted by hand comes back too.
	run(t, "ip", "-n", n.Host, "route", "del", "10.99.0.0/16")
	eventually(t, "route restored", func() error { return hasRoute(nl, n.HostIf, "10.99.0.0/16", "10.77.0.254") })

	st, err := status(t, cfg.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(st.Links, func(l LinkStatus) bool { return l.Name == n.HostIf })
	if i < 0 || !st.Links[i].Present || !slices.Contains(st.Links[i].Addresses, "10.77.0.2/24") || st.Reconciles < 2 {
		t.Errorf("status %+v", st)
	}
}

// IPv6: static addresses, a default route and a route from the config,
// an IPv6 DNS server in resolv.conf; and an address the kernel makes by
// SLAAC from a router advertisement (dnsmasq's, in the peer namespace)
// is left alone, next to netd's.
func TestIPv6StaticAndSLAAC(t *testing.T) {
	n := newTestNet(t)
	run(t, "ip", "-n", n.Peer, "addr", "add", "2001:db8:77::1/64", "dev", n.PeerIf, "nodad")
	ra := false
	if _, err := exec.LookPath("dnsmasq"); err == nil {
		// Router advertisements only: the prefix for SLAAC and DNS
		// (RDNSS, DNSSL), no DHCPv6.
		cmd := exec.Command("ip", "netns", "exec", n.Peer, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
			"--port=0", "--interface="+n.PeerIf, "--bind-interfaces", "--enable-ra",
			"--dhcp-range=::,constructor:"+n.PeerIf+",ra-only,64,1h", "--ra-param="+n.PeerIf+",3",
			"--dhcp-option=option6:dns-server,[2001:db8:77::35]", "--dhcp-option=option6:domain-search,ra.example",
			"--pid-file="+filepath.Join(n.dir, "dnsmasq-ra.pid"), "--user=root")
		log, _ := os.Create(filepath.Join(n.dir, "dnsmasq-ra.log"))
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		ra = true
	}
	cfg := DefaultConfig()
	cfg.StateDir, cfg.RunDir = filepath.Join(n.dir, "state"), filepath.Join(n.dir, "run")
	cfg.Interfaces = []Interface{{Name: n.HostIf, Addressing: Addressing{
		Addresses: []netip.Prefix{netip.MustParsePrefix("2001:db8:77::2/64")},
		Gateway:   netip.MustParseAddr("2001:db8:77::1"),
		Routes:    []Route{{To: netip.MustParsePrefix("2001:db8:99::/48"), Via: netip.MustParseAddr("2001:db8:77::fe")}},
		Required:  true,
	}}}
	cfg.DNS = []netip.Addr{netip.MustParseAddr("2001:db8:77::53")}
	n.startNetd(t, cfg)
	nl := n.handle(t, n.Host)

	// Ready only once duplicate address detection has passed: a
	// tentative address can be neither bound nor sent from.
	whenReady(t, cfg.RunDir, func(Status) {
		l, err := nl.LinkByName(n.HostIf)
		if err != nil {
			t.Fatal(err)
		}
		addrs, _ := nl.AddrList(l, netlink.FAMILY_V6)
		for _, a := range addrs {
			if p, ok := toPrefix(a.IPNet); ok && p == netip.MustParsePrefix("2001:db8:77::2/64") && a.Flags&unix.IFA_F_TENTATIVE != 0 {
				t.Fatalf("ready with %s still tentative", p)
			}
		}
	})
	eventually(t, "static IPv6 address", func() error { return hasAddr(nl, n.HostIf, netip.MustParsePrefix("2001:db8:77::2/64")) })
	eventually(t, "IPv6 default route", func() error { return hasRoute(nl, n.HostIf, "default", "2001:db8:77::1") })
	eventually(t, "IPv6 static route", func() error { return hasRoute(nl, n.HostIf, "2001:db8:99::/48", "2001:db8:77::fe") })
	resolv, err := os.ReadFile(filepath.Join(cfg.RunDir, ResolvConfName))
	if err != nil || !strings.Contains(string(resolv), "nameserver 2001:db8:77::53\n") {
		t.Errorf("resolv.conf = %q (%v), want the IPv6 server", resolv, err)
	}
	// Traffic flows once duplicate address detection has passed.
	eventually(t, "ping the peer over IPv6", func() error {
		out, err := exec.Command("ip", "netns", "exec", n.Host, "busybox", "ping6", "-c", "1", "-W", "1", "2001:db8:77::1").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	if !ra {
		t.Log("dnsmasq not installed: SLAAC not tried")
		return
	}
	slaac := func() (netip.Prefix, error) {
		l, err := nl.LinkByName(n.HostIf)
		if err != nil {
			return netip.Prefix{}, err
		}
		addrs, err := nl.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return netip.Prefix{}, err
		}
		for _, a := range addrs {
			if p, ok := toPrefix(a.IPNet); ok && p.Bits() == 64 && p.Addr() != netip.MustParseAddr("2001:db8:77::2") &&
				netip.MustParsePrefix("2001:db8:77::/64").Contains(p.Addr()) {
				return p, nil
			}
		}
		return netip.Prefix{}, fmt.Errorf("no SLAAC address in 2001:db8:77::/64 on %s", n.HostIf)
	}
	var auto netip.Prefix
	eventually(t, "SLAAC address from the router advertisement", func() (err error) {
		auto, err = slaac()
		return err
	})
	// The advertisement's DNS server and domain follow the configured
	// server in resolv.conf and the status.
	eventually(t, "DNS from the router advertisement", func() error {
		resolv, err := os.ReadFile(filepath.Join(cfg.RunDir, ResolvConfName))
		if err != nil {
			return err
		}
		if want := "nameserver 2001:db8:77::53\nnameserver 2001:db8:77::35\nsearch ra.example\n"; !strings.HasSuffix(string(resolv), want) {
			return fmt.Errorf("resolv.conf = %q, want it to end %q", resolv, want)
		}
		st, err := status(t, cfg.RunDir)
		if err != nil {
			return err
		}
		if !slices.Equal(st.DNS, []string{"2001:db8:77::53", "2001:db8:77::35"}) || !slices.Equal(st.Search, []string{"ra.example"}) {
			return fmt.Errorf("status DNS %v search %v", st.DNS, st.Search)
		}
		return nil
	})
	// netd's resyncs and reconciles leave it be.
	run(t, "ip", "-n", n.Host, "addr", "del", "2001:db8:77::2/64", "dev", n.HostIf)
	eventually(t, "static IPv6 address restored", func() error { return hasAddr(nl, n.HostIf, netip.MustParsePrefix("2001:db8:77::2/64")) })
	if err := hasAddr(nl, n.HostIf, auto); err != nil {
		t.Errorf("netd removed the SLAAC address: %v", err)
	}
	// Its routes were never taken for others: IPv6 routes get a metric
	// from the kernel that netd must compare with.
	if log, _ := os.ReadFile(filepath.Join(n.dir, "netd.log")); strings.Contains(string(log), "route removed") {
		t.Errorf("netd removed a route it wants:\n%s", log)
	}
}

// TestDHCPv6 runs netd's DHCPv6 client against dnsmasq, which also sends
// the router advertisements with the prefix (on-link, managed).
func TestDHCPv6(t *testing.T) {
	n := newTestNet(t)
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (scripts/deps.sh installs it)")
	}
	run(t, "ip", "-n", n.Peer, "addr", "add", "2001:db8:78::1/64", "dev", n.PeerIf, "nodad")
	cmd := exec.Command("ip", "netns", "exec", n.Peer, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--port=0", "--interface="+n.PeerIf, "--bind-interfaces", "--enable-ra", "--log-facility=-", "--log-dhcp",
		"--dhcp-range=2001:db8:78::100,2001:db8:78::1ff,64,10m", "--ra-param="+n.PeerIf+",3",
		"--dhcp-option=option6:dns-server,[2001:db8:78::53]", "--dhcp-option=option6:domain-search,v6.example",
		"--dhcp-leasefile="+filepath.Join(n.dir, "dnsmasq6.leases"), "--pid-file="+filepath.Join(n.dir, "dnsmasq6.pid"), "--user=root")
	dlogPath := filepath.Join(n.dir, "dnsmasq6.log")
	dlog, err := os.Create(dlogPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = dlog, dlog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); dlog.Close() })

	cfg := DefaultConfig()
	cfg.StateDir, cfg.RunDir = filepath.Join(n.dir, "state"), filepath.Join(n.dir, "run")
	// A static address too: it is there at once, while the DHCPv6 client
	// waits for its link-local address; ready must wait for the lease.
	cfg.Interfaces = []Interface{{Name: n.HostIf, Addressing: Addressing{
		Addresses: []netip.Prefix{netip.MustParsePrefix("2001:db8:78::2/64")}, DHCP6: true, Required: true}}}
	stop := n.startNetd(t, cfg)
	nl := n.handle(t, n.Host)

	whenReady(t, cfg.RunDir, func(st Status) {
		if len(st.Links) != 1 || st.Links[0].DHCP6 == nil || st.Links[0].DHCP6.Lease == nil {
			t.Fatalf("ready before the DHCPv6 lease: %+v", st)
		}
	})

	var leased netip.Addr
	eventually(t, "a DHCPv6 address in the range, ready", func() error {
		st, err := status(t, cfg.RunDir)
		if err != nil {
			return err
		}
		if len(st.Links) != 1 || st.Links[0].DHCP6 == nil || st.Links[0].DHCP6.Lease == nil || !st.Ready {
			return fmt.Errorf("status %+v", st)
		}
		d6 := st.Links[0].DHCP6
		if d6.State != "bound" || len(d6.Lease.Addresses) != 1 || len(st.Links[0].Addresses) != 2 {
			return fmt.Errorf("dhcp6 %+v", d6)
		}
		leased = d6.Lease.Addresses[0].Addr
		if r := netip.MustParsePrefix("2001:db8:78::/64"); !r.Contains(leased) || leased.Less(netip.MustParseAddr("2001:db8:78::100")) {
			return fmt.Errorf("leased %s, outside the range", leased)
		}
		if !slices.Equal(st.DNS, []string{"2001:db8:78::53"}) || !slices.Equal(st.Search, []string{"v6.example"}) {
			return fmt.Errorf("DNS %v search %v", st.DNS, st.Search)
		}
		return nil
	})
	// On the link as a /128 that expires with the lease.
	l, err := nl.LinkByName(n.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := nl.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	var onLink *netlink.Addr
	for i, a := range addrs {
		if p, ok := toPrefix(a.IPNet); ok && p == netip.PrefixFrom(leased, 128) {
			onLink = &addrs[i]
		}
	}
	if onLink == nil {
		t.Fatalf("%s/128 not on %s: %v", leased, n.HostIf, addrs)
	}
	if onLink.ValidLft <= 0 || onLink.ValidLft > 600 {
		t.Errorf("valid lifetime %d s, want the lease's (up to 600 s)", onLink.ValidLft)
	}
	resolv, err := os.ReadFile(filepath.Join(cfg.RunDir, ResolvConfName))
	if err != nil || !strings.Contains(string(resolv), "nameserver 2001:db8:78::53\nsearch v6.example\n") {
		t.Errorf("resolv.conf = %q (%v)", resolv, err)
	}
	// The router advertisement's prefix makes the peer reachable from
	// the leased address.
	eventually(t, "ping the peer from the leased address", func() error {
		out, err := exec.Command("ip", "netns", "exec", n.Host, "busybox", "ping6", "-c", "1", "-W", "1", "-I", leased.String(), "2001:db8:78::1").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	// Shutting down releases the lease and takes the address away.
	stop(true)
	if err := hasAddr(nl, n.HostIf, netip.PrefixFrom(leased, 128)); err == nil {
		log, _ := os.ReadFile(dlogPath)
		t.Errorf("%s/128 still on the link after the release; dnsmasq:\n%s", leased, log)
	}
	eventually(t, "dnsmasq saw the release", func() error {
		if log, _ := os.ReadFile(dlogPath); !bytes.Contains(log, []byte("DHCPRELEASE")) {
			return fmt.Errorf("dnsmasq log:\n%s", log)
		}
		return nil
	})
}

func TestMissingInterfaceReported(t *testing.T) {
	n := newTestNet(t)
	cfg := DefaultConfig()
	cfg.StateDir, cfg.RunDir = filepath.Join(n.dir, "state"), filepath.Join(n.dir, "run")
	cfg.ReadyTimeout = time.Second
	cfg.Interfaces = []Interface{{Name: "nosuch0", Addressing: Addressing{Addresses: []netip.Prefix{netip.MustParsePrefix("10.5.0.2/24")}}}}
	n.startNetd(t, cfg)
	// Optional and absent: netd says so, keeps running and reports ready
	// after the ready timeout instead of blocking the boot.
	eventually(t, "status shows the missing link", func() error {
		st, err := status(t, cfg.RunDir)
		if err != nil {
			return err
		}
		if len(st.Links) != 1 || st.Links[0].Present || !strings.Contains(st.Links[0].Error, "not present") || !st.Ready {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// startDnsmasq serves DHCP on the peer side: leases from .50-.60 of
// 10.77.1.0/24, router .1, DNS .53, MTU 1450, T1 5 s.
func (n *testNet) startDnsmasq(t *testing.T) (leaseFile string) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (scripts/deps.sh installs it)")
	}
	run(t, "ip", "-n", n.Peer, "addr", "add", "10.77.1.1/24", "dev", n.PeerIf)
	leaseFile = filepath.Join(n.dir, "dnsmasq.leases")
	pidFile := filepath.Join(n.dir, "dnsmasq.pid")
	cmd := exec.Command("ip", "netns", "exec", n.Peer, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
		"--port=0", "--interface="+n.PeerIf, "--bind-interfaces", "--dhcp-authoritative",
		"--dhcp-range=10.77.1.50,10.77.1.60,255.255.255.0,2m",
		"--dhcp-option=option:router,10.77.1.1", "--dhcp-option=option:dns-server,10.77.1.53",
		"--dhcp-option=option:mtu,1450", "--dhcp-option=option:domain-name,lan.test",
		"--dhcp-option=option:T1,5", "--dhcp-option=option:T2,8",
		"--dhcp-leasefile="+leaseFile, "--pid-file="+pidFile, "--user=root")
	log, _ := os.Create(filepath.Join(n.dir, "dnsmasq.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return leaseFile
}

func TestDHCPLeaseAppliedKeptAndReleased(t *testing.T) {
	n := newTestNet(t)
	leases := n.startDnsmasq(t)
	cfg := DefaultConfig()
	cfg.StateDir, cfg.RunDir = filepath.Join(n.dir, "state"), filepath.Join(n.dir, "run")
	cfg.Interfaces = []Interface{{Name: n.HostIf, Addressing: Addressing{DHCP: true, Required: true}}}
	stop := n.startNetd(t, cfg)
	nl := n.handle(t, n.Host)

	var addr netip.Prefix
	eventually(t, "bound and ready", func() error {
		st, err := status(t, cfg.RunDir)
		if err != nil {
			return err
		}
		if !st.Ready || len(st.Links) != 1 || st.Links[0].DHCP == nil || st.Links[0].DHCP.State != "bound" {
			return fmt.Errorf("status %+v", st)
		}
		addr, err = netip.ParsePrefix(st.Links[0].DHCP.Address)
		return err
	})
	if !netip.MustParsePrefix("10.77.1.0/24").Contains(addr.Addr()) || addr.Bits() != 24 {
		t.Fatalf("lease address %s, want one in 10.77.1.0/24", addr)
	}
	eventually(t, "lease address on the link", func() error { return hasAddr(nl, n.HostIf, addr) })
	eventually(t, "default route via the DHCP router", func() error { return hasRoute(nl, n.HostIf, "default", "10.77.1.1") })
	eventually(t, "MTU from DHCP", func() error {
		l, err := nl.LinkByName(n.HostIf)
		if err == nil && l.Attrs().MTU != 1450 {
			err = fmt.Errorf("mtu %d", l.Attrs().MTU)
		}
		return err
	})
	resolv, _ := os.ReadFile(filepath.Join(cfg.RunDir, ResolvConfName))
	if !strings.Contains(string(resolv), "nameserver 10.77.1.53\n") || !strings.Contains(string(resolv), "search lan.test\n") {
		t.Errorf("resolv.conf = %q", resolv)
	}

	// A restart (no shutdown marker) keeps the lease: the address stays on
	// the link and the new netd restores and renews the same lease.
	stop(false)
	if err := hasAddr(nl, n.HostIf, addr); err != nil {
		t.Fatalf("after netd stopped: %v", err)
	}
	stop = n.startNetd(t, cfg)
	eventually(t, "same lease after restart", func() error {
		st, err := status(t, cfg.RunDir)
		if err != nil {
			return err
		}
		if len(st.Links) != 1 || st.Links[0].DHCP == nil || st.Links[0].DHCP.Address != addr.String() || !st.Ready {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})

	// Machine shutdown: the lease is released and the address removed.
	stop(true)
	if err := hasAddr(nl, n.HostIf, addr); err == nil {
		t.Errorf("address %s still on the link after release", addr)
	}
	eventually(t, "dnsmasq forgot the lease", func() error {
		data, _ := os.ReadFile(leases)
		if strings.Contains(string(data), addr.Addr().String()) {
			return fmt.Errorf("lease file still has it: %q", data)
		}
		return nil
	})
}
