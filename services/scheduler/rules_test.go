package scheduler_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

// TestSchedulerRules runs a bootstrapped platform on three hosts through
// the rules an operator meets: a cordoned host gets no new job, a drain
// moves a host's jobs away, a formation that fits no host and one whose
// job cannot start say why in plinth status (and the scheduler keeps
// running), and bootstrap against a host that does not answer says so.
func TestSchedulerRules(t *testing.T) {
	p := platformtest.New(t, "plru", "10.76.0", 3)
	p.Bootstrap(3 * time.Minute)
	p.WaitHealthy(time.Minute, nil)
	cl := p.Controllers()
	h1, h3 := p.Hosts[0], p.Hosts[2]
	cli := func(args ...string) string {
		t.Helper()
		out, err := p.CLI(testwait.Ctx(t, 3*time.Minute), args...)
		if err != nil {
			t.Fatalf("plinth %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// Cordon: three instances go to the two other hosts.
	if out := cli("hosts", "cordon", h3.ID); !strings.Contains(out, "cordoned") {
		t.Fatalf("cordon: %s", out)
	}
	spec, err := json.Marshal(webFormation(2))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "web.json")
	if err := os.WriteFile(file, spec, 0o644); err != nil {
		t.Fatal(err)
	}
	cli("formations", "apply", file)
	cli("formations", "scale", "web", "3")
	p.WaitHealthy(time.Minute, func(platformtest.Status) error {
		jobs := formationJobs(t, p, "web")
		if count(jobs) != 3 || len(jobs[h3.ID]) != 0 {
			return fmt.Errorf("web runs %v, want 3 jobs, none on the cordoned %s", jobs, h3.NS.Name)
		}
		return nil
	})
	cli("hosts", "uncordon", h3.ID)

	// Drain: h1's web jobs move away, and the command waits for it.
	out := cli("hosts", "drain", h1.ID, "--timeout", "2m")
	t.Logf("drain:\n%s", out)
	if !strings.Contains(out, "drained") {
		t.Fatalf("drain: %s", out)
	}
	jobs := formationJobs(t, p, "web")
	if count(jobs) != 3 || len(jobs[h1.ID]) != 0 {
		t.Fatalf("after the drain web runs %v, want 3 jobs, none on %s", jobs, h1.NS.Name)
	}
	for _, f := range []string{"controller", "scheduler", "discovery"} {
		if !slices.Contains(formationJobs(t, p, f)[h1.ID], "plinth-"+f) {
			t.Errorf("the drain stopped %s on %s: omni formations stay", f, h1.NS.Name)
		}
	}
	st, err := p.PlatformStatus()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.Hosts {
		if h.ID == h1.ID && (!h.Draining || !h.Cordoned) {
			t.Errorf("plinth status shows %s as cordoned=%v draining=%v, want both", h1.NS.Name, h.Cordoned, h.Draining)
		}
	}
	cli("hosts", "uncordon", h1.ID)

	// A constraint on an operator's label: only h2 is in zone b, and it
	// takes both instances.
	zoned := webFormation(2)
	zoned.Name, zoned.Job.ID, zoned.Constraints = "zoned", "zoned", map[string]string{"zone": "b"}
	if _, err := cl.PutFormation(testwait.Ctx(t, 5*time.Second), zoned, nil); err != nil {
		t.Fatal(err)
	}
	h2 := p.Hosts[1]
	p.WaitHealthy(time.Minute, func(platformtest.Status) error {
		jobs := formationJobs(t, p, "zoned")
		if count(jobs) != 2 || len(jobs[h2.ID]) != 2 {
			return fmt.Errorf("zoned runs %v, want both on %s, the only host in zone b", jobs, h2.NS.Name)
		}
		return nil
	})
	hosts, _, err := cl.Hosts(testwait.Ctx(t, 5*time.Second), controller.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		want := map[string]string{"zone": "a"}
		if h.ID == h2.ID {
			want["zone"] = "b"
		}
		if !maps.Equal(h.Labels, want) {
			t.Errorf("host %s's record has labels %v, want %v", h.Hostname, h.Labels, want)
		}
	}
	// Its constraint changes to zone a (h1 and h3): both instances move
	// there, each replacement running before its old instance goes.
	zoned.Constraints = map[string]string{"zone": "a"}
	if _, err := cl.PutFormation(testwait.Ctx(t, 5*time.Second), zoned, nil); err != nil {
		t.Fatal(err)
	}
	p.WaitHealthy(time.Minute, func(platformtest.Status) error {
		jobs := formationJobs(t, p, "zoned")
		if count(jobs) != 2 || len(jobs[h1.ID]) != 1 || len(jobs[h3.ID]) != 1 {
			return fmt.Errorf("zoned runs %v, want one on each of %s and %s, zone a", jobs, h1.NS.Name, h3.NS.Name)
		}
		return nil
	})
	cli("formations", "delete", "zoned")

	// A formation no host can hold, and one whose job cannot start: the
	// reason is stored and shown, and nothing restarts in a loop.
	huge := controller.Formation{Name: "huge", Count: 1, Job: job.Spec{Rootfs: job.SystemRootfs, Cmd: []string{"/bin/busybox", "sleep", "1"},
		Resources: job.Resources{MemoryBytes: 1 << 50}}}
	broken := controller.Formation{Name: "broken", Count: 1, Job: job.Spec{Rootfs: "/nonexistent-rootfs", Cmd: []string{"/bin/true"}}}
	for _, f := range []controller.Formation{huge, broken} {
		if _, err := cl.PutFormation(testwait.Ctx(t, 5*time.Second), f, nil); err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, "both formations reported short", time.Minute, func() error {
		st, err := p.PlatformStatus()
		if err == nil {
			return fmt.Errorf("plinth status says healthy with two formations that cannot run")
		}
		reasons := map[string]string{}
		for _, f := range st.Formations {
			reasons[f.Name] = f.Reason
		}
		switch {
		case !strings.Contains(reasons["huge"], "memory"):
			return fmt.Errorf("huge: reason %q, want one about memory", reasons["huge"])
		case !strings.Contains(reasons["broken"], "does not start"):
			return fmt.Errorf("broken: reason %q, want one saying the job does not start", reasons["broken"])
		}
		for _, problem := range []string{"formation huge: 0 of 1 running", "formation broken: 0 of 1 running"} {
			if !strings.Contains(strings.Join(st.Problems, "\n"), problem) {
				return fmt.Errorf("problems %q lack %q", st.Problems, problem)
			}
		}
		return nil
	})
	f, err := cl.Formation(testwait.Ctx(t, 5*time.Second), "huge", controller.QueryOptions{})
	if err != nil || !strings.Contains(f.Status.Reason, "memory") {
		t.Fatalf("huge's stored status: %+v %v", f.Status, err)
	}
	for _, h := range p.Hosts {
		j, err := p.HostClient(h).Job(testwait.Ctx(t, 5*time.Second), "plinth-scheduler")
		if err != nil || j.Status.Restarts != 0 || j.Status.State != job.StateRunning {
			t.Errorf("%s: scheduler %s, restarts %d (%v): want it running, never restarted", h.NS.Name, j.Status.State, j.Status.Restarts, err)
		}
	}
	if out := cli("formations"); !strings.Contains(out, "huge") || !strings.Contains(out, "0/1") {
		t.Errorf("plinth formations:\n%s", out)
	}
	for _, name := range []string{"huge", "broken"} {
		cli("formations", "delete", name)
	}
	p.WaitHealthy(time.Minute, nil)

	// Bootstrap against a host that does not answer.
	out, err = p.CLI(testwait.Ctx(t, time.Minute), "cluster", "bootstrap", "--expect", "3", "--host", "10.76.0.98",
		"--state", t.TempDir()+"/state.json")
	t.Logf("bootstrap against nothing:\n%s", out)
	if err == nil || !strings.Contains(out, "does not answer") || !strings.Contains(out, "10.76.0.98") {
		t.Fatalf("bootstrap against nothing: %v\n%s", err, out)
	}
}
