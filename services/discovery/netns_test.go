package discovery_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

// TestDiscoveryOnThreeHosts runs the platform as on machines: three real
// hostd processes in network namespaces, each with a controller and a
// discovery agent as jobs; a web job on h1 declares a service with a
// command health check; a client job on h2 resolves it through its own
// host's agent (its /etc/resolv.conf from hostd).
func TestDiscoveryOnThreeHosts(t *testing.T) {
	p := platformtest.New(t, "pldi", "10.79.0", 3)
	for _, h := range p.Hosts {
		p.StartController(h)
		p.StartDiscovery(h)
	}
	p.Healthy(3, 90*time.Second)
	h1, h2 := p.Hosts[0], p.Hosts[1]
	webID := fmt.Sprintf("web-%s", h1.ControllerJob)
	clientID := fmt.Sprintf("client-%s", h2.ControllerJob)
	// The web job's health is a file in its private /tmp, which the test
	// creates and removes inside it.
	p.CreateJob(h1, job.Spec{
		ID: webID, Rootfs: job.SystemRootfs, Network: job.NetworkHost,
		Cmd: []string{"/bin/busybox", "sh", "-c", "touch /tmp/healthy && exec /bin/busybox httpd -f -p 18080 -h /etc"},
		Services: []job.Service{{Name: "web", Port: 18080, Check: &job.Check{
			Type: job.CheckCommand, Command: []string{"/bin/busybox", "test", "-e", "/tmp/healthy"},
			Interval: job.Duration{Duration: 500 * time.Millisecond}, Timeout: job.Duration{Duration: 400 * time.Millisecond},
		}}},
	})
	p.CreateJob(h2, job.Spec{ID: clientID, Rootfs: job.SystemRootfs, Network: job.NetworkHost, Cmd: []string{"/bin/busybox", "sleep", "3600"}})

	exec := func(h *platformtest.Host, id string, cmd ...string) job.ExecResult {
		t.Helper()
		r, err := p.HostClient(h).ExecJob(testwait.Ctx(t, 10*time.Second), id, cmd, 5*time.Second)
		if err != nil {
			t.Fatalf("exec %v in %s: %v", cmd, id, err)
		}
		return r
	}
	// resolves reports whether web.plinth resolves to h1 from inside the
	// client job on h2.
	resolves := func() (bool, string) {
		r := exec(h2, clientID, "/bin/busybox", "nslookup", "web.plinth")
		return r.ExitCode == 0 && strings.Contains(r.Output, h1.NS.Addr), r.Output
	}
	waitName := func(what string, want bool, timeout time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		testwait.For(t, what, timeout, func() error {
			if ok, out := resolves(); ok != want {
				return fmt.Errorf("nslookup web.plinth from h2: %s", out)
			}
			return nil
		})
		return time.Since(start)
	}
	waitName("web.plinth resolves to h1 from a job on h2", true, 60*time.Second)

	// The instance and its leader are in the controller.
	services, _, err := p.Controllers().Services(testwait.Ctx(t, 5*time.Second), controller.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(services) != 1 || services[0].Name != "web" || services[0].Leader != controller.InstanceID(h1.ID, webID, "web") {
		t.Fatalf("services %+v", services)
	}

	// The check fails: the name drops the instance.
	exec(h1, webID, "/bin/busybox", "rm", "/tmp/healthy")
	took := waitName("web.plinth dropped after its check failed", false, 30*time.Second)
	t.Logf("unhealthy instance dropped from DNS %.1fs after its check began failing", took.Seconds())
	exec(h1, webID, "/bin/busybox", "touch", "/tmp/healthy")
	waitName("web.plinth back after its check passed", true, 30*time.Second)

	// Its host dies: the name drops it within the failure detection time
	// (Serf's, about 2 s; the agent follows its own host's view, so a
	// controller election does not add to it).
	p.PowerCut(h1)
	took = waitName("web.plinth dropped after h1's power cut", false, 30*time.Second)
	t.Logf("instance of a dead host dropped from DNS %.1fs after the power cut", took.Seconds())
	if took > 8*time.Second {
		t.Errorf("a dead host's instance stayed in DNS for %v", took)
	}

	// Bad queries get DNS errors, the agent stays up.
	r := exec(h2, clientID, "/bin/busybox", "nslookup", "no-such-service.plinth")
	if r.ExitCode == 0 || !strings.Contains(strings.ToLower(r.Output), "nxdomain") && !strings.Contains(r.Output, "can't find") {
		t.Errorf("unknown name: exit %d %s", r.ExitCode, r.Output)
	}
	if r := exec(h2, clientID, "/bin/busybox", "nslookup", "controller.plinth"); r.ExitCode != 0 || !strings.Contains(r.Output, h2.NS.Addr) {
		t.Errorf("controller.plinth: exit %d %s", r.ExitCode, r.Output)
	}
}

func TestMain(m *testing.M) { platformtest.Main(m) }
