package controller

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/internal/netnstest"
)

// The tests in this file run the platform as it runs on machines: real
// plinth hostd processes, one per network namespace on a test segment,
// each running the controller as a job (system rootfs, host network)
// from a plinth binary built for the test.

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// plinthBinary builds cmd/plinth once per test run, in a directory under
// /tmp, which system-rootfs jobs see.
func plinthBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "plinth-test-bin-"); binErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, "plinth"), "github.com/plinth-os/plinth/cmd/plinth").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build cmd/plinth: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "plinth")
}

// platform is a segment of hosts that each run hostd and a controller.
type platform struct {
	t      *testing.T
	seg    *netnstest.Segment
	bin    string
	dir    string
	bundle string
	creds  *bundle.Credentials
	client *netnstest.Host // a namespace on the segment for the test's clients
	hosts  []*platformHost
}

type platformHost struct {
	ns    *netnstest.Host
	dir   string
	cmd   *exec.Cmd
	done  chan struct{}
	id    string
	jobID string
}

func newPlatform(t *testing.T, n int) *platform {
	seg := netnstest.New(t, "plct", "10.78.0")
	p := &platform{t: t, seg: seg, bin: plinthBinary(t), dir: t.TempDir()}
	b, err := bundle.Create("test")
	if err != nil {
		t.Fatal(err)
	}
	if p.creds, err = b.IssueClient("admin", time.Hour); err != nil {
		t.Fatal(err)
	}
	data, _ := b.Marshal()
	p.bundle = filepath.Join(p.dir, "bundle.toml")
	if err := bundle.WriteFile(p.bundle, data); err != nil {
		t.Fatal(err)
	}
	p.client = seg.AddHost(99)
	for i := 1; i <= n; i++ {
		ph := &platformHost{ns: seg.AddHost(i), dir: filepath.Join(p.dir, fmt.Sprintf("h%d", i))}
		ph.jobID = fmt.Sprintf("plinth-controller-h%d-%d", i, os.Getpid())
		p.hosts = append(p.hosts, ph)
		p.startHostd(ph)
	}
	t.Cleanup(p.cleanup)
	return p
}

func (p *platform) startHostd(ph *platformHost) {
	t := p.t
	t.Helper()
	var seeds []string
	for i := range p.hosts {
		seeds = append(seeds, fmt.Sprintf("10.78.0.%d", i+1))
	}
	cmd := p.seg.Command(ph.ns, p.bin, "hostd", "--state-dir", filepath.Join(ph.dir, "host"), "--run-dir", filepath.Join(ph.dir, "run"),
		"--bundle", p.bundle, "--join", strings.Join(seeds, ","), "--roles", RoleController, "--hostname", ph.ns.Name,
		"--container-network=false")
	log, err := os.OpenFile(filepath.Join(p.dir, ph.ns.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ph.cmd, ph.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); log.Close(); close(done) }(ph.done)
	waitFor(t, ph.ns.Name+"'s host API", 30*time.Second, func() error {
		info, err := p.hostClient(ph).Host(ctxT(t, 2*time.Second))
		ph.id = info.ID
		return err
	})
}

// killHostd signals hostd and waits for it to end.
func (p *platform) killHostd(ph *platformHost, sig syscall.Signal) {
	if ph.cmd == nil {
		return
	}
	ph.cmd.Process.Signal(sig)
	select {
	case <-ph.done:
	case <-time.After(15 * time.Second):
		ph.cmd.Process.Kill()
		<-ph.done
	}
	ph.cmd = nil
}

// hostClient calls ph's host API from the client namespace.
func (p *platform) hostClient(ph *platformHost) *host.Client {
	return host.NewClientTransport(ph.ns.Addr, &http.Transport{TLSClientConfig: p.creds.TLS(), DialContext: p.seg.DialContext(p.client)})
}

