package dhcp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/rfc1035label"
)

// These tests need neither root nor a network.

var testMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}

func ack(t *testing.T, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithHwAddr(testMAC),
		dhcpv4.WithYourIP(net.ParseIP("192.0.2.10")),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("192.0.2.1"))),
	}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Read back from the wire format, as the client sees it.
	m, err = dhcpv4.FromBytes(m.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLeaseFromACK(t *testing.T) {
	sent := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	full := ack(t,
		dhcpv4.WithNetmask(net.CIDRMask(26, 32)),
		dhcpv4.WithRouter(net.ParseIP("192.0.2.1")),
		dhcpv4.WithDNS(net.ParseIP("192.0.2.53"), net.ParseIP("192.0.2.54")),
		dhcpv4.WithOption(dhcpv4.OptDomainName("plinth.test")),
		dhcpv4.WithOption(dhcpv4.OptDomainSearch(&rfc1035label.Labels{Labels: []string{"a.plinth.test", "plinth.test"}})),
		dhcpv4.WithOption(dhcpv4.OptHostName("node1")),
		dhcpv4.WithOption(dhcpv4.Option{Code: dhcpv4.OptionInterfaceMTU, Value: dhcpv4.Uint16(9000)}),
		dhcpv4.WithServerIP(net.ParseIP("192.0.2.2")),
		dhcpv4.WithOption(dhcpv4.OptBootFileName("plinth.efi")),
		// Some servers count the C string's NUL in the option.
		dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(OptionConfigURL), []byte("http://192.0.2.1/plinth.toml\x00")),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(time.Hour)),
		dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(10*time.Minute)),
		dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(50*time.Minute)),
	)
	got, err := leaseFromACK("eth0", testMAC, full, sent)
	if err != nil {
		t.Fatal(err)
	}
	want := Lease{
		Interface:  "eth0",
		MAC:        testMAC,
		Address:    netip.MustParsePrefix("192.0.2.10/26"),
		Router:     netip.MustParseAddr("192.0.2.1"),
		DNS:        []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("192.0.2.54")},
		DomainName: "plinth.test",
		Search:     []string{"a.plinth.test", "plinth.test"},
		Hostname:   "node1",
		MTU:        9000,
		NextServer: netip.MustParseAddr("192.0.2.2"),
		BootFile:   "plinth.efi",
		ConfigURL:  "http://192.0.2.1/plinth.toml",
		Server:     netip.MustParseAddr("192.0.2.1"),
		Acquired:   sent,
		Duration:   time.Hour,
		Renew:      10 * time.Minute,
		Rebind:     50 * time.Minute,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("lease\n got %+v\nwant %+v", got, want)
	}
	if !got.Expires().Equal(sent.Add(time.Hour)) || !got.RenewAt().Equal(sent.Add(10*time.Minute)) || !got.RebindAt().Equal(sent.Add(50*time.Minute)) {
		t.Errorf("times: renew %s rebind %s expires %s, from %s", got.RenewAt(), got.RebindAt(), got.Expires(), sent)
	}
}

func TestLeaseTimes(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		mods                   []dhcpv4.Modifier
		duration, renew, rebin time.Duration
	}{
		{"no T1 and T2", []dhcpv4.Modifier{dhcpv4.WithLeaseTime(800)},
			800 * time.Second, 400 * time.Second, 700 * time.Second},
		{"T1 after T2", []dhcpv4.Modifier{dhcpv4.WithLeaseTime(800),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(600 * time.Second)), dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(500 * time.Second))},
			800 * time.Second, 400 * time.Second, 700 * time.Second},
		{"T2 after expiry", []dhcpv4.Modifier{dhcpv4.WithLeaseTime(800),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(900 * time.Second))},
			800 * time.Second, 400 * time.Second, 700 * time.Second},
		{"no lease time", nil, time.Hour, 30 * time.Minute, 52*time.Minute + 30*time.Second},
		{"infinite", []dhcpv4.Modifier{dhcpv4.WithLeaseTime(0xffffffff)},
			0xffffffff * time.Second, 0xffffffff * time.Second / 2, 0xffffffff * time.Second / 8 * 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := leaseFromACK("eth0", testMAC, ack(t, tc.mods...), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if l.Duration != tc.duration || l.Renew != tc.renew || l.Rebind != tc.rebin {
				t.Errorf("lease %s, T1 %s, T2 %s; want %s, %s, %s", l.Duration, l.Renew, l.Rebind, tc.duration, tc.renew, tc.rebin)
			}
		})
	}
}

