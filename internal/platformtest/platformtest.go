// Package platformtest runs the platform as it runs on machines, for
// host-level tests: real plinth hostd processes, one per network
// namespace on a test segment (internal/netnstest), from a plinth binary
// built for the test run, with platform services started as their jobs.
// It needs root and the Go toolchain.
package platformtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// Binary builds cmd/plinth (and Echoback) once per test run and returns its path: in
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
		for _, pkg := range []string{"cmd/plinth", "internal/echoback"} {
			out, err := exec.Command("go", "build", "-o", binDir, "github.com/plinth-os/plinth/"+pkg).CombinedOutput()
			if err != nil {
				binErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "plinth")
}

// Echoback is the path of internal/echoback, a test backend, built with
// the binary.
func Echoback(t testing.TB) string { return filepath.Join(filepath.Dir(Binary(t)), "echoback") }

// Platform is a segment of hosts that each run hostd.
type Platform struct {
	t   testing.TB
	Seg *netnstest.Segment
	// Bin is the plinth binary.
	Bin    string
	dir    string
	bundle string
	// Creds are admin credentials of the cluster, in CredsFile too.
	Creds     *bundle.Credentials
	CredsFile string
	// Client is a namespace on the segment for the test's own clients.
	Client *netnstest.Host
	Hosts  []*Host

	containerNetwork bool
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
	// Cgroup is the cgroup its jobs' cgroups go under, its own, so job
	// IDs need be unique only per host as on machines.
	Cgroup string
	// ControllerJob and DiscoveryJob are the IDs of its platform jobs.
	ControllerJob, DiscoveryJob string
	// Zone is its label zone: "a" for odd host numbers, "b" for even
	// ones, for tests of constraints on labels.
	Zone string
}

// Option changes how New starts the hosts.
type Option func(*Platform)

// WithContainerNetwork gives the hosts their container bridge and the
// overlay, for bridge jobs (apps).
func WithContainerNetwork() Option {
	return func(p *Platform) { p.containerNetwork = true }
}

