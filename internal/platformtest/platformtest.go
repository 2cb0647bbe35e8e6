// Package platformtest runs the platform as it runs on machines, for
// host-level tests: real plinth hostd processes, one per network
// namespace on a test segment (internal/netnstest), from a plinth binary
// built for the test run, with platform services started as their jobs.
// It needs root and the Go toolchain.
package platformtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/netnstest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/discovery"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// Main runs a test package's tests and removes the binary Binary built;
// call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// Binary builds cmd/plinth once per test run and returns its path: in
// the user's cache directory, on the root filesystem that system-rootfs
// jobs run on (their /tmp, /run and /var are their own).
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			binErr = err
			return
		}
		if err := os.MkdirAll(filepath.Join(cache, "plinth-test"), 0o755); err != nil {
			binErr = err
			return
		}
		if binDir, binErr = os.MkdirTemp(filepath.Join(cache, "plinth-test"), "bin-"); binErr != nil {
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

// Platform is a segment of hosts that each run hostd.
type Platform struct {
	t   *testing.T
	Seg *netnstest.Segment
	// Bin is the plinth binary.
	Bin    string
	dir    string
	bundle string
	// Creds are admin credentials of the cluster.
	Creds *bundle.Credentials
	// Client is a namespace on the segment for the test's own clients.
	Client *netnstest.Host
	Hosts  []*Host

	mu   sync.Mutex
	jobs []string // IDs of every job the test made, for the cleanup
}

// Host is one host of the platform.
type Host struct {
	NS *netnstest.Host
	// Dir holds hostd's state and the services' data.
	Dir  string
	cmd  *exec.Cmd
	done chan struct{}
	// ID is the node ID.
	ID string
	// ControllerJob and DiscoveryJob are the IDs of its platform jobs:
	// unique on this machine, since every host's jobs share one cgroup
	// tree.
	ControllerJob, DiscoveryJob string
}

// New starts n hosts with the role controller on a segment whose
// addresses are <subnet>.1 to .n; tag keeps the namespace names of test
// packages apart.
func New(t *testing.T, tag, subnet string, n int) *Platform {
	seg := netnstest.New(t, tag, subnet)
	p := &Platform{t: t, Seg: seg, Bin: Binary(t), dir: t.TempDir()}
	b, err := bundle.Create("test")
	if err != nil {
		t.Fatal(err)
	}
	if p.Creds, err = b.IssueClient("admin", time.Hour); err != nil {
		t.Fatal(err)
	}
	data, _ := b.Marshal()
	p.bundle = filepath.Join(p.dir, "bundle.toml")
	if err := bundle.WriteFile(p.bundle, data); err != nil {
		t.Fatal(err)
	}
	p.Client = seg.AddHost(99)
	var seeds []string
	for i := 1; i <= n; i++ {
		seeds = append(seeds, fmt.Sprintf("%s.%d", subnet, i))
	}
	for i := 1; i <= n; i++ {
		h := &Host{NS: seg.AddHost(i), Dir: filepath.Join(p.dir, fmt.Sprintf("h%d", i))}
		h.ControllerJob = fmt.Sprintf("plinth-controller-h%d-%d", i, os.Getpid())
		h.DiscoveryJob = fmt.Sprintf("plinth-discovery-h%d-%d", i, os.Getpid())
		p.Hosts = append(p.Hosts, h)
	}
	for _, h := range p.Hosts {
		p.startHostd(h, seeds)
	}
	t.Cleanup(p.cleanup)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(p.Logs())
		}
	})
	return p
}

