//go:build vmtest

package vmtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

// platformVMs are the VMs of a self-bootstrapping platform and their
// host API clients.
type platformVMs struct {
	t     testing.TB
	cfgs  []Config
	creds *bundle.Credentials
	vms   []*VM
	hosts []*host.Client
}

// newPlatformVMs makes the configs of n nodes with a data disk each and
// bootstrap_expect = n.
func newPlatformVMs(t testing.TB, n int) *platformVMs {
	return newPlatformVMsAt(t, n, ClusterAddr, 24)
}

// newPlatformVMsAt is newPlatformVMs with node j's cluster address
// addr(j)/bits.
func newPlatformVMsAt(t testing.TB, n int, addr func(int) string, bits int) *platformVMs {
	kernel, initrd := plinthImage(t)
	bundlePath, creds, err := ClusterFiles(t.TempDir(), "vmtest")
	if err != nil {
		t.Fatal(err)
	}
	seg := NewSegment(t)
	p := &platformVMs{t: t, creds: creds}
	for i := range n {
		disk, err := DataDisk(t.TempDir(), 512<<20)
		if err != nil {
			t.Fatal(err)
		}
		p.cfgs = append(p.cfgs, PlatformNodeAt(i, n, addr, bits, kernel, initrd, seg, bundlePath, disk))
	}
	return p
}