// New starts n hosts with the role controller on a segment whose
// addresses are <subnet>.1 to .n; tag keeps the namespace names of test
// packages apart.
func New(t testing.TB, tag, subnet string, n int, opts ...Option) *Platform {
	seg := netnstest.New(t, tag, subnet)
	p := &Platform{t: t, Seg: seg, Bin: Binary(t), dir: t.TempDir()}
	for _, o := range opts {
		o(p)
	}
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
	p.CredsFile = filepath.Join(p.dir, "client.toml")
	if data, err := p.Creds.Marshal(); err != nil {
		t.Fatal(err)
	} else if err := bundle.WriteFile(p.CredsFile, data); err != nil {
		t.Fatal(err)
	}
	var seeds []string
	for i := 1; i <= n; i++ {
		seeds = append(seeds, fmt.Sprintf("%s.%d", subnet, i))
	}
	for i := 1; i <= n; i++ {
		h := &Host{NS: seg.AddHost(i), Dir: filepath.Join(p.dir, fmt.Sprintf("h%d", i)),
			Cgroup: fmt.Sprintf("/plinth-test-%s-h%d", tag, i), ControllerJob: controller.JobID, DiscoveryJob: discovery.JobID,
			Zone: string(rune('a' + (i+1)%2))}
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
		"--container-network="+strconv.FormatBool(p.containerNetwork), "--job-dns", "--cgroup-parent", h.Cgroup, "--volume-root", filepath.Join(h.Dir, "volumes"),
		"--labels", "zone="+h.Zone)
	if p.containerNetwork {
		// Each host its own /24: hosts that start together may pick the
		// same one from their IDs' hashes (1 start in 85 for three),
		// which hostd reports but cannot mend.
		cmd.Args = append(cmd.Args, "--container-subnet", fmt.Sprintf("10.200.%d.0/24", slices.Index(p.Hosts, h)+1))
	}
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

// StartController creates h's controller job, as bootstrap's controller
// step does, for tests of the controller alone.
func (p *Platform) StartController(h *Host) {
	p.t.Helper()
	spec := controller.JobSpec(p.Bin, len(p.Hosts), filepath.Join(h.Dir, "controller"))
	spec.ID = h.ControllerJob
	p.CreateJob(h, spec)
}

// StartDiscovery creates h's discovery agent job, as bootstrap's
// discovery step does.
func (p *Platform) StartDiscovery(h *Host) {
	p.t.Helper()
	spec := discovery.JobSpec(p.Bin)
	spec.ID = h.DiscoveryJob
	p.CreateJob(h, spec)
}

// CreateJob creates a job on h, failing the test if it cannot.
func (p *Platform) CreateJob(h *Host, spec job.Spec) job.Job {
	p.t.Helper()
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

// killJobs kills what is left in the cgroups of the hosts' jobs (hostd
// leaves running containers behind when it stops, to adopt them when it
// starts again; a host the test could not reach kept its jobs) and
// removes those cgroups, deepest first.
func (p *Platform) killJobs() {
	for _, h := range p.Hosts {
		roots, _ := filepath.Glob("/sys/fs/cgroup/*" + h.Cgroup)
		if st, err := os.Stat("/sys/fs/cgroup" + h.Cgroup); err == nil && st.IsDir() {
			roots = append(roots, "/sys/fs/cgroup"+h.Cgroup)
		}
		for _, root := range roots {
			var dirs []string
			filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, path)
				}
				return nil
			})
			slices.Reverse(dirs)
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
		var jobs []job.Job
		if h.cmd != nil {
			jobs, _ = p.HostClient(h).Jobs(ctx)
		}
		for _, j := range jobs {
			id := j.Spec.ID
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

// CLI runs the plinth CLI in the client namespace with the admin
// credentials and (unless args give one) --host of the first host that
// runs, and returns its
// output (stdout and stderr) and error.
func (p *Platform) CLI(ctx context.Context, args ...string) (string, error) {
	seed := p.Hosts[0]
	for _, h := range p.Hosts {
		if h.cmd != nil {
			seed = h
			break
		}
	}
	// The flags go before a "--": what follows it is a command's.
	flags := []string{"--credentials", p.CredsFile}
	if !slices.Contains(args, "--host") {
		flags = append(flags, "--host", seed.NS.Addr)
	}
	at := len(args)
	if i := slices.Index(args, "--"); i >= 0 {
		at = i
	}
	args = slices.Concat(args[:at], flags, args[at:])
	cmd := p.Seg.Command(p.Client, p.Bin, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return out.String(), ctx.Err()
	}
}

// Bootstrap runs `plinth cluster bootstrap` for every host, as an
// operator would, with the test's binary as the platform's.
func (p *Platform) Bootstrap(timeout time.Duration) string {
	p.t.Helper()
	out, err := p.CLI(testwait.Ctx(p.t, timeout), "cluster", "bootstrap", "--expect", strconv.Itoa(len(p.Hosts)),
		"--binary", p.Bin, "--state", filepath.Join(p.dir, "bootstrap.json"), "--timeout", timeout.String())
	if err != nil {
		p.t.Fatalf("plinth cluster bootstrap: %v\n%s\n%s", err, out, p.Logs())
	}
	return out
}

// Status is what `plinth status --json` says, with its exit error.
type Status struct {
	Healthy    bool     `json:"healthy"`
	Problems   []string `json:"problems"`
	Warnings   []string `json:"warnings"`
	Controller struct {
		Leader string `json:"leader"`
	} `json:"controller"`
	Scheduler *controller.Lease `json:"scheduler"`
	Hosts     []struct {
		controller.Host
		Jobs int `json:"jobs"`
	} `json:"hosts"`
	Formations []struct {
		Name    string `json:"name"`
		Desired int    `json:"desired"`
		Running int    `json:"running"`
		Reason  string `json:"reason"`
	} `json:"formations"`
}

// PlatformStatus runs `plinth status --json`.
func (p *Platform) PlatformStatus() (Status, error) {
	var st Status
	out, err := p.CLI(testwait.Ctx(p.t, 30*time.Second), "status", "--json")
	if jerr := json.Unmarshal([]byte(out), &st); jerr != nil {
		return st, fmt.Errorf("plinth status --json: %v: %w\n%s", err, jerr, out)
	}
	if err != nil && st.Healthy {
		return st, fmt.Errorf("plinth status said healthy but failed: %w", err)
	}
	if !st.Healthy && err == nil {
		return st, errors.New("plinth status said not healthy but exited 0")
	}
	if !st.Healthy {
		return st, fmt.Errorf("not healthy: %s", strings.Join(st.Problems, "; "))
	}
	return st, nil
}

// WaitHealthy waits until `plinth status` says healthy and check (when
// given) accepts the status.
func (p *Platform) WaitHealthy(timeout time.Duration, check func(Status) error) Status {
	p.t.Helper()
	var st Status
	testwait.For(p.t, "plinth status healthy", timeout, func() error {
		var err error
		if st, err = p.PlatformStatus(); err != nil {
			return err
		}
		if check != nil {
			return check(st)
		}
		return nil
	})
	return st
}

// Running reports whether h's hostd runs (not powered off by the test).
func (p *Platform) Running(h *Host) bool { return h.cmd != nil }

// HostLog returns h's hostd log.
func (p *Platform) HostLog(h *Host) string {
	data, _ := os.ReadFile(filepath.Join(p.dir, h.NS.Name+".log"))
	return string(data)
}
