package httpproxy

import (
	"bufio"
	"bytes"
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
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/services/router/accesslog"
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

// startProcess starts cmd and stops it with the benchmark.
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
	%[4]s
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

// nginxAccessLog is a production access log: the combined format with
// the fields plinth's line has besides (host, duration, backend,
// request ID), buffered and flushed every second.
const nginxAccessLog = `log_format main '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
		'"$http_referer" "$http_user_agent" host=$host rt=$request_time upstream=$upstream_addr rid=$request_id';
	access_log %[1]s/access.log main buffer=64k flush=1s;`

// startNginx starts nginx in dir in front of backendAddr, with the
// access log directive accessLog; it returns nginx's address and the
// CPU time its processes used so far.
func startNginx(b *testing.B, nginx, dir, backendAddr, accessLog string) (string, func() time.Duration) {
	b.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	addr := freeAddr(b)
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, dir, backendAddr, addr, accessLog), 0o644); err != nil {
		b.Fatal(err)
	}
	ngx := exec.Command(nginx, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	startProcess(b, ngx)
	waitListening(b, addr)
	return addr, func() time.Duration { return treeCPU(ngx.Process.Pid) }
}

// startPlinth serves the benchmark's route from backendAddr; it returns
// the server's address.
func startPlinth(b *testing.B, backendAddr string, accessLog func(AccessEntry)) string {
	b.Helper()
	p := &Server{Backends: &backend.Sets{}, AccessLog: accessLog}
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
	return ln.Addr().String()
}

// BenchmarkHTTPvsNginx compares plinth's HTTP/1.1 proxy with nginx as a
// production reverse proxy (upstream keep-alive, the same forwarding
// headers and request ID) in front of the same backend process: wrk
// with keep-alive, alternating rounds, access logs off for both, then
// on for both (nginx's buffered log, plinth's the router's accesslog
// Writer, each to a file).
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

	nginxOff, nginxOffCPU := startNginx(b, nginx, filepath.Join(dir, "nginx-off"), backendAddr, "access_log off;")
	nginxLogDir := filepath.Join(dir, "nginx-on")
	nginxOn, nginxOnCPU := startNginx(b, nginx, nginxLogDir, backendAddr, fmt.Sprintf(nginxAccessLog, nginxLogDir))
	plinthCPU := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	plinthOff := startPlinth(b, backendAddr, nil)
	logFile, err := os.Create(filepath.Join(dir, "plinth-access.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	alog := accesslog.New(accesslog.Config{Out: logFile})
	defer alog.Close()
	plinthOn := startPlinth(b, backendAddr, func(e AccessEntry) { alog.Log(accesslog.Entry(e)) })

	duration := os.Getenv("PLINTH_BENCH_DURATION")
	if duration == "" {
		duration = "5s"
	}
	run := func(addr, d string, cpu func() time.Duration) wrkResult {
		before := cpu()
		out, err := exec.Command(wrk, "-t1", "-c50", "-d"+d, "--latency", "-H", "Host: app.example.com", "http://"+addr+"/").CombinedOutput()
		if err != nil {
			b.Fatalf("wrk: %v\n%s", err, out)
		}
		used := cpu() - before
		r, err := parseWrk(string(out))
		if err != nil {
			b.Fatalf("wrk output: %v\n%s", err, out)
		}
		r.cpuPerReq = used / time.Duration(max(r.requests, 1))
		return r
	}
	// Warm them up: connections and pools.
	run(nginxOff, "1s", nginxOffCPU)
	run(plinthOff, "1s", plinthCPU)
	run(nginxOn, "1s", nginxOnCPU)
	run(plinthOn, "1s", plinthCPU)

	var ngOff, plOff, ngOn, plOn []wrkResult
	for range b.N * 3 {
		ngOff = append(ngOff, run(nginxOff, duration, nginxOffCPU))
		plOff = append(plOff, run(plinthOff, duration, plinthCPU))
		ngOn = append(ngOn, run(nginxOn, duration, nginxOnCPU))
		plOn = append(plOn, run(plinthOn, duration, plinthCPU))
	}
	alog.Close()
	lines, dropped := countAccessLines(b, logFile.Name())
	for i := range ngOff {
		fmt.Printf("round %d logs off: nginx %s, plinth %s; logs on: nginx %s, plinth %s\n",
			i+1, ngOff[i], plOff[i], ngOn[i], plOn[i])
	}
	report := func(line, metric, logs string, ng, pl []wrkResult) {
		nr, pr := median(ng, wrkResult.reqs), median(pl, wrkResult.reqs)
		np, pp := median(ng, wrkResult.p99ms), median(pl, wrkResult.p99ms)
		nc, pc := median(ng, wrkResult.cpuUs), median(pl, wrkResult.cpuUs)
		fmt.Printf("bench http %snginx=%.0f plinth=%.0f ratio=%.2f p99 nginx=%.2fms plinth=%.2fms ratio=%.2f cpu/req nginx=%.1fus plinth=%.1fus (medians of %d rounds, wrk -t1 -c50 -d%s, access logs %s)\n",
			line, nr, pr, pr/nr, np, pp, pp/np, nc, pc, len(ng), duration, logs)
		b.ReportMetric(pr, metric+"plinth-req/s")
		b.ReportMetric(nr, metric+"nginx-req/s")
		b.ReportMetric(pr/nr, metric+"req/s-ratio")
		b.ReportMetric(pp/np, metric+"p99-ratio")
	}
	report("", "", "off", ngOff, plOff)
	report("logs-on ", "logs-on-", "on: plinth wrote "+strconv.Itoa(lines)+" lines, dropped "+strconv.Itoa(dropped), ngOn, plOn)
}

// countAccessLines counts an access log's request lines and the lines
// it says it dropped.
func countAccessLines(b *testing.B, path string) (lines, dropped int) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if _, n, ok := bytes.Cut(sc.Bytes(), []byte(" dropped=")); ok {
			d, _ := strconv.Atoi(string(n))
			dropped += d
			continue
		}
		lines++
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return lines, dropped
}

type wrkResult struct {
	rps       float64
	requests  int64
	p99       time.Duration
	cpuPerReq time.Duration // the proxy's CPU time per request
}

func (r wrkResult) String() string {
	return fmt.Sprintf("%.0f req/s p99 %.2fms cpu/req %v", r.rps, r.p99ms(), r.cpuPerReq)
}

func (r wrkResult) reqs() float64  { return r.rps }
func (r wrkResult) p99ms() float64 { return float64(r.p99) / float64(time.Millisecond) }
func (r wrkResult) cpuUs() float64 { return float64(r.cpuPerReq) / float64(time.Microsecond) }

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
	wrkN   = regexp.MustCompile(`(\d+) requests in`)
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
	if m = wrkN.FindStringSubmatch(out); m != nil {
		r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	}
	m = wrkP99.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no 99%% latency")
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[2]]
	r.p99 = time.Duration(v * float64(unit))
	return r, nil
}

// treeCPU is the CPU time used by pid and its children (nginx's
// workers), from /proc.
func treeCPU(pid int) time.Duration {
	var total time.Duration
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses: state
		// ppid ... utime (14th field) stime (15th).
		i := strings.LastIndexByte(string(stat), ')')
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); p != pid && ppid != pid {
			continue
		}
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		// Linux reports clock ticks of 1/100 s (USER_HZ).
		total += time.Duration(utime+stime) * 10 * time.Millisecond
	}
	return total
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