func TestLeaseAddress(t *testing.T) {
	// Without a subnet mask option, the address's class decides.
	l, err := leaseFromACK("eth0", testMAC, ack(t), time.Now())
	if err != nil || l.Address != netip.MustParsePrefix("192.0.2.10/24") {
		t.Errorf("lease without mask: %s, %v; want 192.0.2.10/24", l.Address, err)
	}
	if _, err := leaseFromACK("eth0", testMAC, ack(t, dhcpv4.WithYourIP(net.IPv4zero)), time.Now()); err == nil {
		t.Error("ACK without an address gave a lease")
	}
	if _, err := leaseFromACK("eth0", testMAC, ack(t, dhcpv4.WithNetmask(net.IPv4Mask(255, 0, 255, 0))), time.Now()); err == nil {
		t.Error("ACK with a non-contiguous mask gave a lease")
	}
}

func testLease(acquired time.Time) Lease {
	return Lease{
		Interface: "plinth-none0",
		MAC:       testMAC,
		Address:   netip.MustParsePrefix("192.0.2.10/24"),
		Router:    netip.MustParseAddr("192.0.2.1"),
		DNS:       []netip.Addr{netip.MustParseAddr("192.0.2.53")},
		ConfigURL: "http://192.0.2.1/plinth.toml",
		Server:    netip.MustParseAddr("192.0.2.1"),
		Acquired:  acquired.UTC().Round(0), // as read back from JSON
		Duration:  time.Hour,
		Renew:     30 * time.Minute,
		Rebind:    52 * time.Minute,
	}
}

func TestLeaseFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "eth0.lease.json")
	if l, err := loadLease(path); l != nil || err != nil {
		t.Fatalf("load before any save: %v, %v; want nothing", l, err)
	}
	first := testLease(time.Now())
	if err := saveLease(path, first); err != nil {
		t.Fatal(err)
	}
	second := testLease(time.Now().Add(time.Minute))
	if err := saveLease(path, second); err != nil {
		t.Fatal(err)
	}
	got, err := loadLease(path)
	if err != nil || !reflect.DeepEqual(*got, second) {
		t.Fatalf("loaded %+v, %v; want %+v", got, err, second)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"MAC": "02:00:00:00:00:01"`) {
		t.Errorf("lease file does not show the MAC readably:\n%s", b)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("state dir holds %d files, want just the lease: %v", len(entries), entries)
	}
	if err := os.WriteFile(path, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadLease(path); err == nil {
		t.Error("a torn lease file loaded")
	}
}

// events records a client's callbacks.
type events struct {
	mu             sync.Mutex
	bound, expired []Lease
}

func (e *events) config(cfg Config) Config {
	cfg.OnBound = func(l Lease) { e.mu.Lock(); e.bound = append(e.bound, l); e.mu.Unlock() }
	cfg.OnExpired = func(l Lease) { e.mu.Lock(); e.expired = append(e.expired, l); e.mu.Unlock() }
	return cfg
}

func (e *events) get() (bound, expired []Lease) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Lease(nil), e.bound...), append([]Lease(nil), e.expired...)
}

// runClient runs a client on an interface that does not exist, so that it
// sends nothing, until it has failed once.
func runClient(t *testing.T, cfg Config) (*Client, func() error) {
	t.Helper()
	cfg.Interface = "plinth-none0"
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Millisecond, 20*time.Millisecond
	c := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for deadline := time.Now().Add(5 * time.Second); c.Status().Attempts == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no failed attempt within 5s: %+v", c.Status())
		}
	}
	return c, func() error { cancel(); return <-done }
}

func TestRunRestoresLease(t *testing.T) {
	dir := t.TempDir()
	saved := testLease(time.Now())
	path := filepath.Join(dir, "plinth-none0.lease.json")
	if err := saveLease(path, saved); err != nil {
		t.Fatal(err)
	}
	var ev events
	c, stop := runClient(t, ev.config(Config{StateDir: dir}))
	if bound, _ := ev.get(); len(bound) != 1 || !reflect.DeepEqual(bound[0], saved) {
		t.Errorf("OnBound got %+v; want the lease on disk once", bound)
	}
	// The server could not confirm the lease, which is kept until T1.
	for deadline := time.Now().Add(5 * time.Second); c.Status().State != StateBound && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	s := c.Status()
	if s.State != StateBound || s.Lease == nil || s.Lease.Address != saved.Address ||
		s.Attempts != 1 || !strings.Contains(s.LastError, "plinth-none0") || !s.NextAttempt.Equal(saved.RenewAt()) {
		t.Errorf("status %+v; want bound to the lease on disk until T1, after one failed attempt", s)
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("lease file after Run returned: %v; want it kept", err)
	}
}

func TestRunDropsExpiredLease(t *testing.T) {
	dir := t.TempDir()
	old := testLease(time.Now().Add(-2 * time.Hour))
	path := filepath.Join(dir, "plinth-none0.lease.json")
	if err := saveLease(path, old); err != nil {
		t.Fatal(err)
	}
	var ev events
	c, stop := runClient(t, ev.config(Config{StateDir: dir}))
	defer stop()
	bound, expired := ev.get()
	if len(bound) != 0 || len(expired) != 1 || !reflect.DeepEqual(expired[0], old) {
		t.Errorf("OnBound got %v, OnExpired got %v; want only OnExpired with the lease on disk", bound, expired)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("expired lease file: %v; want it removed", err)
	}
	if s := c.Status(); s.Lease != nil || s.State != StateSelecting || !strings.Contains(s.LastError, "plinth-none0") {
		t.Errorf("status %+v; want no lease, selecting, failing on the missing interface", s)
	}
}

func TestReleaseWithoutServer(t *testing.T) {
	dir := t.TempDir()
	c := New(Config{Interface: "plinth-none0", StateDir: dir})
	if err := c.Release(context.Background()); err != nil {
		t.Errorf("release without a lease: %v", err)
	}
	path := filepath.Join(dir, "plinth-none0.lease.json")
	if err := saveLease(path, testLease(time.Now())); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(context.Background()); err == nil || !strings.Contains(err.Error(), "192.0.2.10") {
		t.Errorf("release on a missing interface: %v; want an error naming the address", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lease file after release: %v; want it removed", err)
	}
}

func TestRunNeedsInterface(t *testing.T) {
	if err := New(Config{}).Run(context.Background()); err == nil {
		t.Error("Run without an interface did not fail")
	}
}

func TestBackoff(t *testing.T) {
	c := New(Config{Interface: "eth0", BackoffMin: time.Second, BackoffMax: 5 * time.Second})
	now := time.Now()
	for attempts, base := range []time.Duration{1, 2, 4, 5, 5} {
		base *= time.Second
		c.attempts = attempts
		if d := c.backoff(now, time.Time{}); d < base || d > min(base+base/8, 5*time.Second) {
			t.Errorf("after %d failures: wait %s, want %s plus at most 1/8, at most 5s", attempts, d, base)
		}
	}
	if d := c.backoff(now, now.Add(300*time.Millisecond)); d != 300*time.Millisecond {
		t.Errorf("wait %s with T2 300ms away, want 300ms", d)
	}
	if d := New(Config{Interface: "eth0"}); d.cfg.BackoffMin != DefaultConfig("").BackoffMin || d.cfg.BackoffMax != DefaultConfig("").BackoffMax {
		t.Errorf("zero backoff became %s..%s, want DefaultConfig's", d.cfg.BackoffMin, d.cfg.BackoffMax)
	}
}
