package dhcp

// Plumbing for the tests that run for real: a veth pair between two network
// namespaces of the test's own, and subprocesses inside them. The client and
// the Go server run as this test binary re-executed under `ip netns exec`
// (see TestMain): a socket belongs to the netns of the thread that opens
// it, and Go moves goroutines between threads, so a process per netns is
// the simple way to be sure where traffic goes.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"golang.org/x/net/ipv4"
)

// helperEnv selects a helper mode of the test binary; helperConfigEnv
// carries its JSON config.
const (
	helperEnv       = "PLINTH_DHCP_TEST_HELPER"
	helperConfigEnv = "PLINTH_DHCP_TEST_CONFIG"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "client":
		os.Exit(clientHelper())
	case "server":
		os.Exit(serverHelper())
	}
	os.Exit(m.Run())
}

// Interface names inside the namespaces, which are the tests' own.
const (
	clientIf = "dc0"
	serverIf = "ds0"
)

func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root to create network namespaces and raw sockets; run `go test` as root (CI does)")
	}
}

// segment is a link between a client netns and a server netns.
type segment struct {
	clientNS, serverNS string
}

var segments atomic.Int32

// newSegment creates two namespaces joined by a veth pair, with server on
// the server's end; t.Cleanup deletes them, and the veth pair with them.
func newSegment(tb testing.TB, server netip.Prefix) *segment {
	tb.Helper()
	base := fmt.Sprintf("plinth-dhcp-%d-%d", os.Getpid(), segments.Add(1))
	s := &segment{clientNS: base + "-c", serverNS: base + "-s"}
	for _, ns := range []string{s.clientNS, s.serverNS} {
		run(tb, "ip", "netns", "add", ns)
		tb.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				tb.Errorf("delete netns %s: %v: %s", ns, err, out)
			}
		})
	}
	run(tb, "ip", "-n", s.clientNS, "link", "add", clientIf, "type", "veth", "peer", "name", serverIf, "netns", s.serverNS)
	run(tb, "ip", "-n", s.serverNS, "addr", "add", server.String(), "dev", serverIf)
	run(tb, "ip", "-n", s.serverNS, "link", "set", serverIf, "up")
	run(tb, "ip", "-n", s.clientNS, "link", "set", clientIf, "up")
	return s
}

// clientMAC is the MAC of the client's end.
func (s *segment) clientMAC(tb testing.TB) string {
	tb.Helper()
	out := run(tb, "ip", "-n", s.clientNS, "-j", "link", "show", clientIf)
	var links []struct{ Address string }
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		tb.Fatalf("parse `ip link` output %q: %v", out, err)
	}
	return links[0].Address
}

func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// proc is a subprocess whose stdout lines the test reads.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr lockedBuffer
	exited chan struct{} // closed once the process has been waited for
}

// startProc starts name in netns ns. t.Cleanup kills it by its PID (`ip
// netns exec` execs in place) unless it has exited; its stderr is logged
// if the test failed.
func startProc(tb testing.TB, ns string, env []string, name string, args ...string) *proc {
	tb.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	// Dies with the test binary even if the cleanup never runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, cmd: cmd, lines: make(chan string, 1000), exited: make(chan struct{})}
	cmd.Stderr = &p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s in %s: %v", name, ns, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
		if tb.Failed() {
			tb.Logf("%s (pid %d) stderr:\n%s", name, cmd.Process.Pid, p.stderr.String())
		}
	})
	return p
}

// kill ends the process by its PID and waits for it.
func (p *proc) kill(tb testing.TB) {
	tb.Helper()
	p.cmd.Process.Kill()
	p.wait(tb, 5*time.Second)
}

func (p *proc) wait(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		tb.Fatalf("%s (pid %d) still running after %s", p.name, p.cmd.Process.Pid, timeout)
	}
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// The client helper: Client.Run in the client netns, events as JSON lines
// on stdout. A "release" line on stdin stops Run and releases the lease;
// the end of stdin, SIGTERM or SIGINT stop Run without a release.

type clientHelperConfig struct {
	StateDir               string
	BackoffMin, BackoffMax time.Duration
	// ConfigureAddress adds a bound lease's address to the interface and
	// removes a lost one, as netd does.
	ConfigureAddress bool
	// StatusEvery emits a status event at that period; 0 emits none.
	StatusEvery time.Duration
}

type clientEvent struct {
	Event  string // started, bound, expired, status, released, stopped
	At     time.Time
	Lease  *Lease  `json:",omitempty"`
	Status *Status `json:",omitempty"`
	Error  string  `json:",omitempty"`
}

