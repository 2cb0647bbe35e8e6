package l4

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/services/router/backend"
)

// The benchmarks run the proxy in a child process (this test binary
// again, told so by childEnv), as HAProxy runs in its own: the load
// generators and backends in the benchmark's process then cost both the
// same.
const (
	childEnv        = "PLINTH_L4_BENCH_CHILD"   // "tcp" or "udp"
	childBackendEnv = "PLINTH_L4_BENCH_BACKEND" // ip:port
	childProfileEnv = "PLINTH_L4_BENCH_CPUPROFILE"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := runChild(mode, os.Getenv(childBackendEnv), os.Getenv(childProfileEnv)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	flag.Parse()
	if !testing.Verbose() {
		// Tests provoke failures on purpose; their log lines are noise.
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	os.Exit(m.Run())
}

// runChild serves one proxy on 127.0.0.1, prints its address, and stops
// when its stdin closes (the benchmark ended or died).
func runChild(mode, backendAddr, profile string) error {
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var pool backend.Pool
	var sets backend.Sets
	sets.Replace(map[string]*backend.Set{"svc": {Service: "svc", Backends: []*backend.Backend{pool.Get("svc/0", backendAddr)}}})
	var addr string
	var stop func()
	switch mode {
	case "tcp":
		ln, err := ListenTCP(context.Background(), "127.0.0.1:0")
		if err != nil {
			return err
		}
		p := &TCPProxy{Backends: &sets}
		p.SetRoute(&TCPRoute{ID: "bench", Service: "svc"})
		go p.Serve(ln)
		addr, stop = ln.Addr().String(), func() { p.Close() }
	case "udp":
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		p := &UDPProxy{Backends: &sets}
		p.SetRoute(&UDPRoute{ID: "bench", Service: "svc"})
		go p.Serve(conn)
		addr, stop = conn.LocalAddr().String(), func() { p.Close() }
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	fmt.Println(addr)
	io.Copy(io.Discard, os.Stdin)
	stop()
	return nil
}

// proc is a proxy process the benchmark started.
type proc struct {
	cmd   *exec.Cmd
	stdin io.Closer
	addr  string
}

// cpu is the CPU time p used so far, user and system, all threads.
func (p *proc) cpu() time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime
	// and stime are the 12th and 13th, in clock ticks (100 Hz).
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// stop ends p: stdin closed for the child, then SIGKILL by PID for
// whatever is left (HAProxy), and waits for it.
func (p *proc) stop() {
	p.stdin.Close()
	done := make(chan struct{})
	go func() {
		p.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func startChild(b *testing.B, mode, backendAddr string, wrap ...string) *proc {
	b.Helper()
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	args := append(slices.Clone(wrap), self, "-test.run=^$")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), childEnv+"="+mode, childBackendEnv+"="+backendAddr)
	if dir := os.Getenv("L4_CHILD_PROFILE_DIR"); dir != "" && len(wrap) == 0 {
		cmd.Env = append(cmd.Env, childProfileEnv+"="+filepath.Join(dir, mode+".cpu.pprof"))
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		p.stop()
		b.Fatalf("proxy child: %v", err)
	}
	p.addr = line[:len(line)-1]
	return p
}

// startHAProxy runs HAProxy in TCP mode in front of backendAddr, with
// the settings a production TCP proxy would have (splice, keepalive
// both sides, timeouts), as a process of its own.
func startHAProxy(b *testing.B, backendAddr string) *proc {
	b.Helper()
	port := freeTCPPort(b)
	cfg := fmt.Sprintf(`global
	maxconn 5000
	nbthread 2
defaults
	mode tcp
	option splice-auto
	option clitcpka
	option srvtcpka
	timeout connect 5s
	timeout client 1m
	timeout server 1m
frontend l4
	bind 127.0.0.1:%d
	default_backend app
backend app
	server s1 %s
`, port, backendAddr)
	path := filepath.Join(b.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("haproxy", "-db", "-f", path)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: io.NopCloser(nil), addr: fmt.Sprintf("127.0.0.1:%d", port)}
	p.stdin = killer{cmd}
	// HAProxy says nothing when it is ready: wait until it accepts.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			p.stop()
			b.Fatalf("haproxy did not listen on %s: %v\n%s", p.addr, err, out.Bytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killer ends HAProxy by its PID when its proc stops.
type killer struct{ cmd *exec.Cmd }

func (k killer) Close() error { return k.cmd.Process.Kill() }

func freeTCPPort(b *testing.B) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// sink reads a connection to its end, then answers one byte: the sender
// knows then that everything arrived.
func sink(c *net.TCPConn) {
	buf := make([]byte, 256<<10)
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	c.Write([]byte{1})
}

// bulk sends size bytes over each of streams connections to addr and
// returns MB/s (10^6 bytes) from the first dial to the last answer.
func bulk(addr string, streams int, size int64) (float64, error) {
	start := time.Now()
	errs := make(chan error, streams)
	for range streams {
		go func() {
			errs <- func() error {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				buf := make([]byte, 256<<10)
				for sent := int64(0); sent < size; sent += int64(len(buf)) {
					if _, err := c.Write(buf); err != nil {
						return err
					}
				}
				c.(*net.TCPConn).CloseWrite()
				if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
					return fmt.Errorf("sink's answer: %w", err)
				}
				return nil
			}()
		}()
	}
	var all []error
	for range streams {
		all = append(all, <-errs)
	}
	if err := errors.Join(all...); err != nil {
		return 0, err
	}
	return float64(int64(streams)*size) / time.Since(start).Seconds() / 1e6, nil
}

// connectLatency makes n connections to addr one after another, each
// sending a byte and waiting for its echo, and returns the mean and the
// 99th percentile.
func connectLatency(addr string, n int) (mean, p99 time.Duration, err error) {
	times := make([]time.Duration, 0, n)
	one := make([]byte, 1)
	for range n {
		start := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return 0, 0, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err = c.Write(one); err == nil {
			_, err = io.ReadFull(c, one)
		}
		c.Close()
		if err != nil {
			return 0, 0, err
		}
		times = append(times, time.Since(start))
	}
	slices.Sort(times)
	var sum time.Duration
	for _, d := range times {
		sum += d
	}
	return sum / time.Duration(n), times[n*99/100], nil
}

// connectRate is connections per second with conc clients each making
// connections like connectLatency's for d.
func connectRate(addr string, conc int, d time.Duration) (float64, error) {
	var mu sync.Mutex
	var total int
	var errs []error
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Go(func() {
			n := 0
			one := make([]byte, 1)
			var err error
			for time.Since(start) < d {
				var c net.Conn
				if c, err = net.Dial("tcp", addr); err != nil {
					break
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err = c.Write(one); err == nil {
					_, err = io.ReadFull(c, one)
				}
				c.Close()
				if err != nil {
					break
				}
				n++
			}
			mu.Lock()
			total += n
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	return float64(total) / time.Since(start).Seconds(), errors.Join(errs...)
}

type tcpFigures struct {
	bulk1, bulk4, connRate float64 // MB/s, MB/s, connections/s
	mean, p99              time.Duration
	cpuPerGB, cpuPerConn   time.Duration // the proxy process's CPU time
}

// measureTCP runs the TCP measures through sink and echo, proxies in
// front of a sink and an echo backend.
func measureTCP(b *testing.B, sink, echo *proc) tcpFigures {
	b.Helper()
	const sequential = 3000
	var f tcpFigures
	var err error
	cpu0 := sink.cpu()
	if f.bulk1, err = bulk(sink.addr, 1, 1<<30); err != nil {
		b.Fatal(err)
	}
	if f.bulk4, err = bulk(sink.addr, 4, 256<<20); err != nil {
		b.Fatal(err)
	}
	f.cpuPerGB = (sink.cpu() - cpu0) / 2
	cpu0 = echo.cpu()
	if f.mean, f.p99, err = connectLatency(echo.addr, sequential); err != nil {
		b.Fatal(err)
	}
	f.cpuPerConn = (echo.cpu() - cpu0) / sequential
	if f.connRate, err = connectRate(echo.addr, 8, time.Second); err != nil {
		b.Fatal(err)
	}
	return f
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// BenchmarkTCPvsHAProxy relays to the same backends through HAProxy in
// TCP mode and through TCPProxy, alternating, three rounds each: bulk
// throughput (one stream of 1 GiB, four of 256 MiB, to a sink),
// sequential connect latency (connect, one byte echoed, close) and the
// connection rate of eight such clients; with the CPU time each proxy
// process took per GiB and per connection.
func BenchmarkTCPvsHAProxy(b *testing.B) {
	if _, err := exec.LookPath("haproxy"); err != nil {
		b.Skip("haproxy not installed")
	}
	sinkAddr := serveTCP(b, sink)
	echoAddr := serveTCP(b, echo)
	type pair struct{ h, p tcpFigures }
	var rounds []pair
	for range b.N * 3 {
		var r pair
		hs, he := startHAProxy(b, sinkAddr), startHAProxy(b, echoAddr)
		r.h = measureTCP(b, hs, he)
		hs.stop()
		he.stop()
		ps, pe := startChild(b, "tcp", sinkAddr), startChild(b, "tcp", echoAddr)
		r.p = measureTCP(b, ps, pe)
		ps.stop()
		pe.stop()
		rounds = append(rounds, r)
	}
	var sum pair
	n := float64(len(rounds))
	for i, r := range rounds {
		fmt.Printf("bench tcp throughput round %d: 1 stream haproxy=%.0fMB/s plinth=%.0fMB/s ratio=%.2f; 4 streams haproxy=%.0fMB/s plinth=%.0fMB/s ratio=%.2f; cpu/GiB haproxy=%v plinth=%v\n",
			i+1, r.h.bulk1, r.p.bulk1, r.p.bulk1/r.h.bulk1, r.h.bulk4, r.p.bulk4, r.p.bulk4/r.h.bulk4, r.h.cpuPerGB, r.p.cpuPerGB)
		fmt.Printf("bench tcp connect round %d: mean haproxy=%.0fµs plinth=%.0fµs ratio=%.2f; p99 haproxy=%.0fµs plinth=%.0fµs; cpu/conn haproxy=%.0fµs plinth=%.0fµs; rate(8 clients) haproxy=%.0f/s plinth=%.0f/s ratio=%.2f\n",
			i+1, us(r.h.mean), us(r.p.mean), float64(r.h.mean)/float64(r.p.mean), us(r.h.p99), us(r.p.p99),
			us(r.h.cpuPerConn), us(r.p.cpuPerConn), r.h.connRate, r.p.connRate, r.p.connRate/r.h.connRate)
		for _, x := range []struct{ s, f *tcpFigures }{{&sum.h, &r.h}, {&sum.p, &r.p}} {
			x.s.bulk1 += x.f.bulk1 / n
			x.s.bulk4 += x.f.bulk4 / n
			x.s.connRate += x.f.connRate / n
			x.s.mean += x.f.mean / time.Duration(n)
			x.s.p99 += x.f.p99 / time.Duration(n)
			x.s.cpuPerGB += x.f.cpuPerGB / time.Duration(n)
			x.s.cpuPerConn += x.f.cpuPerConn / time.Duration(n)
		}
	}
	fmt.Printf("bench tcp throughput haproxy=%.0fMB/s plinth=%.0fMB/s ratio=%.2f (1 stream; 4 streams ratio=%.2f; cpu/GiB haproxy=%v plinth=%v)\n",
		sum.h.bulk1, sum.p.bulk1, sum.p.bulk1/sum.h.bulk1, sum.p.bulk4/sum.h.bulk4, sum.h.cpuPerGB, sum.p.cpuPerGB)
	fmt.Printf("bench tcp connect haproxy=%.0fµs plinth=%.0fµs ratio=%.2f (mean, haproxy/plinth; p99 haproxy=%.0fµs plinth=%.0fµs; cpu/conn haproxy=%.0fµs plinth=%.0fµs; rate ratio=%.2f)\n",
		us(sum.h.mean), us(sum.p.mean), float64(sum.h.mean)/float64(sum.p.mean), us(sum.h.p99), us(sum.p.p99),
		us(sum.h.cpuPerConn), us(sum.p.cpuPerConn), sum.p.connRate/sum.h.connRate)
	b.ReportMetric(sum.p.bulk1/sum.h.bulk1, "throughput-ratio")
	b.ReportMetric(sum.p.bulk4/sum.h.bulk4, "throughput4-ratio")
	b.ReportMetric(float64(sum.h.mean)/float64(sum.p.mean), "connect-ratio")
	b.ReportMetric(sum.p.connRate/sum.h.connRate, "connrate-ratio")
	b.ReportMetric(sum.p.bulk1, "plinth-MB/s")
	b.ReportMetric(us(sum.p.mean), "plinth-connect-µs")
}

// BenchmarkTCPSplice checks that the relay splices: it counts the
// proxy child's system calls (strace) while 64 MiB go through it.
func BenchmarkTCPSplice(b *testing.B) {
	if _, err := exec.LookPath("strace"); err != nil {
		b.Skip("strace not installed")
	}
	const size = 64 << 20
	sinkAddr := serveTCP(b, sink)
	out := filepath.Join(b.TempDir(), "strace")
	for range b.N {
		p := startChild(b, "tcp", sinkAddr, "strace", "-f", "-c", "-o", out, "-e", "trace=splice,read,write,recvfrom,sendto,recvmsg,sendmsg")
		if _, err := bulk(p.addr, 1, size); err != nil {
			b.Fatal(err)
		}
		p.stop()
	}
	summary, err := os.ReadFile(out)
	if err != nil {
		b.Fatal(err)
	}
	calls := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$`).FindAllStringSubmatch(string(summary), -1) {
		calls[m[2]], _ = strconv.Atoi(m[1])
	}
	copies := calls["read"] + calls["write"] + calls["recvfrom"] + calls["sendto"] + calls["recvmsg"] + calls["sendmsg"]
	fmt.Printf("bench tcp splice: %d splice calls, %d read/write calls for %d MiB through the proxy\n", calls["splice"], copies, size>>20)
	if calls["splice"] == 0 {
		b.Fatalf("the relay did not splice; strace says:\n%s", summary)
	}
	b.ReportMetric(float64(calls["splice"]), "splices")
}

// udpEchoRate is datagrams per second that conc clients, each sending a
// datagram and waiting for its echo, get through to addr in d.
func udpEchoRate(addr netip.AddrPort, conc int, d time.Duration) (float64, error) {
	var mu sync.Mutex
	var total int
	var errs []error
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Go(func() {
			err := func() error {
				c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
				if err != nil {
					return err
				}
				defer c.Close()
				msg := make([]byte, 64)
				buf := make([]byte, 2048)
				n := 0
				defer func() {
					mu.Lock()
					total += n
					mu.Unlock()
				}()
				for time.Since(start) < d {
					if _, err := c.Write(msg); err != nil {
						return err
					}
					c.SetReadDeadline(time.Now().Add(time.Second))
					if _, err := c.Read(buf); err != nil {
						return err
					}
					n++
				}
				return nil
			}()
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	return float64(total) / time.Since(start).Seconds(), errors.Join(errs...)
}

// BenchmarkUDPEcho compares the datagrams per second that eight
// ping-pong clients get from a UDP echo server directly and through
// UDPProxy, alternating, three rounds: the proxy's overhead.
func BenchmarkUDPEcho(b *testing.B) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for ctx.Err() == nil {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	defer func() {
		cancel()
		conn.Close()
		<-done
	}()
	echoAddr := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	var direct, proxied float64
	rounds := 3 * b.N
	for i := range rounds {
		d, err := udpEchoRate(echoAddr, 8, 2*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		p := startChild(b, "udp", echoAddr.String())
		pr, err := udpEchoRate(netip.MustParseAddrPort(p.addr), 8, 2*time.Second)
		p.stop()
		if err != nil {
			b.Fatal(err)
		}
		fmt.Printf("bench udp echo round %d: direct=%.0f/s plinth=%.0f/s ratio=%.2f\n", i+1, d, pr, pr/d)
		direct += d / float64(rounds)
		proxied += pr / float64(rounds)
	}
	fmt.Printf("bench udp echo direct=%.0f/s plinth=%.0f/s ratio=%.2f (8 ping-pong clients, 64-byte datagrams)\n", direct, proxied, proxied/direct)
	b.ReportMetric(direct, "direct-pkt/s")
	b.ReportMetric(proxied, "plinth-pkt/s")
	b.ReportMetric(proxied/direct, "ratio")
}
