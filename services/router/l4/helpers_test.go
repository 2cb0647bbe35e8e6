package l4

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/services/router/backend"
)

// testTimeout bounds every wait in the tests, so that a bug fails a test
// instead of hanging it.
const testTimeout = 10 * time.Second

// newSets returns sets holding one set per service, each with backends
// at the given addresses; backend i of service s has ID "s/i".
func newSets(services map[string][]string) (*backend.Sets, map[string][]*backend.Backend) {
	var pool backend.Pool
	m := map[string]*backend.Set{}
	all := map[string][]*backend.Backend{}
	for svc, addrs := range services {
		set := &backend.Set{Service: svc}
		for i, a := range addrs {
			set.Backends = append(set.Backends, pool.Get(svc+"/"+string(rune('0'+i)), a))
		}
		m[svc] = set
		all[svc] = set.Backends
	}
	var sets backend.Sets
	sets.Replace(m)
	return &sets, all
}

// serveTCP runs handle for every connection to a new loopback listener
// until the test ends.
func serveTCP(t testing.TB, handle func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return ln.Addr().String()
}

// echo sends back what it reads, and half-closes when the client did.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startTCP serves p on a new listener at addr until the test ends.
func startTCP(t testing.TB, p *TCPProxy, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		p.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	})
	return ln.Addr().String()
}

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip writes msg and reads as many bytes back.
func roundTrip(t testing.TB, c net.Conn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(buf)
}

// shutdown waits for every connection p handles to end, which is when
// their backends' counts are released.
func shutdown(t testing.TB, p *TCPProxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v (a connection did not end)", err)
	}
}

func wantActive(t testing.TB, want int64, bs ...*backend.Backend) {
	t.Helper()
	for _, b := range bs {
		if got := b.Active(); got != want {
			t.Errorf("backend %s: %d active, want %d", b.ID, got, want)
		}
	}
}

// eventually polls cond until it holds or testTimeout passes: for what
// the proxy does on a timer (idle expiry).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, testTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
