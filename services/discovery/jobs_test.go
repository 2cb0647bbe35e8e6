package discovery

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

func runningJob(id, network string, ip netip.Addr, services ...job.Service) job.Job {
	return job.Job{
		Spec:   job.Spec{ID: id, Network: network, Services: services},
		Status: job.Status{State: job.StateRunning, IP: ip},
	}
}

func TestTargets(t *testing.T) {
	self := host.HostInfo{ID: "h1", API: "192.0.2.10:4443"}
	bridgeIP := netip.MustParseAddr("10.88.0.5")
	httpCheck := &job.Check{Type: "http", Path: "/healthz", Status: 204, Interval: job.Duration{Duration: time.Second}}
	stopped := runningJob("old", job.NetworkHost, netip.Addr{}, job.Service{Name: "old", Port: 1})
	stopped.Status.State = job.StateExited
	ts, skipped := targets(self, []job.Job{
		runningJob("web-1", job.NetworkHost, netip.Addr{}, job.Service{Name: "web", Port: 8080, Check: httpCheck}),
		runningJob("db-1", job.NetworkBridge, bridgeIP,
			job.Service{Name: "db", Port: 5432, Check: &job.Check{Type: "command", Command: []string{"pg_isready"}}},
			job.Service{Name: "db-metrics", Port: 9187, Proto: "udp"}),
		runningJob("lonely", job.NetworkNone, netip.Addr{}, job.Service{Name: "lonely", Port: 1}),
		runningJob("plain", job.NetworkHost, netip.Addr{}),
		runningJob("unaddressed", job.NetworkBridge, netip.Addr{}, job.Service{Name: "x", Port: 1}),
		stopped,
	})
	want := []target{
		{id: "h1/web-1/web", service: "web", job: "web-1", proto: "tcp", addr: netip.MustParseAddrPort("192.0.2.10:8080"),
			check: check{kind: "http", path: "/healthz", status: 204, interval: time.Second, timeout: time.Second}},
		{id: "h1/db-1/db", service: "db", job: "db-1", proto: "tcp", addr: netip.MustParseAddrPort("10.88.0.5:5432"),
			check: check{kind: "command", command: []string{"pg_isready"}, interval: job.DefaultCheckInterval, timeout: job.DefaultCheckTimeout}},
		{id: "h1/db-1/db-metrics", service: "db-metrics", job: "db-1", proto: "udp", addr: netip.MustParseAddrPort("10.88.0.5:9187")},
	}
	if len(ts) != len(want) {
		t.Fatalf("targets %+v, want %+v", ts, want)
	}
	for i := range want {
		if !ts[i].equal(want[i]) {
			t.Errorf("target %d: %+v, want %+v", i, ts[i], want[i])
		}
	}
	if len(skipped) != 2 || skipped["lonely"] == "" || skipped["unaddressed"] == "" {
		t.Errorf("skipped %q, want lonely and unaddressed", skipped)
	}
}