// controllers is a client of every host's controller.
func (p *platform) controllers(hosts ...*platformHost) *Client {
	if len(hosts) == 0 {
		hosts = p.hosts
	}
	var addrs []string
	for _, ph := range hosts {
		addrs = append(addrs, net.JoinHostPort(ph.ns.Addr, strconv.Itoa(DefaultAPIPort)))
	}
	return NewClientTransport(addrs, &http.Transport{TLSClientConfig: p.creds.TLS(), DialContext: p.seg.DialContext(p.client)})
}

func (p *platform) startController(ph *platformHost) {
	p.t.Helper()
	spec := JobSpec(p.bin, len(p.hosts), filepath.Join(ph.dir, "controller"))
	spec.ID = ph.jobID // every host's jobs share this kernel's cgroup tree
	if _, err := p.hostClient(ph).CreateJob(ctxT(p.t, 30*time.Second), spec); err != nil {
		p.t.Fatalf("%s: create controller job: %v", ph.ns.Name, err)
	}
}

// controllerPid is the PID of ph's controller job, 0 if not running.
func (p *platform) controllerPid(ph *platformHost) int {
	j, err := p.hostClient(ph).Job(ctxT(p.t, 5*time.Second), ph.jobID)
	if err != nil {
		return 0
	}
	return j.Status.Pid
}

// powerCut ends ph as a power cut would: hostd and its controller get
// SIGKILL, and its link goes down.
func (p *platform) powerCut(ph *platformHost) {
	pid := p.controllerPid(ph)
	p.killHostd(ph, syscall.SIGKILL)
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	p.seg.Run("ip", "-n", ph.ns.NS, "link", "set", "eth0", "down")
}

// powerOn brings ph's link up and starts hostd, which restores its jobs.
func (p *platform) powerOn(ph *platformHost) {
	p.seg.Run("ip", "-n", ph.ns.NS, "link", "set", "eth0", "up")
	p.startHostd(ph)
}

func (p *platform) cleanup() {
	for _, ph := range p.hosts {
		if ph.cmd != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			p.hostClient(ph).RemoveJob(ctx, ph.jobID, true)
			cancel()
			p.killHostd(ph, syscall.SIGTERM)
		}
	}
}

func (p *platform) logs() string {
	var b strings.Builder
	for _, ph := range p.hosts {
		data, _ := os.ReadFile(filepath.Join(p.dir, ph.ns.Name+".log"))
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 25 {
			lines = lines[len(lines)-25:]
		}
		fmt.Fprintf(&b, "--- %s %s (last lines)\n%s\n", ph.ns.Name, ph.id, strings.Join(lines, "\n"))
	}
	return b.String()
}

