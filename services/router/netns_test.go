package router_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/router"
)

func TestMain(m *testing.M) { platformtest.Main(m) }

// Ports of the echo backends, on each host's address.
const (
	webPort = 18080
	apiPort = 18081
	tcpPort = 19000
	udpPort = 19001
)

// echoFormation runs echoback on n hosts with the services the routes
// point at: web and api (HTTP), echo (TCP) and echo-udp (UDP). Checks
// are quick, so a killed instance leaves the sets within a second or
// two.
func echoFormation(bin string, n int) controller.Formation {
	quick := &job.Check{Type: job.CheckTCP, Interval: job.Duration{Duration: 500 * time.Millisecond}, Timeout: job.Duration{Duration: 400 * time.Millisecond}}
	return controller.Formation{Name: "echo", Count: n, Job: job.Spec{
		Rootfs: job.SystemRootfs, Network: job.NetworkHost,
		Cmd: []string{bin, "--http", fmt.Sprintf(":%d", webPort), "--api", fmt.Sprintf(":%d", apiPort),
			"--tcp", fmt.Sprintf(":%d", tcpPort), "--udp", fmt.Sprintf(":%d", udpPort)},
		Services: []job.Service{
			{Name: "web", Port: webPort, Check: quick},
			{Name: "api", Port: apiPort, Check: quick},
			{Name: "echo", Port: tcpPort, Check: quick},
			{Name: "echo-udp", Port: udpPort, Proto: "udp"},
		},
	}}
}