func (p *Platform) startHostd(h *Host, seeds []string) {
	t := p.t
	t.Helper()
	cmd := p.Seg.Command(h.NS, p.Bin, "hostd", "--state-dir", filepath.Join(h.Dir, "host"), "--run-dir", filepath.Join(h.Dir, "run"),
		"--bundle", p.bundle, "--join", strings.Join(seeds, ","), "--advertise", "eth0", "--roles", controller.RoleController, "--hostname", h.NS.Name,
		"--container-network=false", "--job-dns")
	log, err := os.OpenFile(filepath.Join(p.dir, h.NS.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.cmd, h.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); log.Close(); close(done) }(h.done)
	testwait.For(t, h.NS.Name+"'s host API", 30*time.Second, func() error {
		info, err := p.HostClient(h).Host(testwait.Ctx(t, 2*time.Second))
		h.ID = info.ID
		return err
	})
}

// KillHostd signals hostd and waits for it to end.
func (p *Platform) KillHostd(h *Host, sig syscall.Signal) {
	if h.cmd == nil {
		return
	}
	h.cmd.Process.Signal(sig)
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
	}
	h.cmd = nil
}

// HostClient calls h's host API from the client namespace.
func (p *Platform) HostClient(h *Host) *host.Client {
	return host.NewClientTransport(h.NS.Addr, &http.Transport{TLSClientConfig: p.Creds.TLS(), DialContext: p.Seg.DialContext(p.Client)})
}

// Controllers is a client of the given hosts' controllers (all when none
// given).
func (p *Platform) Controllers(hosts ...*Host) *controller.Client {
	if len(hosts) == 0 {
		hosts = p.Hosts
	}
	var addrs []string
	for _, h := range hosts {
		addrs = append(addrs, net.JoinHostPort(h.NS.Addr, strconv.Itoa(controller.DefaultAPIPort)))
	}
	return controller.NewClientTransport(addrs, &http.Transport{TLSClientConfig: p.Creds.TLS(), DialContext: p.Seg.DialContext(p.Client)})
}

// StartController creates h's controller job, as `plinth controller
// start-jobs` does.
func (p *Platform) StartController(h *Host) {
	p.t.Helper()
	spec := controller.JobSpec(p.Bin, len(p.Hosts), filepath.Join(h.Dir, "controller"))
	spec.ID = h.ControllerJob
	p.CreateJob(h, spec)
}

// StartDiscovery creates h's discovery agent job, as `plinth controller
// start-jobs` does.
func (p *Platform) StartDiscovery(h *Host) {
	p.t.Helper()
	spec := discovery.JobSpec(p.Bin)
	spec.ID = h.DiscoveryJob
	p.CreateJob(h, spec)
}

// track records a job ID for the cleanup.
func (p *Platform) track(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.jobs = append(p.jobs, id)
}

// CreateJob creates a job on h, failing the test if it cannot.
func (p *Platform) CreateJob(h *Host, spec job.Spec) job.Job {
	p.t.Helper()
	p.track(spec.ID)
	j, err := p.HostClient(h).CreateJob(testwait.Ctx(p.t, 30*time.Second), spec)
	if err != nil {
		p.t.Fatalf("%s: create job %s: %v", h.NS.Name, spec.ID, err)
	}
	return j
}

// jobPids are the PIDs of h's running jobs.
func (p *Platform) jobPids(h *Host) []int {
	jobs, err := p.HostClient(h).Jobs(testwait.Ctx(p.t, 5*time.Second))
	if err != nil {
		return nil
	}
	var pids []int
	for _, j := range jobs {
		if j.Status.Pid > 0 {
			pids = append(pids, j.Status.Pid)
		}
	}
	return pids
}

// PowerCut ends h as a power cut would: hostd and every job get SIGKILL,
// and its link goes down.
func (p *Platform) PowerCut(h *Host) {
	pids := p.jobPids(h)
	p.KillHostd(h, syscall.SIGKILL)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	p.Seg.Run("ip", "-n", h.NS.NS, "link", "set", "eth0", "down")
}

// PowerOn brings h's link up and starts hostd, which restores its jobs.
func (p *Platform) PowerOn(h *Host) {
	p.Seg.Run("ip", "-n", h.NS.NS, "link", "set", "eth0", "up")
	var seeds []string
	for _, o := range p.Hosts {
		seeds = append(seeds, o.NS.Addr)
	}
	p.startHostd(h, seeds)
}

