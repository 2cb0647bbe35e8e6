package dhcp

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Addresses of the test segments: documentation ranges (RFC 5737), only
// ever configured inside the tests' own namespaces.
var (
	dnsmasqNet = netip.MustParsePrefix("198.51.100.1/24")
	goNet      = netip.MustParsePrefix("192.0.2.1/24")
)

// dhcpServer is what the lifecycle test needs to see of a server.
type dhcpServer interface {
	// received returns the types of the messages it got, in order.
	received() []string
	// holds reports whether it has addr leased.
	holds(tb testing.TB, addr netip.Addr) bool
}

func goServerConfig(pool string) serverHelperConfig {
	return serverHelperConfig{
		Server:    goNet,
		PoolStart: netip.MustParseAddr(pool),
		Lease:     4 * time.Second, // T1 at 2 s, so the test sees renewals
		DNS:       netip.MustParseAddr("192.0.2.53"),
		MTU:       1400,
		Domain:    "plinth.test",
		ConfigURL: "http://192.0.2.1/plinth.toml",
	}
}

// testClient is the client config of the tests with a server: fast
// retries, and the address configured as netd does.
func testClient(stateDir string) clientHelperConfig {
	return clientHelperConfig{StateDir: stateDir, BackoffMin: time.Second, BackoffMax: 4 * time.Second, ConfigureAddress: true}
}

// TestLeaseLifecycle acquires a lease, sees it renewed at T1, restarts the
// client, which must bind the lease on disk at once and confirm it without a
// new DISCOVER, and releases it: the server forgets it and so does the disk.
func TestLeaseLifecycle(t *testing.T) {
	needRoot(t)
	cases := []struct {
		name  string
		net   netip.Prefix
		start func(*testing.T, *segment) dhcpServer
		pool  [2]netip.Addr
		want  Lease // the fields every lease from the server must have
	}{{
		name: "dnsmasq",
		net:  dnsmasqNet,
		start: func(t *testing.T, s *segment) dhcpServer {
			return startDnsmasq(t, s, netip.MustParseAddr("198.51.100.100"), netip.MustParseAddr("198.51.100.150"),
				dnsmasqNet.Addr(), netip.MustParseAddr("198.51.100.53"), "http://198.51.100.1/plinth.toml")
		},
		pool: [2]netip.Addr{netip.MustParseAddr("198.51.100.100"), netip.MustParseAddr("198.51.100.150")},
		want: Lease{
			Router: dnsmasqNet.Addr(), DNS: []netip.Addr{netip.MustParseAddr("198.51.100.53")},
			DomainName: "plinth.test", MTU: 1400, ConfigURL: "http://198.51.100.1/plinth.toml",
			Server:   dnsmasqNet.Addr(),
			Duration: 2 * time.Minute, Renew: 5 * time.Second, Rebind: 8 * time.Second,
		},
	}, {
		name:  "go-server4",
		net:   goNet,
		start: func(t *testing.T, s *segment) dhcpServer { return startGoServer(t, s, goServerConfig("192.0.2.100")) },
		pool:  [2]netip.Addr{netip.MustParseAddr("192.0.2.100"), netip.MustParseAddr("192.0.2.100")},
		want: Lease{
			Router: goNet.Addr(), DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53")},
			DomainName: "plinth.test", MTU: 1400, ConfigURL: "http://192.0.2.1/plinth.toml",
			Server: goNet.Addr(), NextServer: goNet.Addr(), BootFile: "plinth.efi",
			// The server sends no T1 and T2: RFC 2131's defaults apply.
			Duration: 4 * time.Second, Renew: 2 * time.Second, Rebind: 3500 * time.Millisecond,
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seg := newSegment(t, tc.net)
			srv := tc.start(t, seg)
			stateDir := t.TempDir()
			leaseFile := filepath.Join(stateDir, clientIf+".lease.json")

			c := startClient(t, seg, testClient(stateDir))
			got := c.next(t, "bound", 15*time.Second).Lease
			want := tc.want
			want.Interface, want.MAC = clientIf, got.MAC
			checkLease(t, *got, want)
			if mac := seg.clientMAC(t); got.MAC.String() != mac {
				t.Errorf("lease MAC %s, interface has %s", got.MAC, mac)
			}
			addr := got.Address.Addr()
			if got.Address.Bits() != 24 || addr.Less(tc.pool[0]) || tc.pool[1].Less(addr) {
				t.Errorf("lease address %s, want a /24 in %s-%s", got.Address, tc.pool[0], tc.pool[1])
			}
			if !srv.holds(t, addr) {
				t.Errorf("server holds no lease for %s", addr)
			}

			renewed := c.next(t, "bound", got.Renew+5*time.Second).Lease
			if renewed.Address != got.Address {
				t.Errorf("renewal changed the address: %s, then %s", got.Address, renewed.Address)
			}
			if after := renewed.Acquired.Sub(got.Acquired); after < got.Renew {
				t.Errorf("renewed %s after acquiring, before T1 (%s)", after, got.Renew)
			}

			c.stop(t)
			onDisk, err := loadLease(leaseFile)
			if err != nil || onDisk == nil || !onDisk.Acquired.Equal(renewed.Acquired) {
				t.Fatalf("lease on disk after stop: %+v, %v; want the renewed one", onDisk, err)
			}
			before := len(srv.received())
			c = startClient(t, seg, testClient(stateDir))
			restored := c.next(t, "bound", 2*time.Second).Lease
			if !restored.Acquired.Equal(onDisk.Acquired) || restored.Address != onDisk.Address {
				t.Fatalf("first lease after restart: %s acquired %s; want the one on disk, %s acquired %s",
					restored.Address, restored.Acquired, onDisk.Address, onDisk.Acquired)
			}
			confirmed := c.next(t, "bound", 5*time.Second).Lease
			if confirmed.Address != restored.Address || !confirmed.Acquired.After(restored.Acquired) {
				t.Errorf("lease after restart not renewed: %s acquired %s, then %s acquired %s",
					restored.Address, restored.Acquired, confirmed.Address, confirmed.Acquired)
			}
			// dnsmasq may log the REQUEST a little after its ACK went out.
			var since []string
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if since = srv.received()[before:]; slices.Contains(since, "REQUEST") {
					break
				}
			}
			if !slices.Contains(since, "REQUEST") || slices.Contains(since, "DISCOVER") {
				t.Errorf("server received %v after the restart; want a REQUEST and no DISCOVER", since)
			}

			if _, err := io.WriteString(c.stdin, "release\n"); err != nil {
				t.Fatal(err)
			}
			if e := c.next(t, "released", 5*time.Second); e.Error != "" {
				t.Errorf("release: %s", e.Error)
			}
			c.next(t, "stopped", 5*time.Second)
			if _, err := os.Stat(leaseFile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("lease file after release: %v; want it gone", err)
			}
			for deadline := time.Now().Add(3 * time.Second); srv.holds(t, addr); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("server still holds %s 3s after the release", addr)
				}
			}
		})
	}
}