// TestAgent runs an agent on a fake host with real listeners on
// loopback, and a fake controller: checks flip, the agent reports each
// change, and its DNS answers follow the controller.
func TestAgent(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
	}))
	defer web.Close()
	webPort := web.Listener.Addr().(*net.TCPAddr).Port
	// A bridge job answers on its own address: 127.0.0.2 stands for it.
	db, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	dbPort := db.Addr().(*net.TCPAddr).Port

	ctl := newFakeController()
	ctl.update(func() { ctl.services = []controller.Service{{Name: "web"}, {Name: "db"}} })
	h := newFakeHost(t, host.HostInfo{ID: "h1", API: "127.0.0.1:4443"})
	// Checks every 10 ms; their timeout is longer than that (hostd
	// would refuse it) so that a check slowed down by the race detector
	// does not fail for it.
	fast := job.Duration{Duration: 10 * time.Millisecond}
	jobs := []job.Job{
		runningJob("web-1", job.NetworkHost, netip.Addr{},
			job.Service{Name: "web", Port: webPort, Check: &job.Check{Type: "http", Path: "/", Interval: fast, Timeout: job.Duration{Duration: testWait}}}),
		runningJob("db-1", job.NetworkBridge, netip.MustParseAddr("127.0.0.2"),
			job.Service{Name: "db", Port: dbPort, Check: &job.Check{Type: "tcp", Interval: fast, Timeout: job.Duration{Duration: testWait}}},
			job.Service{Name: "admin", Port: 9999}),
		runningJob("batch", job.NetworkNone, netip.Addr{}, job.Service{Name: "batch", Port: 1}),
	}
	h.setJobs("started", jobs...)
	a := startAgent(t, testConfig(t, h, ctl))
	addr := a.DNSAddr().String()

	healthy := func(r report) map[string]bool {
		m := map[string]bool{}
		for _, in := range r.instances {
			m[in.ID] = in.Healthy
		}
		return m
	}
	r := ctl.waitReport(t, "with every instance healthy", func(r report) bool {
		h := healthy(r)
		return len(h) == 3 && h["h1/web-1/web"] && h["h1/db-1/db"] && h["h1/db-1/admin"]
	})
	for _, in := range r.instances {
		want := map[string]string{
			"h1/web-1/web":  "127.0.0.1:" + strconv.Itoa(webPort),
			"h1/db-1/db":    "127.0.0.2:" + strconv.Itoa(dbPort),
			"h1/db-1/admin": "127.0.0.2:9999",
		}[in.ID]
		if in.Addr != want || in.Host != "h1" || in.Proto != "tcp" {
			t.Errorf("instance %+v, want addr %s on h1 over tcp", in, want)
		}
	}
	ctl.waitSynced(t)
	if got := answerStrings(ask(t, "udp", addr, "web.plinth.", dns.TypeA)); !slices.Equal(got, []string{"web.plinth.\t5\tIN\tA\t127.0.0.1"}) {
		t.Errorf("web.plinth with web-1 healthy: %q", got)
	}

	// The web server starts failing: the agent reports it, and the name
	// loses its address.
	status.Store(500)
	r = ctl.waitReport(t, "with web unhealthy", func(r report) bool { h := healthy(r); return len(h) == 3 && !h["h1/web-1/web"] })
	for _, in := range r.instances {
		if in.ID == "h1/web-1/web" && in.Output != "http 500, want 200" {
			t.Errorf("output %q, want the status", in.Output)
		}
	}
	ctl.waitSynced(t)
	if m := ask(t, "tcp", addr, "web.plinth.", dns.TypeA); len(m.Answer) != 0 || m.Rcode != dns.RcodeSuccess {
		t.Errorf("web.plinth with web-1 unhealthy: %v", m)
	}
	status.Store(200)
	ctl.waitReport(t, "with web healthy again", func(r report) bool { return healthy(r)["h1/web-1/web"] })

	// The database stops listening.
	db.Close()
	ctl.waitReport(t, "with db unhealthy", func(r report) bool { h := healthy(r); return len(h) == 3 && !h["h1/db-1/db"] })

	// The database job exits: its instances go.
	jobs[1].Status.State = job.StateExited
	h.setJobs("exited", jobs...)
	r = ctl.waitReport(t, "without db-1's instances", func(r report) bool { return len(r.instances) == 1 })
	if r.instances[0].ID != "h1/web-1/web" {
		t.Errorf("left %+v, want web-1's", r.instances)
	}
}

// A command check runs inside the job, through the host API.
func TestAgentCommandCheck(t *testing.T) {
	var exit atomic.Int32
	ctl := newFakeController()
	h := newFakeHost(t, host.HostInfo{ID: "h1", API: "127.0.0.1:4443"})
	fast := 10 * time.Millisecond
	h.exec = func(id string, cmd []string, timeout time.Duration) (job.ExecResult, error) {
		if id != "q-1" || !slices.Equal(cmd, []string{"rabbitmq-diagnostics", "ping"}) || timeout != fast {
			return job.ExecResult{}, fmt.Errorf("exec %s %q %s, want the check's", id, cmd, timeout)
		}
		if exit.Load() == 137 {
			return job.ExecResult{ExitCode: 137, TimedOut: true}, nil
		}
		return job.ExecResult{ExitCode: int(exit.Load()), Output: "checked " + id + "\nmore\n"}, nil
	}
	h.setJobs("started", runningJob("q-1", job.NetworkHost, netip.Addr{}, job.Service{Name: "queue", Port: 5672, Check: &job.Check{
		Type: "command", Command: []string{"rabbitmq-diagnostics", "ping"},
		Interval: job.Duration{Duration: fast}, Timeout: job.Duration{Duration: fast},
	}}))
	startAgent(t, testConfig(t, h, ctl))
	output := func(healthy bool, out string) func(report) bool {
		return func(r report) bool {
			return len(r.instances) == 1 && r.instances[0].Healthy == healthy && r.instances[0].Output == out
		}
	}
	ctl.waitReport(t, "with the queue healthy", output(true, "exit 0: checked q-1"))
	exit.Store(137)
	ctl.waitReport(t, "with the check killed", output(false, "command check: killed after 10ms"))
	exit.Store(0)
	ctl.waitReport(t, "with the queue healthy again", output(true, "exit 0: checked q-1"))
	exit.Store(1)
	ctl.waitReport(t, "with the queue unhealthy", output(false, "exit 1: checked q-1"))
}
