package controller

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metrics "github.com/armon/go-metrics"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/internal/testwait"
)

// BenchmarkController compares three controller voters with three etcd
// members (Debian's etcd-server), all on loopback in this run, each
// voter with its own data directory, fsync on (raft-wal's and etcd's
// defaults):
//
//   - writes: committed writes per second and the p50/p99 latency of one,
//     at concurrency 1 and 64, for 3 s each; 16-byte values, each writer
//     cycling over 16 keys of its own, so that no two writes in flight
//     touch one key and the settings collection stays near 1,000 keys;
//   - watches: 200 writes one at a time, each timed from its start until
//     a watcher on a follower has it: plinth's blocking query on the
//     settings collection (which answers with the whole collection), a
//     /v3/watch stream on the key for etcd;
//   - memory for 10,000 more 100-byte settings: for plinth the Go heap in
//     use after a GC, before and after, divided by the three voters that
//     share this process; for etcd the leader's VmRSS, before and after.
//
// Both are reached alike: writes go to the leader (plinth's client lists
// it first and stays on it; etcd's puts go to its leader's client URL),
// watches to a follower, over HTTP/1.1 with mutual TLS from the same CA:
// etcd serves its JSON gateway with client certificates and its members
// talk TLS to each other, as plinth's raft does. etcd's gateway passes
// each call on to its own gRPC server over a loopback connection, a hop
// its native gRPC clients skip. Rounds alternate plinth, etcd, three of
// each (a round during which the leader changed is run again); each
// figure is the median of its rounds. A last pass per side splits a
// write's time (raft's metrics for plinth, etcd's /metrics) and logs it.
//
//	bench controller-write-c1: plinth=…ops/s etcd=…ops/s ratio=…
func BenchmarkController(b *testing.B) {
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		b.Skip("needs etcd for the baseline: apt-get install etcd-server (make deps does)")
	}
	ctx := context.Background()
	c := newTestCluster(b, 3)
	pk := &plinthKV{c: c}
	pk.aim(b)
	ek := startEtcd(b, etcd, c.b, c.creds.TLS())
	systems := []struct {
		name string
		kv   kvSystem
	}{{"plinth", pk}, {"etcd", ek}}

	// Warm up: connections made, both leaders settled.
	for _, s := range systems {
		if _, err := writePhase(ctx, s.kv, "c64", 64, time.Second); err != nil {
			b.Fatalf("%s warm-up: %v", s.name, err)
		}
	}
	results := map[string][]roundResult{}
	for r := range benchRounds * b.N {
		for _, s := range systems {
			// A round during which the leader changed measured an
			// election: it is run again.
			for attempt := 1; ; attempt++ {
				before := s.kv.aim(b)
				res, err := runRound(ctx, s.kv, r)
				after := s.kv.aim(b)
				if err == nil && before == after {
					results[s.name] = append(results[s.name], res)
					break
				}
				if attempt == 3 {
					b.Fatalf("%s round %d: %v (leader %s, then %s)", s.name, r, err, before, after)
				}
				b.Logf("%s round %d run again: %v (leader %s, then %s)", s.name, r, err, before, after)
			}
		}
	}
	p, e := results["plinth"], results["etcd"]
	printRate("controller-write-c1", p, e, func(r roundResult) float64 { return r.c1.rate })
	printRate("controller-write-c64", p, e, func(r roundResult) float64 { return r.c64.rate })
	printLatency("controller-p50-c1", p, e, func(r roundResult) time.Duration { return r.c1.p50 })
	printLatency("controller-p99-c1", p, e, func(r roundResult) time.Duration { return r.c1.p99 })
	printLatency("controller-p50-c64", p, e, func(r roundResult) time.Duration { return r.c64.p50 })
	printLatency("controller-p99-c64", p, e, func(r roundResult) time.Duration { return r.c64.p99 })
	printLatency("controller-watch-p50", p, e, func(r roundResult) time.Duration { return r.watch50 })
	printLatency("controller-watch-p99", p, e, func(r roundResult) time.Duration { return r.watch99 })

	if err := breakdown(b, ctx, pk, ek); err != nil {
		b.Logf("breakdown cut short: %v", err)
	}
	pk.aim(b)
	ek.aim(b)
	plinthMem, err := plinthMemory(ctx, c, pk, pk.othersThan(pk.lead))
	if err != nil {
		b.Fatalf("plinth memory: %v", err)
	}
	etcdMem, err := etcdMemory(b, ctx, ek)
	if err != nil {
		b.Fatalf("etcd memory: %v", err)
	}
	fmt.Printf("bench controller-mem-10k: plinth=%.1fMB etcd=%.1fMB ratio=%.2f\n", mb(plinthMem), mb(etcdMem), float64(plinthMem)/float64(etcdMem))
}