// checkLease compares the fields of got that want sets, and checks the
// times add up.
func checkLease(t *testing.T, got, want Lease) {
	t.Helper()
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"Interface", got.Interface, want.Interface},
		{"Router", got.Router, want.Router},
		{"DNS", got.DNS, want.DNS},
		{"DomainName", got.DomainName, want.DomainName},
		{"MTU", got.MTU, want.MTU},
		{"ConfigURL", got.ConfigURL, want.ConfigURL},
		{"Server", got.Server, want.Server},
		{"BootFile", got.BootFile, want.BootFile},
		{"Duration", got.Duration, want.Duration},
		{"Renew", got.Renew, want.Renew},
		{"Rebind", got.Rebind, want.Rebind},
	} {
		if fmt.Sprint(f.got) != fmt.Sprint(f.want) {
			t.Errorf("lease %s = %v, want %v", f.name, f.got, f.want)
		}
	}
	if want.NextServer.IsValid() && got.NextServer != want.NextServer {
		t.Errorf("lease NextServer = %v, want %v", got.NextServer, want.NextServer)
	}
	if age := time.Since(got.Acquired); age < 0 || age > 10*time.Second {
		t.Errorf("lease acquired %s ago", age)
	}
}

// TestRestoredLeaseRefused restarts the client against a server that does
// not know its lease: it binds the lease on disk, loses it on the NAK and
// acquires a new one.
func TestRestoredLeaseRefused(t *testing.T) {
	needRoot(t)
	seg := newSegment(t, goNet)
	stateDir := t.TempDir()
	srv := startGoServer(t, seg, goServerConfig("192.0.2.100"))
	c := startClient(t, seg, testClient(stateDir))
	old := c.next(t, "bound", 10*time.Second).Lease
	c.stop(t)
	srv.kill(t)

	srv = startGoServer(t, seg, goServerConfig("192.0.2.150"))
	c = startClient(t, seg, testClient(stateDir))
	if l := c.next(t, "bound", 2*time.Second).Lease; l.Address != old.Address {
		t.Fatalf("restored %s, want %s", l.Address, old.Address)
	}
	if l := c.next(t, "expired", 5*time.Second).Lease; l.Address != old.Address {
		t.Errorf("lost %s, want %s", l.Address, old.Address)
	}
	if l := c.next(t, "bound", 10*time.Second).Lease; l.Address.Addr() != netip.MustParseAddr("192.0.2.150") {
		t.Errorf("new lease %s, want 192.0.2.150/24", l.Address)
	}
	if got := strings.Join(srv.received(), " "); !strings.HasPrefix(got, "REQUEST DISCOVER REQUEST") {
		t.Errorf("server received %q; want the restored lease's REQUEST, then DISCOVER and REQUEST", got)
	}
	if e := srv.events()[0]; e.Requested != old.Address.Addr().String() || e.ClientIP != "" {
		t.Errorf("first REQUEST asked for %q from %q; want INIT-REBOOT for %s", e.Requested, e.ClientIP, old.Address.Addr())
	}
}