// healthy waits until a controller reports one leader and every voter
// healthy, with want voters, and returns the status.
func (p *platform) healthy(want int, timeout time.Duration) Status {
	p.t.Helper()
	var st Status
	deadline := time.Now().Add(timeout)
	for {
		var err error
		st, err = p.controllers().Status(ctxT(p.t, 5*time.Second))
		if err == nil && len(st.Voters) == want && st.Healthy() {
			return st
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("controller not healthy with %d voters within %v: %+v %v\n%s", want, timeout, st, err, p.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (p *platform) byID(id string) *platformHost {
	for _, ph := range p.hosts {
		if ph.id == id {
			return ph
		}
	}
	p.t.Fatalf("no host %s", id)
	return nil
}

// writeLoop writes counter settings for d, one at a time, calling during
// once after the first tenth, and returns the acknowledged values and the
// highest index acknowledged.
func writeLoop(t *testing.T, c *Client, prefix string, d time.Duration, during func()) (acked []int, last uint64) {
	start := time.Now()
	called := false
	for i := 0; time.Since(start) < d && i < 100000; i++ {
		if !called && time.Since(start) > d/10 {
			during()
			called = true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		s, err := c.PutSetting(ctx, fmt.Sprintf("%s-%06d", prefix, i), strconv.Itoa(i), nil)
		cancel()
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		acked, last = append(acked, i), max(last, s.ModifyIndex)
	}
	return acked, last
}

// checkAcked fails unless every acknowledged counter value is stored.
func checkAcked(t *testing.T, c *Client, prefix string, acked []int, last uint64) {
	t.Helper()
	settings, _, err := c.Settings(ctxT(t, 15*time.Second), QueryOptions{Index: last - 1, Wait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, s := range settings {
		have[s.Key] = true
	}
	lost := 0
	for _, i := range acked {
		if !have[fmt.Sprintf("%s-%06d", prefix, i)] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged writes lost", lost, len(acked))
	}
}

func TestControllerJobsSurviveKillsRestartsAndMoves(t *testing.T) {
	p := newPlatform(t, 3)
	for _, ph := range p.hosts {
		p.startController(ph)
	}
	st := p.healthy(3, 90*time.Second)
	t.Logf("3 voters, leader %s", st.Leader)

	// SIGKILL the leader's controller while a client writes: a new
	// leader within seconds, and no acknowledged write lost.
	old := p.byID(st.Leader)
	var killed time.Time
	acked, last := writeLoop(t, p.controllers(), "kill", 8*time.Second, func() {
		if err := p.hostClient(old).SignalJob(ctxT(t, 5*time.Second), old.jobID, "KILL"); err != nil {
			t.Fatal(err)
		}
		killed = time.Now()
	})
	checkAcked(t, p.controllers(), "kill", acked, last)
	st = p.healthy(3, 60*time.Second)
	t.Logf("after SIGKILL of the leader: %d writes acknowledged, leader now %s; all 3 voters healthy %.1fs after the kill", len(acked), st.Leader, time.Since(killed).Seconds())

	// A follower's host loses power: writes go on; it comes back and is a
	// voter again.
	var follower *platformHost
	for _, ph := range p.hosts {
		if ph.id != st.Leader {
			follower = ph
		}
	}
	p.powerCut(follower)
	var others []*platformHost
	for _, ph := range p.hosts {
		if ph != follower {
			others = append(others, ph)
		}
	}
	for i := range 5 {
		if _, err := p.controllers(others...).PutSetting(ctxT(t, 10*time.Second), fmt.Sprintf("follower-down-%d", i), "x", nil); err != nil {
			t.Fatalf("write %d with a follower's host down: %v", i, err)
		}
	}
	p.powerOn(follower)
	st = p.healthy(3, 60*time.Second)

	// A host gets a new address: it stays the same voter.
	var mover *platformHost
	for _, ph := range p.hosts {
		if ph.id != st.Leader {
			mover = ph
		}
	}
	p.seg.MoveHost(mover.ns, 50)
	waitFor(t, "the moved host's voter at its new address", 60*time.Second, func() error {
		s, err := p.controllers().Status(ctxT(t, 5*time.Second))
		if err != nil {
			return err
		}
		for _, v := range s.Voters {
			if v.ID == mover.id {
				if !strings.HasPrefix(v.API, mover.ns.Addr+":") || !v.Healthy || len(s.Voters) != 3 {
					return fmt.Errorf("voter %+v", v)
				}
				return nil
			}
		}
		return fmt.Errorf("%s is not a voter: %+v", mover.id, s.Voters)
	})
	if _, err := p.controllers().PutSetting(ctxT(t, 10*time.Second), "after-move", "x", nil); err != nil {
		t.Fatal(err)
	}

	// Every host loses power at once and comes back: same state, a leader
	// elected with no help.
	before, _, err := p.controllers().Settings(ctxT(t, 10*time.Second), QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ph := range p.hosts {
		p.powerCut(ph)
	}
	for _, ph := range p.hosts {
		p.powerOn(ph)
	}
	st = p.healthy(3, 90*time.Second)
	after, _, err := p.controllers().Settings(ctxT(t, 10*time.Second), QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) || fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("after a cold start: %d settings, before %d", len(after), len(before))
	}
	t.Logf("cold start: leader %s, %d settings intact", st.Leader, len(after))
}