const (
	benchRounds = 3
	benchPhase  = 3 * time.Second
	// benchKeys is how many keys each writer cycles over.
	benchKeys    = 16
	benchWatches = 200
	benchMemKeys = 10000
)

// kvSystem is what the benchmark needs of plinth or etcd.
type kvSystem interface {
	// put writes key through the leader.
	put(ctx context.Context, key, value string) error
	// watch follows key on a follower until ctx ends: ready once it
	// watches, then seen with the values key takes (plinth may repeat
	// one).
	watch(ctx context.Context, key string, ready func(), seen func(value string)) error
	// aim points writes at the current leader and watches at a
	// follower, and names the leader.
	aim(t testing.TB) string
}

// plinthKV writes settings through one controller and watches them on
// another.
type plinthKV struct {
	c                *testCluster
	lead             *testNode
	leader, follower *Client
}

func (p *plinthKV) aim(testing.TB) string {
	lead := p.c.leader(30 * time.Second)
	if lead != p.lead {
		// The leader first: the client stays on it.
		others := p.othersThan(lead)
		p.lead, p.leader = lead, p.c.client(append([]*testNode{lead}, others...)...)
		p.follower = p.c.client(others[0])
	}
	return lead.ip
}

func (p *plinthKV) othersThan(lead *testNode) []*testNode {
	var out []*testNode
	for _, n := range p.c.nodes {
		if n != lead {
			out = append(out, n)
		}
	}
	return out
}

func (p *plinthKV) put(ctx context.Context, key, value string) error {
	_, err := p.leader.PutSetting(ctx, key, value, nil)
	return err
}

func (p *plinthKV) watch(ctx context.Context, key string, ready func(), seen func(string)) error {
	var idx uint64
	for first := true; ; first = false {
		list, meta, err := p.follower.Settings(ctx, QueryOptions{Index: idx, Wait: time.Minute})
		if err != nil {
			return err
		}
		if first {
			ready()
		}
		idx = meta.Index
		for _, s := range list {
			if s.Key == key {
				seen(s.Value)
			}
		}
	}
}

type roundResult struct {
	c1, c64          phaseResult
	watch50, watch99 time.Duration
}

type phaseResult struct {
	rate     float64 // writes per second
	p50, p99 time.Duration
	mean     time.Duration
	writes   int
}

func runRound(ctx context.Context, kv kvSystem, round int) (roundResult, error) {
	var r roundResult
	var err error
	if r.c1, err = writePhase(ctx, kv, "c1", 1, benchPhase); err != nil {
		return r, err
	}
	if r.c64, err = writePhase(ctx, kv, "c64", 64, benchPhase); err != nil {
		return r, err
	}
	lats, err := watchPhase(ctx, kv, "watch-"+strconv.Itoa(round), benchWatches)
	if err != nil {
		return r, err
	}
	r.watch50, r.watch99 = percentile(lats, 50), percentile(lats, 99)
	return r, nil
}

