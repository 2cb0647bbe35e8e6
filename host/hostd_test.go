package host

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/internal/testwait"
)

// loopbackHost runs a hostd on 127.0.0.1 with free ports until the test
// ends. Hosts on loopback need no root, so these tests run anywhere.
func loopbackHost(t *testing.T, b *bundle.Bundle, hostname string, join ...string) *Daemon {
	t.Helper()
	cfg := loopbackConfig(t, "127.0.0.1", hostname, 0)
	cfg.Bundle, cfg.Join, cfg.Roles = b, join, []string{"test"}
	return runHost(t, cfg)
}

func newBundle(t *testing.T) *bundle.Bundle {
	t.Helper()
	b, err := bundle.Create("test")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func adminClient(t *testing.T, b *bundle.Bundle, d *Daemon) *Client {
	t.Helper()
	creds, err := b.IssueClient("admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return NewClient(d.APIAddr().String(), creds.TLS())
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	testwait.For(t, what, timeout, cond)
}

func TestAPIServesHostAndMembers(t *testing.T) {
	b := newBundle(t)
	a := loopbackHost(t, b, "alpha")
	c := adminClient(t, b, a)
	ctx := context.Background()

	if err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := c.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != a.ID() || info.Hostname != "alpha" || info.Cluster != "test" || !slices.Equal(info.Roles, []string{"test"}) {
		t.Errorf("host info = %+v, want id %s hostname alpha cluster test roles [test]", info, a.ID())
	}
	if !strings.HasPrefix(info.Addr, "127.0.0.1:") || info.API != a.APIAddr().String() {
		t.Errorf("host info addresses = %s, %s; want gossip on 127.0.0.1 and API %s", info.Addr, info.API, a.APIAddr())
	}
	if info.MemoryBytes <= 0 || info.MemoryAvailableBytes <= 0 || info.MemoryAvailableBytes > info.MemoryBytes || info.CPUs != runtime.NumCPU() {
		t.Errorf("host info resources: memory %d, available %d, cpus %d; want what /proc/meminfo and NumCPU say", info.MemoryBytes, info.MemoryAvailableBytes, info.CPUs)
	}

	events, err := c.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	beta := loopbackHost(t, b, "beta", strings.TrimPrefix(info.Addr, ""))
	waitFor(t, "alpha sees beta alive", 10*time.Second, func() error {
		ms, err := c.Members(ctx)
		if err != nil {
			return err
		}
		if len(ms) != 2 || ms[0].Hostname != "alpha" || ms[1].ID != beta.ID() || ms[1].Status != StatusAlive {
			return errors.New("members: " + summary(ms))
		}
		return nil
	})
	for {
		e, err := events.Next()
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		if e.Type == "member-join" && e.Member.ID == beta.ID() {
			if e.Member.Hostname != "beta" || e.Member.Version == "" {
				t.Errorf("join event member = %+v, want hostname beta and a version", e.Member)
			}
			break
		}
	}

	resp, err := c.http.Get(c.base + "/v2/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("unknown path: %d %s, want 404 application/json", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp, err = c.http.Post(c.base+"/v1/members", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
		t.Errorf("POST /v1/members: %d, Allow %q; want 405, Allow GET", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func summary(ms []Member) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Hostname+"/"+m.ID+"@"+m.Addr+"="+m.Status)
	}
	return strings.Join(s, " ")
}

func TestAPIRefusesClientsWithoutClusterCertificate(t *testing.T) {
	b := newBundle(t)
	d := loopbackHost(t, b, "alpha")
	ca := b.CACert
	other := newBundle(t)
	otherCreds, err := other.IssueClient("admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, conf := range map[string]*tls.Config{
		"no certificate":          bundle.ClientTLS(ca, tls.Certificate{}),
		"another cluster's certs": bundle.ClientTLS(ca, otherCreds.Cert),
	} {
		t.Run(name, func(t *testing.T) {
			err := NewClient(d.APIAddr().String(), conf).Health(context.Background())
			if err == nil {
				t.Fatal("request succeeded, want the handshake refused")
			}
		})
	}
	// A host certificate of the cluster (host to host calls) is accepted.
	cert, err := b.HostCertificate(NewNodeID(), "peer", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := NewClient(d.APIAddr().String(), b.ClientTLS(cert)).Health(context.Background()); err != nil {
		t.Errorf("host-to-host call: %v", err)
	}
}

func TestWrongGossipKeyCannotJoin(t *testing.T) {
	b := newBundle(t)
	a := loopbackHost(t, b, "alpha")
	stranger := loopbackHost(t, newBundle(t), "stranger", a.members.Local().Addr)
	time.Sleep(2 * time.Second) // several join attempts and gossip rounds
	for _, d := range []*Daemon{a, stranger} {
		if ms := d.Members(); len(ms) != 1 {
			t.Errorf("%s knows %s, want only itself", d.hostname, summary(ms))
		}
	}
}

func TestNodeIDKeptAndDamageReported(t *testing.T) {
	dir := t.TempDir()
	id, created, err := loadOrCreateNodeID(dir)
	if err != nil || !created {
		t.Fatalf("first load: %q %v %v", id, created, err)
	}
	if err := CheckNodeID(id); err != nil {
		t.Fatal(err)
	}
	again, created, err := loadOrCreateNodeID(dir)
	if err != nil || created || again != id {
		t.Fatalf("second load: %q created=%v %v, want %q kept", again, created, err, id)
	}
	if NewNodeID() == id {
		t.Fatal("two random IDs are equal")
	}
	path := filepath.Join(dir, nodeIDFile)
	if err := os.WriteFile(path, []byte("not an id\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateNodeID(dir); err == nil || !strings.Contains(err.Error(), "remove the file") {
		t.Fatalf("damaged ID file: err = %v, want an error saying how to recover", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "not an id\n" {
		t.Fatal("damaged ID file was overwritten")
	}
}

func TestLocalBundleMadeOnceAndCredentialsFollowIt(t *testing.T) {
	cfg := loopbackConfig(t, "127.0.0.1", "alpha", 0)
	d1, stop1 := runHostStop(t, cfg)
	d2, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d1.bundle.Cluster != localCluster || !d1.bundle.CACert.Equal(d2.bundle.CACert) || d1.ID() != d2.ID() {
		t.Fatal("a second start made a new local bundle or node ID")
	}
	credsPath := filepath.Join(cfg.StateDir, LocalCredentialsFile)
	// hostd writes them just after it reports ready.
	loadCreds := func(ca *x509.Certificate) *bundle.Credentials {
		var creds *bundle.Credentials
		waitFor(t, "local credentials for the bundle's CA", 5*time.Second, func() error {
			c, err := bundle.LoadCredentials(credsPath)
			if err == nil && !c.CACert.Equal(ca) {
				err = errors.New("credentials from another CA")
			}
			creds = c
			return err
		})
		return creds
	}
	creds := loadCreds(d1.bundle.CACert)
	// Root on the host reaches its API with them.
	if err := NewClient(d1.APIAddr().String(), creds.TLS()).Health(context.Background()); err != nil {
		t.Fatalf("local credentials refused: %v", err)
	}
	// Given a cluster bundle later, the local credentials follow it.
	stop1()
	cfg.Bundle = newBundle(t)
	runHost(t, cfg)
	loadCreds(cfg.Bundle.CACert)
}

func TestConfigCheck(t *testing.T) {
	token := "plinth1." + strings.Repeat("0", 64) + "." + strings.Repeat("A", 43)
	for _, tc := range []struct {
		name, want string
		edit       func(*Config)
	}{
		{"join without bundle", "needs the cluster bundle", func(c *Config) { c.Join = []string{"10.0.0.1"} }},
		{"bad bind", "bind address", func(c *Config) { c.BindAddr = "eth0" }},
		{"port range", "ports must be", func(c *Config) { c.APIPort = 70000 }},
		{"probe timeout", "probe timeout", func(c *Config) { c.Gossip.ProbeTimeout = c.Gossip.ProbeInterval }},
		{"no state dir", "state directory", func(c *Config) { c.StateDir = "" }},
		{"same ports", "different ports", func(c *Config) { c.APIPort = c.GossipPort }},
		{"bad CIDR", "not a CIDR", func(c *Config) { c.Advertise = "10.0.0.0/33" }},
		{"role with comma", "role", func(c *Config) { c.Roles = []string{"a,b"} }},
		{"token, API port 0", "API port", func(c *Config) { c.Join, c.JoinToken, c.APIPort = []string{"10.0.0.1"}, token, 0 }},
	} {
		cfg := DefaultConfig()
		tc.edit(&cfg)
		if err := cfg.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one about %q", tc.name, err, tc.want)
		}
	}
	cfg := DefaultConfig()
	if err := cfg.check(); err != nil {
		t.Errorf("default config: %v", err)
	}
	cfg.Join, cfg.JoinToken = []string{"10.0.0.1"}, token
	if err := cfg.check(); err != nil {
		t.Errorf("join token config: %v", err)
	}
}

func TestAddressesDefaultTheirPort(t *testing.T) {
	for addr, want := range map[string]string{
		"10.0.0.1":          "https://10.0.0.1:7947",
		"10.0.0.1:8000":     "https://10.0.0.1:8000",
		"2001:db8::1":       "https://[2001:db8::1]:7947",
		"[2001:db8::1]":     "https://[2001:db8::1]:7947",
		"node1.example.org": "https://node1.example.org:7947",
	} {
		if got := NewClient(addr, nil).base; got != want {
			t.Errorf("NewClient(%q) calls %s, want %s", addr, got, want)
		}
	}
	cfg := DefaultConfig()
	cfg.Join = []string{"10.0.0.1", "[2001:db8::1]", "2001:db8::2", "[2001:db8::3]:8000"}
	seeds, _ := newMembership(cfg, "id", "h", nil, nil).seeds()
	want := []string{"10.0.0.1:7946", "[2001:db8::1]:7946", "[2001:db8::2]:7946", "[2001:db8::3]:8000"}
	if !slices.Equal(seeds, want) {
		t.Errorf("seeds = %v, want %v", seeds, want)
	}
}
