package httpproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/services/router/backend"
)

// benchBackendEnv makes the test binary the benchmark's backend: a
// process of its own, so that it does not share the proxy's Go
// scheduler, the same for nginx and plinth.
const benchBackendEnv = "PLINTH_HTTPPROXY_BENCH_BACKEND"

func TestMain(m *testing.M) {
	if addr := os.Getenv(benchBackendEnv); addr != "" {
		serveBenchBackend(addr)
		return
	}
	os.Exit(m.Run())
}

var helloBody = []byte("Hello, World!\n")

func serveBenchBackend(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("listening", ln.Addr())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(helloBody)))
		w.Write(helloBody)
	})}
	srv.Serve(ln)
}

// startProcess starts cmd, stops it with the test and returns its first
// stdout line.
func startProcess(b *testing.B, cmd *exec.Cmd) {
	b.Helper()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", cmd.Path, err)
	}
	pid := cmd.Process.Pid
	b.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(pid, syscall.SIGKILL)
			<-done
		}
	})
}

// waitListening waits until addr accepts connections.
func waitListening(b *testing.B, addr string) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s does not listen: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func freeAddr(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

const nginxConf = `worker_processes auto;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	upstream app { server %[2]s; keepalive 128; }
	server {
		listen %[3]s;
		location / {
			proxy_pass http://app;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host $host;
			proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
			proxy_set_header X-Forwarded-Proto $scheme;
			proxy_set_header X-Forwarded-Host $host;
			proxy_set_header X-Forwarded-Port $server_port;
			proxy_set_header X-Request-Id $request_id;
			add_header X-Request-Id $request_id;
		}
	}
}
`

// BenchmarkHTTPvsNginx compares plinth's HTTP/1.1 proxy with nginx as a
// production reverse proxy (upstream keep-alive, the same forwarding
// headers and request ID), access logs off for both, in front of the
// same backend process: wrk with keep-alive, alternating rounds.
func BenchmarkHTTPvsNginx(b *testing.B) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		nginx = "/usr/sbin/nginx"
		if _, err := os.Stat(nginx); err != nil {
			b.Skip("nginx is not installed")
		}
	}
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed")
	}
	flock, err := exec.LookPath("flock")
	if err != nil {
		b.Skip("flock is not installed")
	}
	dir := b.TempDir()

	backendAddr := freeAddr(b)
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	be := exec.Command(self)
	be.Env = append(os.Environ(), benchBackendEnv+"="+backendAddr)
	startProcess(b, be)
	waitListening(b, backendAddr)

	nginxAddr := freeAddr(b)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, dir, backendAddr, nginxAddr), 0o644); err != nil {
		b.Fatal(err)
	}
	startProcess(b, exec.Command(nginx, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")))
	waitListening(b, nginxAddr)

	p := &Server{Backends: &backend.Sets{}}
	p.Backends.Replace(map[string]*backend.Set{"app": {Service: "app", Backends: []*backend.Backend{{ID: "app/0", Addr: backendAddr}}}})
	tab, err := NewTable([]Route{{ID: "app", Domain: "app.example.com", Service: "app"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	p.SetTable(tab)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go p.ServeHTTP1(ln)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})

	duration := os.Getenv("PLINTH_BENCH_DURATION")
	if duration == "" {
		duration = "5s"
	}
	run := func(addr, d string) wrkResult {
		out, err := exec.Command(flock, "/tmp/plinth-bench.lock", wrk, "-t1", "-c50", "-d"+d, "--latency",
			"-H", "Host: app.example.com", "http://"+addr+"/").CombinedOutput()
		if err != nil {
			b.Fatalf("wrk: %v\n%s", err, out)
		}
		r, err := parseWrk(string(out))
		if err != nil {
			b.Fatalf("wrk output: %v\n%s", err, out)
		}
		return r
	}
	// Warm both up: connections, pools, JIT-free but cache-warm.
	run(nginxAddr, "1s")
	run(ln.Addr().String(), "1s")

	var ng, pl []wrkResult
	for range b.N * 3 {
		ng = append(ng, run(nginxAddr, duration))
		pl = append(pl, run(ln.Addr().String(), duration))
	}
	for i := range ng {
		fmt.Printf("round %d: nginx %.0f req/s p99 %.2fms, plinth %.0f req/s p99 %.2fms\n", i+1, ng[i].rps, ng[i].p99ms(), pl[i].rps, pl[i].p99ms())
	}
	nr, pr := median(ng, wrkResult.reqs), median(pl, wrkResult.reqs)
	np, pp := median(ng, wrkResult.p99ms), median(pl, wrkResult.p99ms)
	fmt.Printf("bench http nginx=%.0f plinth=%.0f ratio=%.2f p99 nginx=%.2fms plinth=%.2fms ratio=%.2f (medians of %d rounds, wrk -t1 -c50 -d%s, access logs off)\n",
		nr, pr, pr/nr, np, pp, pp/np, len(ng), duration)
	b.ReportMetric(pr, "plinth-req/s")
	b.ReportMetric(nr, "nginx-req/s")
	b.ReportMetric(pr/nr, "req/s-ratio")
	b.ReportMetric(pp/np, "p99-ratio")
}

type wrkResult struct {
	rps float64
	p99 time.Duration
}

func (r wrkResult) reqs() float64  { return r.rps }
func (r wrkResult) p99ms() float64 { return float64(r.p99) / float64(time.Millisecond) }

func median(rs []wrkResult, f func(wrkResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	for i := range v {
		for j := i + 1; j < len(v); j++ {
			if v[j] < v[i] {
				v[i], v[j] = v[j], v[i]
			}
		}
	}
	return v[len(v)/2]
}

var (
	wrkRPS = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkP99 = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)`)
	wrkErr = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`)
)

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	if m := wrkErr.FindString(out); m != "" {
		return r, fmt.Errorf("wrk saw errors: %s", m)
	}
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no Requests/sec")
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	m = wrkP99.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no 99%% latency")
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[2]]
	r.p99 = time.Duration(v * float64(unit))
	return r, nil
}

// BenchmarkProxy measures one request's cost through the proxy, for
// profiles and allocation counts, from a Go client on one connection.
func BenchmarkProxy(b *testing.B) {
	be := newBackend(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(helloBody)))
		w.Write(helloBody)
	}))
	p := newProxy(b, []Route{{ID: "app", Domain: "app.example.com", Service: "app"}}, map[string][]string{"app": {be.addr()}})
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	req := []byte("GET / HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