// writePhase runs conc writers for d, each over its own benchKeys keys.
func writePhase(ctx context.Context, kv kvSystem, prefix string, conc int, d time.Duration) (phaseResult, error) {
	value := strings.Repeat("v", 16)
	lats := make([][]time.Duration, conc)
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for w := range conc {
		wg.Go(func() {
			for i := 0; time.Now().Before(end); i++ {
				key := fmt.Sprintf("%s-%d-%d", prefix, w, i%benchKeys)
				t0 := time.Now()
				if err := kv.put(ctx, key, value); err != nil {
					errs <- fmt.Errorf("put %s: %w", key, err)
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		return phaseResult{}, err
	default:
	}
	all := slices.Concat(lats...)
	var sum time.Duration
	for _, l := range all {
		sum += l
	}
	return phaseResult{
		rate: float64(len(all)) / elapsed.Seconds(), writes: len(all),
		p50: percentile(all, 50), p99: percentile(all, 99), mean: sum / time.Duration(max(len(all), 1)),
	}, nil
}

// watchPhase writes key n times, one at a time, and times each write
// from its start until the watcher reports its value.
func watchPhase(ctx context.Context, kv kvSystem, key string, n int) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type sighting struct {
		value string
		at    time.Time
	}
	seen := make(chan sighting, 16)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- kv.watch(ctx, key, func() { close(ready) }, func(v string) {
			select {
			case seen <- sighting{v, time.Now()}:
			case <-ctx.Done():
			}
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-ready:
	case err := <-done:
		done <- err
		return nil, fmt.Errorf("watch %s: %w", key, err)
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("watch %s: not started within 10s", key)
	}
	var lats []time.Duration
	for i := range n {
		value := fmt.Sprintf("%016d", i)
		start := time.Now()
		if err := kv.put(ctx, key, value); err != nil {
			return nil, fmt.Errorf("put %s: %w", key, err)
		}
		timeout := time.After(10 * time.Second)
	wait:
		for {
			select {
			case s := <-seen:
				if s.value == value {
					lats = append(lats, s.at.Sub(start))
					break wait
				}
			case err := <-done:
				done <- err
				return nil, fmt.Errorf("watch %s ended: %w", key, err)
			case <-timeout:
				return nil, fmt.Errorf("watch %s: write %d not seen within 10s", key, i)
			}
		}
	}
	return lats, nil
}

// fill writes benchMemKeys new 100-byte keys at concurrency 64.
func fill(ctx context.Context, kv kvSystem) error {
	value := strings.Repeat("m", 100)
	errs := make(chan error, 64)
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Go(func() {
			for i := w; i < benchMemKeys; i += 64 {
				if err := kv.put(ctx, fmt.Sprintf("mem-%05d", i), value); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// plinthMemory is the heap the three voters of this process grow by
// with benchMemKeys settings, per voter.
func plinthMemory(ctx context.Context, c *testCluster, pk *plinthKV, followers []*testNode) (int64, error) {
	before := heapInUse()
	if err := fill(ctx, pk); err != nil {
		return 0, err
	}
	// Raft applies in order: a last write seen by the followers means
	// they hold the rest.
	if err := pk.put(ctx, "mem-done", "1"); err != nil {
		return 0, err
	}
	for _, n := range followers {
		testwait.For(c.t, "last write applied on "+n.ip, 30*time.Second, func() error {
			call, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, _, err := c.client(n).Setting(call, "mem-done", QueryOptions{})
			return err
		})
	}
	after := heapInUse()
	c.t.Logf("plinth memory: Go heap in use after GC %.1fMB → %.1fMB for the three voters (and their hosts, and this benchmark)",
		mb(before), mb(after))
	return (after - before) / 3, nil
}

func heapInUse() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// breakdown logs where a write's and a watch's time goes.
func breakdown(b *testing.B, ctx context.Context, pk *plinthKV, ek *etcdKV) error {
	for _, conc := range []int{1, 64} {
		if err := plinthBreakdown(b, ctx, pk, conc); err != nil {
			return fmt.Errorf("plinth: %w", err)
		}
		if err := etcdBreakdown(b, ctx, ek, conc); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
	}
	pk.aim(b)
	via, err := writePhase(ctx, &plinthKV{leader: pk.follower}, "c1", 1, 2*time.Second)
	if err != nil {
		return fmt.Errorf("plinth writes through a follower: %w", err)
	}
	b.Logf("plinth c1 through a follower (forwarded to the leader): p50 %.2fms p99 %.2fms, %.0f writes/s",
		ms(via.p50), ms(via.p99), via.rate)
	onLeader, err := watchPhase(ctx, &plinthKV{leader: pk.leader, follower: pk.leader}, "watch-leader", benchWatches)
	if err != nil {
		return fmt.Errorf("plinth watch on the leader: %w", err)
	}
	var reads []time.Duration
	var size int
	for range 50 {
		start := time.Now()
		list, _, err := pk.follower.Settings(ctx, QueryOptions{})
		if err != nil {
			return fmt.Errorf("plinth settings: %w", err)
		}
		reads, size = append(reads, time.Since(start)), len(list)
	}
	b.Logf("plinth watch on the leader instead of a follower: p50 %.2fms p99 %.2fms "+
		"(a follower applies a write once raft sends it the commit index: with the next write, or CommitTimeout later); "+
		"each answer is the whole collection, %d settings, which takes %.2fms to read (p50)",
		ms(percentile(onLeader, 50)), ms(percentile(onLeader, 99)), size, ms(percentile(reads, 50)))
	return nil
}

// plinthBreakdown runs writes at conc with raft's metrics collected, and
// logs where a write's time goes.
func plinthBreakdown(b *testing.B, ctx context.Context, pk *plinthKV, conc int) error {
	cfg := metrics.DefaultConfig("")
	cfg.EnableHostname, cfg.EnableRuntimeMetrics = false, false
	sink := metrics.NewInmemSink(time.Hour, time.Hour)
	if _, err := metrics.NewGlobal(cfg, sink); err != nil {
		return err
	}
	defer metrics.NewGlobal(cfg, &metrics.BlackholeSink{})
	cpu := cpuTime(os.Getpid())
	res, err := writePhase(ctx, pk, fmt.Sprintf("c%d", conc), conc, 2*time.Second)
	if err != nil {
		return err
	}
	cpu = cpuTime(os.Getpid()) - cpu
	samples := map[string]*metrics.AggregateSample{}
	for _, intv := range sink.Data() {
		for k, v := range intv.Samples {
			name, _, _ := strings.Cut(k, ";") // labels (peer IDs) pooled
			agg := samples[name]
			if agg == nil {
				agg = &metrics.AggregateSample{}
				samples[name] = agg
			}
			agg.Count += v.Count
			agg.Sum += v.Sum
		}
	}
	mean := func(name string) float64 {
		if s := samples[name]; s != nil {
			return s.Mean()
		}
		return math.NaN()
	}
	appends := 0
	if s := samples["raft.leader.dispatchLog"]; s != nil {
		appends = s.Count
	}
	commit, apply := mean("raft.commitTime"), mean("raft.fsm.apply")
	b.Logf("plinth c%d: %.0f writes/s, %.0fµs CPU each (three voters and the client), mean %.2fms = raft commit %.2fms [leader log append+fsync %.2fms, %.1f writes per append; "+
		"AppendEntries round trip %.2fms, of which the follower's store+fsync %.2fms] + FSM apply %.3fms "+
		"+ the rest (client, HTTP, TLS, JSON, waiting for raft's loop) %.2fms",
		conc, res.rate, perWrite(cpu, res), ms(res.mean), commit, mean("raft.leader.dispatchLog"), float64(res.writes)/float64(max(appends, 1)),
		mean("raft.replication.appendEntries.rpc"), mean("raft.rpc.appendEntries.storeLogs"), apply,
		ms(res.mean)-commit-apply)
	return nil
}

// etcdBreakdown runs writes at conc and logs the leader's WAL fsyncs.
func etcdBreakdown(b *testing.B, ctx context.Context, ek *etcdKV, conc int) error {
	const sum, count = "etcd_disk_wal_fsync_duration_seconds_sum", "etcd_disk_wal_fsync_duration_seconds_count"
	before, err := ek.metrics(ctx, ek.leader)
	if err != nil {
		return err
	}
	cpu, self := cpuTime(ek.pids...), cpuTime(os.Getpid())
	res, err := writePhase(ctx, ek, fmt.Sprintf("c%d", conc), conc, 2*time.Second)
	if err != nil {
		return err
	}
	cpu, self = cpuTime(ek.pids...)-cpu, cpuTime(os.Getpid())-self
	after, err := ek.metrics(ctx, ek.leader)
	if err != nil {
		return err
	}
	n := after[count] - before[count]
	b.Logf("etcd c%d: %.0f writes/s, %.0fµs CPU each (three members) + %.0fµs (the client), mean %.2fms; leader WAL fsync %.2fms, %.1f writes per fsync",
		conc, res.rate, perWrite(cpu, res), perWrite(self, res), ms(res.mean), 1000*(after[sum]-before[sum])/max(n, 1), float64(res.writes)/max(n, 1))
	return nil
}

// cpuTime is the CPU time the processes have used, from
// /proc/<pid>/stat (in clock ticks, 100 a second on Linux).
func cpuTime(pids ...int) time.Duration {
	var ticks int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// After the command's closing parenthesis: state is field 3,
		// utime 14 and stime 15.
		f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return time.Duration(ticks) * (time.Second / 100)
}

func perWrite(cpu time.Duration, r phaseResult) float64 {
	return float64(cpu.Microseconds()) / float64(max(r.writes, 1))
}

// etcdKV is a three-member etcd cluster this benchmark started, reached
// through its JSON gateway.
type etcdKV struct {
	http     *http.Client
	urls     []string // client URLs
	pids     []int
	leader   string
	follower string
}

// startEtcd runs three etcd members on 127.0.0.1, with certificates of
// the cluster's CA for clients and peers, and finds the leader.
func startEtcd(b *testing.B, bin string, bnd *bundle.Bundle, client *tls.Config) *etcdKV {
	dir := b.TempDir()
	cert, err := bnd.HostCertificate("etcd", "etcd", []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		b.Fatal(err)
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		b.Fatal(err)
	}
	var chain bytes.Buffer
	for _, der := range cert.Certificate {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	files := map[string][]byte{
		"cert.pem": chain.Bytes(),
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}),
		"ca.pem":   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: bnd.CACert.Raw}),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	var peers []string
	ports := freePorts(b, 6)
	clientPorts, peerPorts := ports[:3], ports[3:]
	for i := range 3 {
		peers = append(peers, fmt.Sprintf("e%d=https://127.0.0.1:%d", i, peerPorts[i]))
	}
	tr := &http.Transport{
		TLSClientConfig:     client,
		TLSHandshakeTimeout: 10 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
	}
	ek := &etcdKV{http: &http.Client{Transport: tr}}
	for i := range 3 {
		clientURL := fmt.Sprintf("https://127.0.0.1:%d", clientPorts[i])
		peerURL := fmt.Sprintf("https://127.0.0.1:%d", peerPorts[i])
		logPath := filepath.Join(dir, fmt.Sprintf("e%d.log", i))
		logf, err := os.Create(logPath)
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin,
			"--name", fmt.Sprintf("e%d", i), "--data-dir", filepath.Join(dir, fmt.Sprintf("e%d", i)),
			"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", strings.Join(peers, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "plinth-bench",
			"--cert-file", filepath.Join(dir, "cert.pem"), "--key-file", filepath.Join(dir, "key.pem"),
			"--trusted-ca-file", filepath.Join(dir, "ca.pem"), "--client-cert-auth",
			"--peer-cert-file", filepath.Join(dir, "cert.pem"), "--peer-key-file", filepath.Join(dir, "key.pem"),
			"--peer-trusted-ca-file", filepath.Join(dir, "ca.pem"), "--peer-client-cert-auth",
			"--logger", "zap", "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = logf, logf
		// The members must not outlive a benchmark that dies.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			b.Fatalf("start etcd: %v", err)
		}
		logf.Close()
		exited := make(chan struct{})
		go func() {
			cmd.Wait()
			close(exited)
		}()
		b.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		})
		ek.urls, ek.pids = append(ek.urls, clientURL), append(ek.pids, cmd.Process.Pid)
	}
	ek.aim(b)
	return ek
}

func (e *etcdKV) aim(t testing.TB) string {
	testwait.For(t, "etcd leader", 30*time.Second, e.findLeader)
	return e.leader
}

// findLeader asks every member for its status.
func (e *etcdKV) findLeader() error {
	e.leader, e.follower = "", ""
	for _, u := range e.urls {
		var st struct {
			Header struct {
				MemberID string `json:"member_id"`
			} `json:"header"`
			Leader string `json:"leader"`
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := e.post(ctx, u, "/v3/maintenance/status", struct{}{}, &st)
		cancel()
		switch {
		case err != nil:
			return err
		case st.Leader == "" || st.Leader == "0":
			return fmt.Errorf("%s has no leader", u)
		case st.Leader == st.Header.MemberID:
			e.leader = u
		default:
			e.follower = u
		}
	}
	if e.leader == "" {
		return errors.New("no member says it leads")
	}
	return nil
}

func (e *etcdKV) post(ctx context.Context, url, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s%s: %s: %s", url, path, resp.Status, bytes.TrimSpace(data))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

func (e *etcdKV) put(ctx context.Context, key, value string) error {
	// []byte fields are base64 in JSON, as the gateway wants.
	return e.post(ctx, e.leader, "/v3/kv/put", struct {
		Key   []byte `json:"key"`
		Value []byte `json:"value"`
	}{[]byte(key), []byte(value)}, nil)
}

func (e *etcdKV) watch(ctx context.Context, key string, ready func(), seen func(string)) error {
	body, _ := json.Marshal(map[string]any{"create_request": map[string][]byte{"key": []byte(key)}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.follower+"/v3/watch", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd watch: %s", resp.Status)
	}
	// The gateway streams one JSON object per watch response.
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct {
			Result *struct {
				Created bool `json:"created"`
				Events  []struct {
					Kv struct {
						Value []byte `json:"value"`
					} `json:"kv"`
				} `json:"events"`
			} `json:"result"`
			Error json.RawMessage `json:"error"`
		}
		if err := dec.Decode(&m); err != nil {
			return err
		}
		if m.Result == nil {
			return fmt.Errorf("etcd watch: %s", m.Error)
		}
		if m.Result.Created {
			ready()
		}
		for _, ev := range m.Result.Events {
			seen(string(ev.Kv.Value))
		}
	}
}

// metrics reads a member's Prometheus metrics (unlabelled ones).
func (e *etcdKV) metrics(ctx context.Context, url string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// etcdMemory is how much the leader's resident memory grows with
// benchMemKeys keys.
func etcdMemory(b *testing.B, ctx context.Context, ek *etcdKV) (int64, error) {
	pid := ek.pids[slices.Index(ek.urls, ek.leader)]
	heap := func() float64 {
		m, err := ek.metrics(ctx, ek.leader)
		if err != nil {
			return math.NaN()
		}
		return m["go_memstats_heap_inuse_bytes"]
	}
	before, heapBefore := procRSS(pid), heap()
	if err := fill(ctx, ek); err != nil {
		return 0, err
	}
	after, heapAfter := procRSS(pid), heap()
	b.Logf("etcd memory: leader VmRSS %.1fMB → %.1fMB (Go heap in use, without a forced GC: %.1fMB → %.1fMB)",
		mb(before), mb(after), heapBefore/(1<<20), heapAfter/(1<<20))
	return after - before, nil
}

// procRSS is a process's resident memory in bytes, 0 if unknown.
func procRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// percentile is the nearest-rank p-th percentile of d (sorted in place).
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(math.Ceil(p/100*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func median[T int64 | float64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func printRate(name string, p, e []roundResult, f func(roundResult) float64) {
	pv, ev := median(mapRounds(p, f)), median(mapRounds(e, f))
	fmt.Printf("bench %s: plinth=%.0fops/s etcd=%.0fops/s ratio=%.2f\n", name, pv, ev, pv/ev)
}

func printLatency(name string, p, e []roundResult, f func(roundResult) time.Duration) {
	pv, ev := median(mapRounds(p, f)), median(mapRounds(e, f))
	fmt.Printf("bench %s: plinth=%.2fms etcd=%.2fms ratio=%.2f\n", name, ms(pv), ms(ev), pv.Seconds()/ev.Seconds())
}

func mapRounds[T any](rs []roundResult, f func(roundResult) T) []T {
	out := make([]T, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func mb(b int64) float64         { return float64(b) / (1 << 20) }