// boot starts every VM (again, on the same disks, after a power cut) and
// waits until each prints ready.
func (p *platformVMs) boot(ctx context.Context) {
	p.t.Helper()
	p.vms = StartN(p.t, p.cfgs...)
	p.hosts = make([]*host.Client, len(p.vms))
	errs := make([]error, len(p.vms))
	var wg sync.WaitGroup
	for i, vm := range p.vms {
		wg.Go(func() {
			if _, err := vm.WaitFor(ctx, "plinth: ready in "); err != nil {
				errs[i] = fmt.Errorf("%s: %w\n%s", vm.Name(), err, vm.ConsoleTail(30))
				return
			}
			p.hosts[i], errs[i] = HostClient(vm, p.creds)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		p.t.Fatal(err)
	}
}

// powerCut kills every QEMU at once.
func (p *platformVMs) powerCut() {
	for _, vm := range p.vms {
		vm.Kill()
	}
	for _, vm := range p.vms {
		<-vm.Exited()
	}
}

// controller is a client of node i's controller.
func (p *platformVMs) controller(i int) *controller.Client {
	vm := p.vms[i]
	return controller.NewClientTransport([]string{vm.HostAddr(ControllerAPIPort)},
		&http.Transport{TLSClientConfig: p.creds.TLS(), DialContext: vm.DialContext})
}

// alive are the host clients of the VMs still running.
func (p *platformVMs) alive() []*host.Client {
	var out []*host.Client
	for i, vm := range p.vms {
		select {
		case <-vm.Exited():
		default:
			out = append(out, p.hosts[i])
		}
	}
	return out
}

// healthy waits until plinth status says healthy and check accepts it,
// and fails the test with every console's tail if it does not.
func (p *platformVMs) healthy(ctx context.Context, what string, check func(PlatformStatus) error) PlatformStatus {
	p.t.Helper()
	st, err := WaitHealthy(ctx, p.alive(), check)
	if err != nil {
		for i, vm := range p.vms {
			p.t.Logf("%s console:\n%s", vm.Name(), vm.ConsoleTail(40))
			p.logJobs(vm.Name(), p.hosts[i])
		}
		p.t.Fatalf("%s: %v", what, err)
	}
	return st
}

// logJobs logs the state and last lines of a host's platform jobs, for a
// failure: the console shows hostd's lines only.
func (p *platformVMs) logJobs(name string, c *host.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	jobs, err := c.Jobs(ctx)
	if err != nil {
		p.t.Logf("%s: jobs: %v", name, err)
		return
	}
	for _, j := range jobs {
		p.t.Logf("%s: job %s %s pid %d restarts %d exit %+v %s", name, j.Spec.ID, j.Status.State, j.Status.Pid, j.Status.Restarts, j.Status.Exit, j.Status.Error)
		if !strings.HasPrefix(j.Spec.ID, "plinth-") && j.Spec.Tags[controller.AppTag] == "" {
			continue
		}
		c.JobLogs(ctx, j.Spec.ID, job.LogOptions{Tail: 20}, func(l job.LogLine) error {
			p.t.Logf("%s %s: %s", name, j.Spec.ID, l.Text)
			return nil
		})
	}
}

// formationJobs counts, per host ID, the running jobs of a formation on
// the alive VMs, and fails when a host does not answer.
func (p *platformVMs) formationJobs(ctx context.Context, name string) (map[string]int, error) {
	out := map[string]int{}
	for _, c := range p.alive() {
		info, err := c.Host(ctx)
		if err != nil {
			return nil, err
		}
		jobs, err := c.Jobs(ctx)
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			if j.Spec.Tags[controller.FormationTag] == name && j.Status.State == job.StateRunning {
				out[info.ID]++
			}
		}
	}
	return out, nil
}

// runsOnce checks that every formation of the platform runs once per
// host, and the web formation want times, spread.
func (p *platformVMs) runsOnce(ctx context.Context, want int) func(PlatformStatus) error {
	return func(PlatformStatus) error {
		for _, f := range []string{"controller", "scheduler", "discovery"} {
			jobs, err := p.formationJobs(ctx, f)
			if err != nil {
				return err
			}
			for h, n := range jobs {
				if n != 1 {
					return fmt.Errorf("host %s runs %d %s jobs", h, n, f)
				}
			}
			if len(jobs) != len(p.alive()) {
				return fmt.Errorf("%s runs on %d hosts of %d", f, len(jobs), len(p.alive()))
			}
		}
		web, err := p.formationJobs(ctx, "web")
		if err != nil {
			return err
		}
		total := 0
		for h, n := range web {
			if n > 1 {
				return fmt.Errorf("web runs %d jobs on %s, want them spread", n, h)
			}
			total += n
		}
		if total != want {
			return fmt.Errorf("web runs %d jobs, want %d", total, want)
		}
		return nil
	}
}

// routesServe checks, through every alive VM's router, the web
// formation's HTTP route (by Host header) and its TCP route (an HTTP
// request written by hand), as a client outside the cluster does.
func (p *platformVMs) routesServe(ctx context.Context, what string) {
	p.t.Helper()
	for _, vm := range p.vms {
		select {
		case <-vm.Exited():
			continue
		default:
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: vm.DialContext}}
		testwait.For(p.t, what+": routes through "+vm.Name(), time.Minute, func() error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+vm.HostAddr(RouterHTTPPort)+"/", nil)
			req.Host = "web.test"
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Request-Id") == "" {
				return fmt.Errorf("http route: %s, X-Request-Id %q", resp.Status, resp.Header.Get("X-Request-Id"))
			}
			c, err := vm.DialContext(ctx, "tcp", vm.HostAddr(RouteTestPort))
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprint(c, "GET / HTTP/1.0\r\n\r\n")
			status, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.Contains(status, " 200 ") {
				return fmt.Errorf("tcp route: %q %v", status, err)
			}
			return nil
		})
	}
}

// webFormation is two busybox web servers on the hosts' network, each
// with a TCP health check every second.
func webFormation() controller.Formation {
	second := job.Duration{Duration: time.Second}
	return controller.Formation{Name: "web", Count: 2, Job: job.Spec{
		Rootfs: "/var/testroot", Network: job.NetworkHost,
		Cmd: []string{"httpd", "-f", "-p", "8080", "-h", "/"},
		Services: []job.Service{{Name: "web", Port: 8080, Check: &job.Check{
			Type: job.CheckTCP, Interval: second, Timeout: job.Duration{Duration: 500 * time.Millisecond}}}},
	}}
}

