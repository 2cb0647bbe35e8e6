package host

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/bundle"
)

// freePort returns a TCP port free on 127.0.0.1 and 127.0.0.2.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// runHost runs cfg's hostd until the test ends.
func runHost(t testing.TB, cfg Config) *Daemon {
	t.Helper()
	d, _ := runHostStop(t, cfg)
	return d
}

// runHostStop runs cfg's hostd until the test ends or stop is called.
func runHostStop(t testing.TB, cfg Config) (d *Daemon, stop func()) {
	t.Helper()
	d, err := New(cfg, Options{Log: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	d.opts.Ready = func() { close(ready) }
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("hostd %s: %v", cfg.Hostname, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("hostd %s not ready within 30s", cfg.Hostname)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("hostd %s: %v", cfg.Hostname, err)
			}
		})
	}
	t.Cleanup(stop)
	return d, stop
}

// loopbackConfig is a hostd on its own loopback address with the given API
// port: hosts that fetch a bundle find the seed's API at their own port.
func loopbackConfig(t testing.TB, ip, hostname string, apiPort int) Config {
	cfg := DefaultConfig()
	cfg.StateDir, cfg.RunDir = t.TempDir(), t.TempDir()
	cfg.ContainerNetwork = false // in the test's own network namespace only
	cfg.Hostname = hostname
	cfg.Advertise, cfg.BindAddr, cfg.APIBind = ip, ip, ip
	cfg.GossipPort, cfg.APIPort = 0, apiPort
	return cfg
}

func TestJoinWithTokenFetchesAndKeepsBundle(t *testing.T) {
	b := newBundle(t)
	port := freePort(t)
	seedCfg := loopbackConfig(t, "127.0.0.1", "seed", port)
	seedCfg.Bundle = b
	seed := runHost(t, seedCfg)

	cfg := loopbackConfig(t, "127.0.0.2", "joiner", port)
	cfg.JoinToken = b.JoinToken
	cfg.Join = []string{seed.members.Local().Addr}
	joiner := runHost(t, cfg)
	if !joiner.bundle.CACert.Equal(b.CACert) || string(joiner.bundle.SerfKey) != string(b.SerfKey) {
		t.Fatal("the joiner runs with another bundle than the seed's")
	}
	waitFor(t, "both hosts see each other", 10*time.Second, func() error {
		for _, d := range []*Daemon{seed, joiner} {
			if ms := d.Members(); len(ms) != 2 || ms[0].Status != StatusAlive || ms[1].Status != StatusAlive {
				return errors.New(d.hostname + " sees " + summary(ms))
			}
		}
		return nil
	})

	// The next start needs no seed: the bundle was kept.
	again := cfg
	again.Join = []string{"127.0.0.9:1"}
	d, err := New(again, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d.bundle == nil || !d.bundle.CACert.Equal(b.CACert) {
		t.Fatal("the fetched bundle was not kept in the state directory")
	}
}

func TestBundleEndpointWantsTheToken(t *testing.T) {
	b := newBundle(t)
	port := freePort(t)
	seedCfg := loopbackConfig(t, "127.0.0.1", "seed", port)
	seedCfg.Bundle = b
	seed := runHost(t, seedCfg)
	addr := seed.APIAddr().String()

	// Right CA, wrong secret: the TLS pin passes, the seed refuses.
	caHash := strings.Split(b.JoinToken, ".")[1]
	forged := "plinth1." + caHash + "." + strings.Split(newBundle(t).JoinToken, ".")[2]
	conf, err := bundle.TokenTLS(forged)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
	if _, err := fetchFrom(context.Background(), client, addr, forged); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("forged secret: err = %v, want 403", err)
	}
	// Another cluster's token: the TLS pin fails before any secret is sent.
	other := newBundle(t).JoinToken
	conf, _ = bundle.TokenTLS(other)
	client = &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
	if _, err := fetchFrom(context.Background(), client, addr, other); err == nil || !strings.Contains(err.Error(), "not the one the join token names") {
		t.Errorf("another cluster's token: err = %v, want the CA pin to fail", err)
	}
	// The right token gets the bundle.
	conf, _ = bundle.TokenTLS(b.JoinToken)
	client = &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
	got, err := fetchFrom(context.Background(), client, addr, b.JoinToken)
	if err != nil || !got.CACert.Equal(b.CACert) {
		t.Fatalf("right token: %v", err)
	}
	// Without a client certificate, nothing else is served.
	noCert := NewClient(addr, bundle.ClientTLS(b.CACert, tls.Certificate{}))
	var apiErr *APIError
	if _, err := noCert.Members(context.Background()); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized {
		t.Errorf("members without a client certificate: err = %v, want 401", err)
	}
}