// TestRebind gives the client a server that ignores renewals: the client
// must rebind at T2 and keep its address.
func TestRebind(t *testing.T) {
	needRoot(t)
	seg := newSegment(t, goNet)
	cfg := goServerConfig("192.0.2.100")
	cfg.IgnoreRenewals = true
	startGoServer(t, seg, cfg)
	c := startClient(t, seg, testClient(""))
	l := c.next(t, "bound", 10*time.Second).Lease
	rebound := c.next(t, "bound", l.Duration).Lease
	if rebound.Address != l.Address {
		t.Errorf("rebinding changed the address: %s, then %s", l.Address, rebound.Address)
	}
	if rebound.Acquired.Before(l.RebindAt()) {
		t.Errorf("lease extended at %s, before T2 %s, by a server that ignores renewals", rebound.Acquired, l.RebindAt())
	}
}

// statesSeen returns the states of the client's status events so far,
// without repeats.
func statesSeen(c *client) []State {
	var states []State
	for _, e := range c.seen {
		if e.Status != nil && (len(states) == 0 || states[len(states)-1] != e.Status.State) {
			states = append(states, e.Status.State)
		}
	}
	return states
}

// TestLeaseExpires takes the server away from a bound client: it renews,
// rebinds, loses the lease when it expires, and goes back to discovering.
func TestLeaseExpires(t *testing.T) {
	needRoot(t)
	seg := newSegment(t, goNet)
	srv := startGoServer(t, seg, goServerConfig("192.0.2.100"))
	hc := testClient("")
	hc.StatusEvery = 100 * time.Millisecond
	c := startClient(t, seg, hc)
	l := c.next(t, "bound", 10*time.Second).Lease
	srv.kill(t)

	lost := c.next(t, "expired", l.Duration+2*time.Second)
	if lost.Lease.Address != l.Address {
		t.Errorf("lost %s, want %s", lost.Lease.Address, l.Address)
	}
	if early := l.Expires().Sub(lost.At); early > 0 {
		t.Errorf("lease lost %s before it expired", early)
	}
	if late := lost.At.Sub(l.Expires()); late > time.Second {
		t.Errorf("lease lost %s after it expired", late)
	}
	if states := statesSeen(c); !slices.Contains(states, StateRenewing) || !slices.Contains(states, StateRebinding) {
		t.Errorf("client went through states %v; want renewing, then rebinding", states)
	}
	for deadline := time.Now().Add(3 * time.Second); ; {
		c.nextStatus(t)
		if s := c.seen[len(c.seen)-1].Status; s.State == StateSelecting && s.Attempts > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client not back to discovering 3s after expiry: %s", c.history())
		}
	}
}

// TestNoServer runs a client on a link without a server: it must keep
// trying, spaced out by its backoff, and say why in Status.
func TestNoServer(t *testing.T) {
	needRoot(t)
	seg := newSegment(t, goNet)
	hc := clientHelperConfig{BackoffMin: 100 * time.Millisecond, BackoffMax: 400 * time.Millisecond, StatusEvery: 100 * time.Millisecond}
	c := startClient(t, seg, hc)
	var last Status
	for start := time.Now(); time.Since(start) < 2500*time.Millisecond; {
		s := c.nextStatus(t)
		if s.Attempts < last.Attempts {
			t.Fatalf("attempts went down from %d to %d", last.Attempts, s.Attempts)
		}
		last = s
	}
	// Waits of 0.1, 0.2, 0.4, 0.4... s fit 6 or 7 attempts in 2.5 s;
	// without backoff there would be hundreds.
	if last.Attempts < 3 || last.Attempts > 10 {
		t.Errorf("%d failed attempts in 2.5s with backoff 100ms..400ms", last.Attempts)
	}
	if last.State != StateSelecting || last.Lease != nil || !strings.Contains(last.LastError, "no offer") {
		t.Errorf("status %+v; want selecting, no lease, error about no offer", last)
	}
	if wait := time.Until(last.NextAttempt); wait > hc.BackoffMax {
		t.Errorf("next attempt in %s, beyond BackoffMax %s", wait, hc.BackoffMax)
	}
	if !c.running() {
		t.Fatal("client returned without a server")
	}
	c.stdin.Close()
	if e := c.next(t, "stopped", 5*time.Second); e.Error != "context canceled" {
		t.Errorf("Run returned %q, want context canceled", e.Error)
	}
}

// nextStatus returns the next status event; any other event fails the
// test.
func (c *client) nextStatus(tb testing.TB) Status {
	tb.Helper()
	var e clientEvent
	select {
	case line, ok := <-c.lines:
		if !ok {
			tb.Fatalf("client exited; events: %s", c.history())
		}
		e = decodeEvent(tb, line)
		c.seen = append(c.seen, e)
	case <-time.After(5 * time.Second):
		tb.Fatalf("no status from client within 5s; events: %s", c.history())
	}
	if e.Status == nil {
		tb.Fatalf("client event %q, want a status; events: %s", e.Event, c.history())
	}
	return *e.Status
}