func (p *Platform) cleanup() {
	for _, h := range p.Hosts {
		if h.cmd == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if jobs, err := p.HostClient(h).Jobs(ctx); err == nil {
			for _, j := range jobs {
				p.HostClient(h).RemoveJob(ctx, j.Spec.ID, true)
			}
		}
		cancel()
		p.KillHostd(h, syscall.SIGTERM)
	}
	p.killJobs()
	p.unmountAll()
}

// killJobs kills what is left in the cgroups of the test's jobs (hostd
// leaves running containers behind when it stops, to adopt them when it
// starts again; a host the test could not reach kept its jobs) and
// removes those cgroups.
func (p *Platform) killJobs() {
	for _, id := range p.jobs {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/plinth/" + id)
		if st, err := os.Stat("/sys/fs/cgroup/plinth/" + id); err == nil && st.IsDir() {
			dirs = append(dirs, "/sys/fs/cgroup/plinth/"+id)
		}
		for _, dir := range dirs {
			for range 50 {
				data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
				pids := strings.Fields(string(data))
				for _, pid := range pids {
					if n, err := strconv.Atoi(pid); err == nil {
						syscall.Kill(n, syscall.SIGKILL)
					}
				}
				if len(pids) == 0 && syscall.Rmdir(dir) == nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

// unmountAll detaches what hostd left mounted under the test's directory
// (the read-only bind of / that system-rootfs jobs run on, overlays), so
// that removing the directory never walks into them.
func (p *Platform) unmountAll() {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		p.t.Error(err)
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], p.dir+"/") {
			points = append(points, f[4])
		}
	}
	// Deepest first.
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, m := range points {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			p.t.Errorf("unmount %s: %v", m, err)
		}
	}
}

// Logs returns the end of every hostd's log, for failure messages.
func (p *Platform) Logs() string {
	var b strings.Builder
	for _, h := range p.Hosts {
		data, _ := os.ReadFile(filepath.Join(p.dir, h.NS.Name+".log"))
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 25 {
			lines = lines[len(lines)-25:]
		}
		fmt.Fprintf(&b, "--- %s %s (last lines)\n%s\n", h.NS.Name, h.ID, strings.Join(lines, "\n"))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for _, id := range []string{h.ControllerJob, h.DiscoveryJob} {
			if h.cmd == nil {
				break
			}
			j, err := p.HostClient(h).Job(ctx, id)
			if err != nil {
				continue
			}
			fmt.Fprintf(&b, "  job %s: %s pid %d restarts %d exit %+v %s\n", id, j.Status.State, j.Status.Pid, j.Status.Restarts, j.Status.Exit, j.Status.Error)
			p.HostClient(h).JobLogs(ctx, id, job.LogOptions{Tail: 15}, func(l job.LogLine) error {
				fmt.Fprintf(&b, "    %s\n", l.Text)
				return nil
			})
		}
		cancel()
	}
	return b.String()
}

// Healthy waits until a controller reports one leader and want voters,
// all healthy, and returns the status.
func (p *Platform) Healthy(want int, timeout time.Duration) controller.Status {
	p.t.Helper()
	var st controller.Status
	deadline := time.Now().Add(timeout)
	for {
		var err error
		st, err = p.Controllers().Status(testwait.Ctx(p.t, 5*time.Second))
		if err == nil && len(st.Voters) == want && st.Healthy() {
			return st
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("controller not healthy with %d voters within %v: %+v %v\n%s", want, timeout, st, err, p.Logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ByID returns the host with node ID id.
func (p *Platform) ByID(id string) *Host {
	for _, h := range p.Hosts {
		if h.ID == id {
			return h
		}
	}
	p.t.Fatalf("no host %s", id)
	return nil
}