func clientHelper() int {
	var hc clientHelperConfig
	if err := json.Unmarshal([]byte(os.Getenv(helperConfigEnv)), &hc); err != nil {
		fmt.Fprintln(os.Stderr, "client helper config:", err)
		return 2
	}
	var mu sync.Mutex
	out := json.NewEncoder(os.Stdout)
	emit := func(e clientEvent) {
		e.At = time.Now()
		mu.Lock()
		defer mu.Unlock()
		out.Encode(e)
	}
	ip := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ip %s: %v: %s\n", strings.Join(args, " "), err, out)
		}
	}

	cfg := DefaultConfig(clientIf)
	cfg.StateDir = hc.StateDir
	cfg.Hostname = "plinth-test"
	cfg.BackoffMin, cfg.BackoffMax = hc.BackoffMin, hc.BackoffMax
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg.OnBound = func(l Lease) {
		emit(clientEvent{Event: "bound", Lease: &l})
		if hc.ConfigureAddress {
			lft := fmt.Sprint(int(time.Until(l.Expires()).Seconds()) + 1)
			ip("addr", "replace", l.Address.String(), "dev", clientIf, "valid_lft", lft, "preferred_lft", lft)
		}
	}
	cfg.OnExpired = func(l Lease) {
		emit(clientEvent{Event: "expired", Lease: &l})
		if hc.ConfigureAddress {
			ip("addr", "del", l.Address.String(), "dev", clientIf)
		}
	}
	c := New(cfg)

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	var release atomic.Bool
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "release" {
				release.Store(true)
				break
			}
		}
		cancel()
	}()
	if hc.StatusEvery > 0 {
		go func() {
			t := time.NewTicker(hc.StatusEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					s := c.Status()
					emit(clientEvent{Event: "status", Status: &s})
				}
			}
		}()
	}

	emit(clientEvent{Event: "started"})
	err := c.Run(ctx)
	if release.Load() {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		e := clientEvent{Event: "released"}
		if err := c.Release(rctx); err != nil {
			e.Error = err.Error()
		}
		rcancel()
		emit(e)
	}
	emit(clientEvent{Event: "stopped", Error: fmt.Sprint(err)})
	return 0
}

// client is the test's side of a client helper.
type client struct {
	*proc
	seen []clientEvent
}

func startClient(tb testing.TB, s *segment, hc clientHelperConfig) *client {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	b, _ := json.Marshal(hc)
	p := startProc(tb, s.clientNS, []string{helperEnv + "=client", helperConfigEnv + "=" + string(b)}, exe)
	c := &client{proc: p}
	c.next(tb, "started", 10*time.Second)
	return c
}

// next returns the next event other than a status; it fails the test if
// that is not of kind want within timeout.
func (c *client) next(tb testing.TB, want string, timeout time.Duration) clientEvent {
	tb.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				tb.Fatalf("client exited waiting for %q; events: %s", want, c.history())
			}
			e := decodeEvent(tb, line)
			c.seen = append(c.seen, e)
			if e.Event == "status" {
				continue
			}
			if e.Event != want {
				tb.Fatalf("client event %q, want %q; events: %s", e.Event, want, c.history())
			}
			return e
		case <-deadline:
			tb.Fatalf("no %q event from client within %s; events: %s", want, timeout, c.history())
		}
	}
}

func decodeEvent(tb testing.TB, line string) clientEvent {
	tb.Helper()
	var e clientEvent
	if err := json.Unmarshal([]byte(line), &e); err != nil {
		tb.Fatalf("client event %q: %v", line, err)
	}
	return e
}

func (c *client) history() string {
	var b strings.Builder
	for _, e := range c.seen {
		fmt.Fprintf(&b, "\n  %s %s", e.At.Format("15:04:05.000"), e.Event)
		if e.Lease != nil {
			fmt.Fprintf(&b, " %s acquired %s", e.Lease.Address, e.Lease.Acquired.Format("15:04:05.000"))
		}
		if e.Status != nil {
			fmt.Fprintf(&b, " %s attempts=%d err=%q", e.Status.State, e.Status.Attempts, e.Status.LastError)
		}
	}
	return b.String()
}

// stop ends Run without a release, as a restart of netd does.
func (c *client) stop(tb testing.TB) {
	tb.Helper()
	c.stdin.Close()
	c.next(tb, "stopped", 5*time.Second)
	c.wait(tb, 5*time.Second)
}

// The Go server helper: a server4 server with one pool in the server netns,
// short leases and, unlike dnsmasq, a NAK for any REQUEST for an address it
// did not hand out. It prints each message it receives as a JSON line.

type serverHelperConfig struct {
	Server    netip.Prefix // its own address, on serverIf
	PoolStart netip.Addr
	Lease     time.Duration
	DNS       netip.Addr
	MTU       uint16
	Domain    string
	ConfigURL string
	// IgnoreRenewals drops a bound client's unicast REQUESTs (renewals),
	// so that only a rebind, which is broadcast, gets an answer.
	IgnoreRenewals bool
}