// TestRouterOnEveryHost runs the platform on three hosts with a router
// on each, and checks every kind of route through every host's router:
// HTTP by host and path, HTTP/2 over TLS with the route's certificate, a
// websocket-style upgrade, TCP echo, TLS-terminated TCP and UDP echo with
// affinity. Then, under a bounded load, an instance is killed (no failed
// requests beyond those in flight to it) and a route is added and
// removed (the others unaffected); an instance is drained while a slow
// request is in flight on it; bad routes are refused and a port a host
// already uses is reported, not fatal.
func TestRouterOnEveryHost(t *testing.T) {
	p := platformtest.New(t, "plrt", "10.75.0", 3)
	p.Bootstrap(3 * time.Minute)
	p.WaitHealthy(2*time.Minute, formationRuns("router", 3))
	cl := p.Controllers()
	if _, err := cl.PutFormation(testwait.Ctx(t, 5*time.Second), echoFormation(platformtest.Echoback(t), 3), nil); err != nil {
		t.Fatal(err)
	}
	p.WaitHealthy(time.Minute, formationRuns("echo", 3))

	dir := t.TempDir()
	certFile, keyFile, pool := writeCert(t, dir, "app.test")
	cli := func(args ...string) string {
		t.Helper()
		out, err := p.CLI(testwait.Ctx(t, 30*time.Second), args...)
		if err != nil {
			t.Fatalf("plinth %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	routeID := regexp.MustCompile(`route (\S+):`)
	cli("routes", "add", "http", "app.test", "--service", "web", "--tls-cert", certFile, "--tls-key", keyFile)
	cli("routes", "add", "http", "app.test/api", "--service", "api")
	cli("routes", "add", "http", "*.wild.test", "--service", "api", "--sticky")
	tcpOut := cli("routes", "add", "tcp", "--service", "echo")
	tcpRoute, err := cl.Route(testwait.Ctx(t, 5*time.Second), routeID.FindStringSubmatch(tcpOut)[1], controller.QueryOptions{Consistent: true})
	if err != nil {
		t.Fatal(err)
	}
	cli("routes", "add", "tcp", "--service", "echo", "--port", "19443", "--tls", "--tls-cert", certFile, "--tls-key", keyFile)
	cli("routes", "add", "udp", "--service", "echo-udp", "--port", "19053-19054")

	// Bad routes: a clear error, and nothing changes.
	before, _, _ := cl.Routes(testwait.Ctx(t, 5*time.Second), controller.QueryOptions{Consistent: true})
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"routes", "add", "tcp", "--service", "echo", "--port", fmt.Sprint(tcpRoute.Port)}, "is route " + tcpRoute.ID},
		{[]string{"routes", "add", "http", "app.test", "--service", "nosuch"}, `no service "nosuch"`},
		{[]string{"routes", "add", "http", "other.test", "--service", "web", "--tls-cert", certFile, "--tls-key", keyFile}, "certificate is for app.test, not other.test"},
		{[]string{"routes", "add", "udp", "--service", "echo-udp", "--port", "19054-19060"}, "overlap"},
		{[]string{"routes", "add", "tcp", "--service", "echo", "--port", "7947"}, "platform's own"},
	} {
		out, err := p.CLI(testwait.Ctx(t, 30*time.Second), bad.args...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("plinth %s: %v, want an error with %q:\n%s", strings.Join(bad.args, " "), err, bad.want, out)
		}
	}
	if after, _, _ := cl.Routes(testwait.Ctx(t, 5*time.Second), controller.QueryOptions{Consistent: true}); len(after) != len(before) {
		t.Fatalf("refused routes changed the table: %d routes, had %d", len(after), len(before))
	}

	dial := p.Seg.DialContext(p.Client)
	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 16}}
	var h2only http.Protocols
	h2only.SetHTTP2(true)
	h2c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Protocols:       &h2only,
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "app.test"},
		DialContext:     dial,
	}}

	for _, h := range p.Hosts {
		addr := h.NS.Addr
		testwait.For(t, "routes served on "+h.NS.Name, time.Minute, func() error {
			body, err := get(httpc, "http://"+addr+"/", "app.test")
			if err != nil || !strings.HasPrefix(body, "web ") {
				return fmt.Errorf("GET app.test/: %q %v", body, err)
			}
			return nil
		})
		if body, err := get(httpc, "http://"+addr+"/api/v1", "app.test"); err != nil || !strings.HasPrefix(body, "api ") || !strings.HasSuffix(body, " /api/v1\n") {
			t.Errorf("%s: GET app.test/api/v1: %q %v", h.NS.Name, body, err)
		}
		if body, err := get(httpc, "http://"+addr+"/", "x.wild.test"); err != nil || !strings.HasPrefix(body, "api ") {
			t.Errorf("%s: GET x.wild.test/: %q %v", h.NS.Name, body, err)
		}
		if body, err := get(httpc, "http://"+addr+"/", "nosuch.test"); err == nil || !strings.Contains(err.Error(), "404") {
			t.Errorf("%s: GET nosuch.test: %q %v, want 404", h.NS.Name, body, err)
		}
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/h2", nil)
		req.Host = "app.test"
		resp, err := h2c.Do(req)
		if err != nil {
			t.Fatalf("%s: h2 over TLS: %v", h.NS.Name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Proto != "HTTP/2.0" || !strings.HasPrefix(string(b), "web ") || resp.Header.Get("X-Seen-Forwarded-Proto") != "https" {
			t.Errorf("%s: h2: proto %s body %q forwarded proto %q", h.NS.Name, resp.Proto, b, resp.Header.Get("X-Seen-Forwarded-Proto"))
		}
		upgradeEcho(t, dial, addr)
		tcpEcho(t, dial, net.JoinHostPort(addr, fmt.Sprint(tcpRoute.Port)), nil)
		tcpEcho(t, dial, net.JoinHostPort(addr, "19443"), &tls.Config{RootCAs: pool, ServerName: "app.test"})
		udpAffinity(t, dial, net.JoinHostPort(addr, "19054"))
	}

	// Sticky sessions hold across hosts' routers: the cookie is signed
	// with the cluster's key. The client sends the first router's cookie
	// to the others by hand (a cookie jar keys it by each router's IP).
	var cookie *http.Cookie
	first := ""
	for i := range 6 {
		h := p.Hosts[i%len(p.Hosts)]
		req, _ := http.NewRequest(http.MethodGet, "http://"+h.NS.Addr+"/", nil)
		req.Host = "s.wild.test"
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := httpc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if cookie == nil {
			if cs := resp.Cookies(); len(cs) == 1 {
				cookie = cs[0]
			} else {
				t.Fatalf("sticky route's first response set cookies %v", resp.Header["Set-Cookie"])
			}
			first = string(body)
		} else if string(body) != first {
			t.Errorf("sticky request %d through %s: %q, want the first one's instance %q", i, h.NS.Name, body, first)
		}
	}

	// The cluster's default certificate, for HTTPS routes without one.
	wildCert, wildKey, wildPool := writeCert(t, dir, "*.wild.test")
	cli("routes", "default-cert", "--tls-cert", wildCert, "--tls-key", wildKey)
	wild := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial,
		TLSClientConfig: &tls.Config{RootCAs: wildPool, ServerName: "x.wild.test"}}}
	testwait.For(t, "the default certificate served", 30*time.Second, func() error {
		_, err := get(wild, "https://"+p.Hosts[1].NS.Addr+"/", "x.wild.test")
		return err
	})

	// Under load through one router, an instance is killed.
	front := "http://" + p.Hosts[0].NS.Addr + "/"
	load := startLoad(httpc, front, "app.test", 4)
	time.Sleep(500 * time.Millisecond)
	victim := p.Hosts[2]
	jobs, err := p.HostClient(victim).Jobs(testwait.Ctx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var victimJob string
	for _, j := range jobs {
		if j.Spec.Tags[controller.FormationTag] == "echo" {
			victimJob = j.Spec.ID
		}
	}
	if _, err := p.HostClient(victim).StopJob(testwait.Ctx(t, 10*time.Second), victimJob, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the check notices, the sets change, the scheduler replaces it
	ok, failed, errs := load.stop()
	t.Logf("load with an instance killed: %d requests, %d failed %v", ok+failed, failed, errs)
	if ok < 50 {
		t.Errorf("only %d requests succeeded under load", ok)
	}
	if failed > 4 {
		t.Errorf("%d requests failed, more than the 4 that can be in flight to the killed instance: %v", failed, errs)
	}
	p.WaitHealthy(time.Minute, formationRuns("echo", 3))

	// Under load, with a TCP connection open, a route is added and
	// removed: neither the requests nor the connection notice.
	open, err := dial(testwait.Ctx(t, 5*time.Second), "tcp", net.JoinHostPort(p.Hosts[0].NS.Addr, fmt.Sprint(tcpRoute.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	openr := bufio.NewReader(open)
	echoOpen := func(msg string) {
		t.Helper()
		open.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintln(open, msg)
		if got, err := openr.ReadString('\n'); err != nil || got != msg+"\n" {
			t.Fatalf("open tcp connection: %q %v, want %q", got, err, msg)
		}
	}
	echoOpen("before")
	load = startLoad(httpc, front, "app.test", 4)
	time.Sleep(500 * time.Millisecond)
	added := routeID.FindStringSubmatch(cli("routes", "add", "tcp", "--service", "echo", "--port", "19600"))[1]
	addedAddr := net.JoinHostPort(p.Hosts[0].NS.Addr, "19600")
	testwait.For(t, "the added route served", 30*time.Second, func() error { return tcpEchoErr(dial, addedAddr, nil) })
	// A connection through the route being removed runs on after it.
	through, err := dial(testwait.Ctx(t, 5*time.Second), "tcp", addedAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer through.Close()
	cli("routes", "remove", added)
	testwait.For(t, "the removed route's port closed", 30*time.Second, func() error {
		if c, err := dial(testwait.Ctx(t, 5*time.Second), "tcp", addedAddr); err == nil {
			c.Close()
			return fmt.Errorf("%s still accepts", addedAddr)
		}
		return nil
	})
	through.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(through, "still here")
	if got, err := bufio.NewReader(through).ReadString('\n'); err != nil || got != "still here\n" {
		t.Errorf("a connection through a removed route: %q %v", got, err)
	}
	ok, failed, errs = load.stop()
	t.Logf("load with a route added and removed: %d requests, %d failed %v", ok+failed, failed, errs)
	if ok < 50 || failed > 0 {
		t.Errorf("a route added and removed: %d requests succeeded, %d failed %v", ok, failed, errs)
	}
	echoOpen("after")

	// Drain: a slow request in flight on an instance; the drain waits
	// for it, and reports zero.
	var slowBody string
	var slowErr error
	var slowDone sync.WaitGroup
	slowDone.Go(func() { slowBody, slowErr = get(httpc, front+"slow?ms=2000", "app.test") })
	var instance string
	testwait.For(t, "the slow request counted by the router", 5*time.Second, func() error {
		st, err := routerAPI(p, p.Hosts[0]).Status(testwait.Ctx(t, 5*time.Second))
		if err != nil {
			return err
		}
		for _, b := range st.Backends {
			if b.Active > 0 && strings.HasSuffix(b.ID, "/web") {
				instance = b.ID
				return nil
			}
		}
		return fmt.Errorf("no backend has work in flight: %+v", st.Backends)
	})
	start := time.Now()
	out := cli("routes", "drain", instance, "--timeout", "20s")
	took := time.Since(start)
	slowDone.Wait()
	if slowErr != nil || !strings.HasSuffix(slowBody, "/slow\n") {
		t.Errorf("the slow request during the drain: %q %v", slowBody, slowErr)
	}
	if !strings.Contains(out, " drained in ") || took < 500*time.Millisecond {
		t.Errorf("drain took %s: %s", took, out)
	}
	t.Logf("drain: %s", strings.TrimSpace(out))
	st, err := routerAPI(p, p.Hosts[0]).Status(testwait.Ctx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range st.Backends {
		if b.ID == instance && (b.Serving || b.Active != 0) {
			t.Errorf("drained instance %s: serving %v, active %d", b.ID, b.Serving, b.Active)
		}
	}
	drainedAddr := ""
	is, _, err := cl.Instances(testwait.Ctx(t, 5*time.Second), controller.QueryOptions{Consistent: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range is {
		if i.ID == instance {
			drainedAddr = i.Addr
			if !i.Draining {
				t.Errorf("instance %s is not draining at the controller", instance)
			}
		}
	}
	if drainedAddr == "" {
		t.Fatalf("no instance %s at the controller", instance)
	}
	// The drained instance gets no new request (echoback answers with
	// the address it was reached at).
	for range 20 {
		if body, err := get(httpc, front+"after-drain", "app.test"); err != nil || strings.Contains(body, " "+drainedAddr+" ") {
			t.Errorf("after the drain of %s (%s): %q %v", instance, drainedAddr, body, err)
		}
	}

	cli("routes", "undrain", instance)

	// Scale down under slow requests: the scheduler drains the instance
	// it removes before it stops it, so none of them fails.
	api := routerAPI(p, p.Hosts[0])
	testwait.For(t, "three web instances serving", 10*time.Second, func() error {
		st, err := api.Status(testwait.Ctx(t, 5*time.Second))
		if err != nil {
			return err
		}
		n := 0
		for _, b := range st.Backends {
			if b.Serving && strings.HasSuffix(b.ID, "/web") {
				n++
			}
		}
		if n != 3 {
			return fmt.Errorf("%d web instances serving", n)
		}
		return nil
	})
	slowErrs := make([]error, 6)
	var slow sync.WaitGroup
	for i := range slowErrs {
		slow.Go(func() { _, slowErrs[i] = get(httpc, front+"slow?ms=4000", "app.test") })
	}
	testwait.For(t, "six slow requests in flight", 3*time.Second, func() error {
		st, err := api.Status(testwait.Ctx(t, 5*time.Second))
		if err != nil {
			return err
		}
		var n int64
		for _, b := range st.Backends {
			if strings.HasSuffix(b.ID, "/web") {
				n += b.Active
			}
		}
		if n != 6 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
	cli("formations", "scale", "echo", "2")
	slow.Wait()
	for i, err := range slowErrs {
		if err != nil {
			t.Errorf("slow request %d during the scale-down: %v", i, err)
		}
	}
	p.WaitHealthy(time.Minute, formationRuns("echo", 2))

	// A port a host already uses: the route is kept, the host's router
	// says why it cannot serve it, and serves it once the port is free.
	holder := p.Seg.Command(p.Hosts[1].NS, "/bin/busybox", "nc", "-l", "-p", "19500")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	testwait.For(t, "nc holding the port", 10*time.Second, func() error {
		out, err := p.Seg.Command(p.Hosts[1].NS, "ss", "-Hltn", "sport = :19500").Output()
		if err != nil || !strings.Contains(string(out), "19500") {
			return fmt.Errorf("ss: %q %v", out, err)
		}
		return nil
	})
	busy := routeID.FindStringSubmatch(cli("routes", "add", "tcp", "--service", "echo", "--port", "19500"))[1]
	testwait.For(t, "the busy port reported", 30*time.Second, func() error {
		if out := cli("routes", "list"); !regexp.MustCompile(busy + `.*` + p.Hosts[1].NS.Name + `.*address already in use`).MatchString(out) {
			return fmt.Errorf("routes list:\n%s", out)
		}
		return nil
	})
	holder.Process.Kill()
	holder.Wait()
	testwait.For(t, "the freed port served", 30*time.Second, func() error {
		return tcpEchoErr(dial, net.JoinHostPort(p.Hosts[1].NS.Addr, "19500"), nil)
	})
}

// routerAPI is a client of h's router API from the client namespace.
func routerAPI(p *platformtest.Platform, h *platformtest.Host) *router.Client {
	return router.NewClientTransport(net.JoinHostPort(h.NS.Addr, fmt.Sprint(controller.RouterAPIPort)),
		&http.Transport{TLSClientConfig: p.Creds.TLS(), DialContext: p.Seg.DialContext(p.Client)})
}

// formationRuns checks that formation name runs want instances.
func formationRuns(name string, want int) func(platformtest.Status) error {
	return func(st platformtest.Status) error {
		for _, f := range st.Formations {
			if f.Name == name {
				if f.Running != want {
					return fmt.Errorf("formation %s runs %d of %d", name, f.Running, want)
				}
				return nil
			}
		}
		return fmt.Errorf("no formation %s", name)
	}
}

func get(c *http.Client, url, host string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("%s: %s", resp.Status, b)
	}
	return string(b), nil
}

// upgradeEcho sends an HTTP upgrade through the router at addr and
// checks that bytes written after the 101 come back.
func upgradeEcho(t *testing.T, dial func(context.Context, string, string) (net.Conn, error), addr string) {
	t.Helper()
	c, err := dial(testwait.Ctx(t, 5*time.Second), "tcp", net.JoinHostPort(addr, "80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(c, "GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, " 101 ") {
		t.Fatalf("%s: upgrade: %q %v", addr, status, err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	for i := range 3 {
		msg := fmt.Sprintf("frame %d\n", i)
		fmt.Fprint(c, msg)
		if got, err := br.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("%s: upgraded echo: %q %v, want %q", addr, got, err, msg)
		}
	}
}

func tcpEcho(t *testing.T, dial func(context.Context, string, string) (net.Conn, error), addr string, cfg *tls.Config) {
	t.Helper()
	if err := tcpEchoErr(dial, addr, cfg); err != nil {
		t.Fatal(err)
	}
}

func tcpEchoErr(dial func(context.Context, string, string) (net.Conn, error), addr string, cfg *tls.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("tcp %s: %w", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if cfg != nil {
		tc := tls.Client(c, cfg)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("tls %s: %w", addr, err)
		}
		c = tc
	}
	msg := "hello through " + addr + "\n"
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg {
		return fmt.Errorf("tcp echo %s: %q %v", addr, got, err)
	}
	return nil
}

// udpAffinity sends datagrams from two client sockets and checks that
// each gets every reply from one backend.
func udpAffinity(t *testing.T, dial func(context.Context, string, string) (net.Conn, error), addr string) {
	t.Helper()
	for client := range 2 {
		c, err := dial(testwait.Ctx(t, 5*time.Second), "udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		backend := ""
		buf := make([]byte, 2048)
		for i := range 10 {
			msg := fmt.Sprintf("c%d-%d", client, i)
			var n int
			// UDP may lose a datagram; each is asked again a few times.
			for try := 0; ; try++ {
				c.Write([]byte(msg))
				c.SetReadDeadline(time.Now().Add(time.Second))
				if n, err = c.Read(buf); err == nil || try == 4 {
					break
				}
			}
			if err != nil {
				t.Fatalf("%s: udp %s: %v", addr, msg, err)
			}
			name, payload, _ := strings.Cut(string(buf[:n]), " ")
			if payload != msg {
				t.Fatalf("%s: udp reply %q to %q", addr, buf[:n], msg)
			}
			if backend == "" {
				backend = name
			} else if name != backend {
				t.Fatalf("%s: udp client %d moved from %s to %s", addr, client, backend, name)
			}
		}
	}
}

// load is a bounded loop of GETs by a few workers.
type load struct {
	stopped atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	ok      int
	failed  int
	errs    []string
}

func startLoad(c *http.Client, url, host string, workers int) *load {
	l := &load{}
	deadline := time.Now().Add(2 * time.Minute) // bounded even if stop is never called
	for range workers {
		l.wg.Go(func() {
			for !l.stopped.Load() && time.Now().Before(deadline) {
				_, err := get(c, url, host)
				l.mu.Lock()
				if err != nil {
					l.failed++
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err.Error())
					}
				} else {
					l.ok++
				}
				l.mu.Unlock()
			}
		})
	}
	return l
}

func (l *load) stop() (ok, failed int, errs []string) {
	l.stopped.Store(true)
	l.wg.Wait()
	return l.ok, l.failed, l.errs
}

// writeCert writes a self-signed certificate for name and its key into
// dir, and returns their paths and a pool that trusts it.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