// TestPlatformColdStarts: three VMs with data disks bootstrap the
// platform by themselves (bootstrap_expect); an app pushed to the
// registry is deployed and served by every VM's router; a killed VM's
// jobs run on the others; then every QEMU is killed at once and started again on the
// same disks, 3 times (10 with PLINTH_VM_ALL): every time the platform
// is healthy again with its state, and nothing runs twice. With
// PLINTH_VM_ALL an app is also git-pushed through a VM's router and built
// on the cluster (over 4 minutes under TCG, so not in make test; the
// builder's host-level test is).
func TestPlatformColdStarts(t *testing.T) {
	cycles, gitPush := 3, false
	if os.Getenv("PLINTH_VM_ALL") != "" {
		cycles, gitPush = 10, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(13+4*cycles)*time.Minute)
	defer cancel()
	p := newPlatformVMs(t, 3)
	start := time.Now()
	p.boot(ctx)
	p.healthy(ctx, "bootstrap from bootstrap_expect", nil)
	t.Logf("bootstrapped and healthy %.1fs after power-on", time.Since(start).Seconds())
	for _, vm := range p.vms {
		if !strings.Contains(vm.Console(), `msg="platform jobs up"`) {
			t.Errorf("%s: no \"platform jobs up\" line on the console", vm.Name())
		}
	}

	c := p.controller(0)
	if _, err := c.PutFormation(ctx, webFormation(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutSetting(ctx, "kept", "across power cuts", nil); err != nil {
		t.Fatal(err)
	}
	p.healthy(ctx, "web placed", p.runsOnce(ctx, 2))
	for _, r := range []controller.Route{
		{Type: controller.RouteHTTP, Service: "web", Domain: "web.test"},
		{Type: controller.RouteTCP, Service: "web", Port: RouteTestPort},
	} {
		if _, err := c.AddRoute(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	p.routesServe(ctx, "routes added")
	p.deployApp(ctx)
	p.appServes(ctx, "app deployed")
	p.appInUserNamespace(ctx)
	if gitPush {
		p.gitPushApp(ctx)
	}

	// One VM's power cut: its web job runs on another.
	web, err := p.formationJobs(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	victim := -1
	for i, hc := range p.hosts {
		info, err := hc.Host(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if web[info.ID] > 0 {
			victim = i
		}
	}
	killed := time.Now()
	p.vms[victim].Kill()
	<-p.vms[victim].Exited()
	p.healthy(ctx, "web rescheduled after a VM was killed", p.runsOnce(ctx, 2))
	t.Logf("%s killed: web rescheduled and healthy after %.1fs", p.vms[victim].Name(), time.Since(killed).Seconds())

	last := p.healthy(ctx, "before the cold starts", nil).Scheduler.Token
	for cycle := 1; cycle <= cycles; cycle++ {
		p.powerCut()
		start := time.Now()
		p.boot(ctx)
		st := p.healthy(ctx, fmt.Sprintf("cold start %d", cycle), func(st PlatformStatus) error {
			if st.Scheduler.Token == last {
				return fmt.Errorf("the scheduler of before the power cut still holds the lease")
			}
			for _, h := range st.Hosts {
				if h.Status != "alive" {
					return fmt.Errorf("host %s (%s) is %s", h.ID, h.Hostname, h.Status)
				}
			}
			return p.runsOnce(ctx, 2)(st)
		})
		s, _, err := p.controller(0).Setting(ctx, "kept", controller.QueryOptions{})
		if err != nil || s.Value != "across power cuts" {
			t.Fatalf("cold start %d: setting %+v %v", cycle, s, err)
		}
		p.routesServe(ctx, fmt.Sprintf("cold start %d", cycle))
		p.appServes(ctx, fmt.Sprintf("cold start %d", cycle))
		t.Logf("cold start %d: healthy %.1fs after power-on, scheduler %s", cycle, time.Since(start).Seconds(), st.Scheduler.Holder)
		last = st.Scheduler.Token
	}
}