type serverEvent struct {
	Type      string // ready, or the received message's type
	MAC       string `json:",omitempty"`
	ClientIP  string `json:",omitempty"`
	Requested string `json:",omitempty"`
}

func serverHelper() int {
	var hc serverHelperConfig
	if err := json.Unmarshal([]byte(os.Getenv(helperConfigEnv)), &hc); err != nil {
		fmt.Fprintln(os.Stderr, "server helper config:", err)
		return 2
	}
	var mu sync.Mutex
	leases := map[string]netip.Addr{} // by MAC
	next := hc.PoolStart
	out := json.NewEncoder(os.Stdout)

	handle := func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4, broadcast bool) {
		mu.Lock()
		defer mu.Unlock()
		mac := m.ClientHWAddr.String()
		e := serverEvent{Type: m.MessageType().String(), MAC: mac}
		if ip, ok := addrFrom(m.ClientIPAddr); ok && !ip.IsUnspecified() {
			e.ClientIP = ip.String()
		}
		requested, _ := addrFrom(m.RequestedIPAddress())
		if requested.IsValid() {
			e.Requested = requested.String()
		}
		out.Encode(e)

		held, known := leases[mac]
		var reply dhcpv4.MessageType
		switch m.MessageType() {
		case dhcpv4.MessageTypeDiscover:
			if !known {
				held, next = next, next.Next()
				leases[mac] = held
			}
			reply = dhcpv4.MessageTypeOffer
		case dhcpv4.MessageTypeRequest:
			if sid, ok := addrFrom(m.ServerIdentifier()); ok && sid != hc.Server.Addr() {
				return // the client chose another server's offer
			}
			want := requested
			if !want.IsValid() {
				want, _ = addrFrom(m.ClientIPAddr) // renewing or rebinding
				if hc.IgnoreRenewals && !broadcast {
					return
				}
			}
			reply = dhcpv4.MessageTypeAck
			if !known || held != want {
				reply = dhcpv4.MessageTypeNak
			}
		case dhcpv4.MessageTypeRelease:
			if ip, _ := addrFrom(m.ClientIPAddr); known && held == ip {
				delete(leases, mac)
			}
			return
		default:
			return
		}

		mods := []dhcpv4.Modifier{
			dhcpv4.WithMessageType(reply),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(hc.Server.Addr().AsSlice())),
		}
		if reply != dhcpv4.MessageTypeNak {
			mods = append(mods,
				dhcpv4.WithYourIP(held.AsSlice()),
				dhcpv4.WithServerIP(hc.Server.Addr().AsSlice()),
				dhcpv4.WithNetmask(net.CIDRMask(hc.Server.Bits(), 32)),
				dhcpv4.WithRouter(hc.Server.Addr().AsSlice()),
				dhcpv4.WithDNS(hc.DNS.AsSlice()),
				dhcpv4.WithOption(dhcpv4.OptDomainName(hc.Domain)),
				dhcpv4.WithOption(dhcpv4.Option{Code: dhcpv4.OptionInterfaceMTU, Value: dhcpv4.Uint16(hc.MTU)}),
				dhcpv4.WithOption(dhcpv4.Option{Code: dhcpv4.GenericOptionCode(OptionConfigURL), Value: dhcpv4.String(hc.ConfigURL)}),
				dhcpv4.WithOption(dhcpv4.OptBootFileName("plinth.efi")),
				dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(hc.Lease)),
			)
		}
		resp, err := dhcpv4.NewReplyFromRequest(m, mods...)
		if err != nil {
			fmt.Fprintln(os.Stderr, "build reply:", err)
			return
		}
		if _, err := conn.WriteTo(resp.ToBytes(), peer); err != nil {
			fmt.Fprintln(os.Stderr, "send reply:", err)
		}
	}

	conn, err := server4.NewIPv4UDPConn(serverIf, &net.UDPAddr{Port: dhcpv4.ServerPort})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start server:", err)
		return 1
	}
	// The destination address tells a renewal (unicast) from a rebind.
	pc := ipv4.NewPacketConn(conn)
	if err := pc.SetControlMessage(ipv4.FlagDst, true); err != nil {
		fmt.Fprintln(os.Stderr, "start server:", err)
		return 1
	}
	mu.Lock()
	out.Encode(serverEvent{Type: "ready"})
	mu.Unlock()
	// The test's end closes stdin.
	go func() {
		io.Copy(io.Discard, os.Stdin)
		conn.Close()
	}()
	buf := make([]byte, 4096)
	for {
		n, cm, peer, err := pc.ReadFrom(buf)
		if err != nil {
			return 0
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			continue
		}
		// A client without an address gets its answer broadcast.
		if u, ok := peer.(*net.UDPAddr); ok && (u.IP == nil || u.IP.To4().Equal(net.IPv4zero)) {
			peer = &net.UDPAddr{IP: net.IPv4bcast, Port: u.Port}
		}
		handle(conn, peer, m, cm != nil && cm.Dst.Equal(net.IPv4bcast))
	}
}

// goServer is the test's side of a server helper.
type goServer struct {
	*proc
	mu   sync.Mutex
	seen []serverEvent
}

func startGoServer(tb testing.TB, s *segment, hc serverHelperConfig) *goServer {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	b, _ := json.Marshal(hc)
	g := &goServer{proc: startProc(tb, s.serverNS, []string{helperEnv + "=server", helperConfigEnv + "=" + string(b)}, exe)}
	ready := make(chan struct{})
	go func() {
		for line := range g.lines {
			var e serverEvent
			if json.Unmarshal([]byte(line), &e) != nil {
				continue
			}
			if e.Type == "ready" {
				close(ready)
				continue
			}
			g.mu.Lock()
			g.seen = append(g.seen, e)
			g.mu.Unlock()
		}
	}()
	select {
	case <-ready:
	case <-g.exited:
		tb.Fatalf("Go DHCP server exited: %s", g.stderr.String())
	case <-time.After(10 * time.Second):
		tb.Fatal("Go DHCP server not ready within 10s")
	}
	return g
}

// events returns the messages the server received so far.
func (g *goServer) events() []serverEvent {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]serverEvent(nil), g.seen...)
}

func (g *goServer) received() []string {
	var types []string
	for _, e := range g.events() {
		types = append(types, e.Type)
	}
	return types
}

// holds reports whether the server still has addr leased: it forgets it
// on the client's RELEASE.
func (g *goServer) holds(tb testing.TB, addr netip.Addr) bool {
	for _, e := range g.events() {
		if e.Type == "RELEASE" && e.ClientIP == addr.String() {
			return false
		}
	}
	return true
}

// dnsmasq runs Debian's dnsmasq as the server, DHCP only.
type dnsmasq struct {
	*proc
	leaseFile string
}

func startDnsmasq(tb testing.TB, s *segment, rangeStart, rangeEnd netip.Addr, router, dns netip.Addr, configURL string) *dnsmasq {
	tb.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		tb.Fatal("dnsmasq is not installed: run scripts/deps.sh (Debian package dnsmasq-base)")
	}
	dir := tb.TempDir()
	d := &dnsmasq{leaseFile: dir + "/leases"}
	pidFile := dir + "/pid"
	// --keep-in-foreground rather than --no-daemon: both stay in the
	// foreground, but --no-daemon writes no pid file.
	d.proc = startProc(tb, s.serverNS, nil, "dnsmasq",
		"--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--log-facility=-", "--log-dhcp",
		"--interface="+serverIf, "--bind-interfaces",
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,2m", rangeStart, rangeEnd),
		"--dhcp-option=option:T1,5", "--dhcp-option=option:T2,8",
		"--dhcp-option=option:router,"+router.String(),
		"--dhcp-option=option:dns-server,"+dns.String(),
		"--dhcp-option=option:mtu,1400",
		"--dhcp-option=option:domain-name,plinth.test",
		fmt.Sprintf("--dhcp-option=%d,%s", OptionConfigURL, configURL),
		"--dhcp-leasefile="+d.leaseFile, "--pid-file="+pidFile)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 0 {
			if got := strings.TrimSpace(string(b)); got != fmt.Sprint(d.cmd.Process.Pid) {
				tb.Fatalf("dnsmasq pid file says %s, started pid %d", got, d.cmd.Process.Pid)
			}
			return d
		}
		if !d.running() || time.Now().After(deadline) {
			tb.Fatalf("dnsmasq did not start: %s", d.stderr.String())
		}
	}
}

var dnsmasqReceived = regexp.MustCompile(`DHCP(DISCOVER|REQUEST|RELEASE|DECLINE|INFORM)\(`)

// received returns the types of the messages dnsmasq logged receiving.
func (d *dnsmasq) received() []string {
	var types []string
	for _, m := range dnsmasqReceived.FindAllStringSubmatch(d.stderr.String(), -1) {
		types = append(types, m[1])
	}
	return types
}

// holds reports whether dnsmasq's lease file lists addr.
func (d *dnsmasq) holds(tb testing.TB, addr netip.Addr) bool {
	tb.Helper()
	b, err := os.ReadFile(d.leaseFile)
	if err != nil {
		tb.Fatalf("read dnsmasq lease file: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == addr.String() {
			return true
		}
	}
	return false
}
