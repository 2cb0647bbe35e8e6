package scheduler_test

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

func TestMain(m *testing.M) { platformtest.Main(m) }

// webFormation is a small count formation of busybox jobs.
func webFormation(count int) controller.Formation {
	return controller.Formation{Name: "web", Count: count, Job: job.Spec{
		Rootfs: job.SystemRootfs, Network: job.NetworkNone,
		Cmd: []string{"/bin/busybox", "sleep", "3600"},
	}}
}

// formationJobs lists, per host, the running jobs of a formation.
func formationJobs(t *testing.T, p *platformtest.Platform, name string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, h := range p.Hosts {
		if !p.Running(h) {
			continue
		}
		jobs, err := p.HostClient(h).Jobs(testwait.Ctx(t, 5*time.Second))
		if err != nil {
			t.Fatalf("%s: jobs: %v", h.NS.Name, err)
		}
		for _, j := range jobs {
			if j.Spec.Tags[controller.FormationTag] == name && j.Status.State == job.StateRunning {
				out[h.ID] = append(out[h.ID], j.Spec.ID)
			}
		}
	}
	return out
}

func count(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// TestPlatformBootstrapFailoverAndColdStart is the platform's life on
// three hosts: bootstrap by inception (the scheduler adopts the jobs
// bootstrap started, same PIDs), a second bootstrap refused, a formation
// placed, the power cut of the active scheduler's host (another
// scheduler takes over and the host's job runs elsewhere, and is not
// doubled when the host comes back), then every host's power cut at
// once and restored, one of them at another address (healthy again,
// state intact, no duplicates).
func TestPlatformBootstrapFailoverAndColdStart(t *testing.T) {
	p := platformtest.New(t, "plsc", "10.78.0", 3)
	out := p.Bootstrap(3 * time.Minute)
	t.Logf("bootstrap:\n%s", out)

	// Adoption: every platform job still has the PID bootstrap started
	// it with, and never restarted.
	started := regexp.MustCompile(`(\S+) \(\S+\): started (plinth-\w+) \(pid (\d+)\)`).FindAllStringSubmatch(out, -1)
	if len(started) != 9 {
		t.Fatalf("bootstrap started %d jobs, want 9 (controller, discovery, scheduler on 3 hosts):\n%s", len(started), out)
	}
	st := p.WaitHealthy(time.Minute, nil)
	for _, m := range started {
		h := p.ByID(m[1])
		j, err := p.HostClient(h).Job(testwait.Ctx(t, 5*time.Second), m[2])
		if err != nil {
			t.Fatal(err)
		}
		if strconv.Itoa(j.Status.Pid) != m[3] || j.Status.Restarts != 0 || j.Spec.Tags[controller.FormationTag] == "" {
			t.Errorf("%s on %s: pid %d restarts %d, want the bootstrap's pid %s and no restart", m[2], h.NS.Name, j.Status.Pid, j.Status.Restarts, m[3])
		}
	}
	ps, _, err := p.Controllers().Placements(testwait.Ctx(t, 5*time.Second), controller.QueryOptions{})
	// Sixteen: the nine adopted, a router and a registry on each host
	// and the builder on one, which the scheduler started itself.
	if err != nil || len(ps) != 16 {
		t.Fatalf("placements after adoption: %d (%v), want 16", len(ps), err)
	}
	if st.Scheduler == nil {
		t.Fatal("no active scheduler in plinth status")
	}

	// A second bootstrap is refused, and says why.
	again, err := p.CLI(testwait.Ctx(t, time.Minute), "cluster", "bootstrap", "--expect", "3", "--binary", p.Bin)
	if err == nil || !strings.Contains(again, "already bootstrapped") {
		t.Fatalf("second bootstrap: %v\n%s", err, again)
	}

	// A formation, and a setting to check the state across the cold start.
	cl := p.Controllers()
	if _, err := cl.PutSetting(testwait.Ctx(t, 5*time.Second), "kept", "across power cuts", nil); err != nil {
		t.Fatal(err)
	}
	// webRuns checks that web runs want jobs on the hosts that run, at
	// most perHost on one.
	webRuns := func(want, perHost int) func(platformtest.Status) error {
		return func(platformtest.Status) error {
			jobs := formationJobs(t, p, "web")
			if count(jobs) != want {
				return fmt.Errorf("web runs %d jobs, want %d: %v", count(jobs), want, jobs)
			}
			for h, ids := range jobs {
				if len(ids) > perHost {
					return fmt.Errorf("web has %d jobs on %s, want them spread", len(ids), h)
				}
			}
			return nil
		}
	}
	if _, err := cl.PutFormation(testwait.Ctx(t, 5*time.Second), webFormation(3), nil); err != nil {
		t.Fatal(err)
	}
	st = p.WaitHealthy(time.Minute, webRuns(3, 1))

	// The power cut of the active scheduler's host: another scheduler
	// takes over, and the host's web job runs on another host.
	victim := p.ByID(st.Scheduler.Host)
	start := time.Now()
	p.PowerCut(victim)
	st = p.WaitHealthy(time.Minute, func(s platformtest.Status) error {
		if s.Scheduler.Host == victim.ID {
			return fmt.Errorf("the dead host's scheduler still holds the lease")
		}
		if err := webRuns(3, 2)(s); err != nil {
			return err
		}
		if _, ok := formationJobs(t, p, "web")[victim.ID]; ok {
			return fmt.Errorf("web still placed on the dead host")
		}
		return nil
	})
	t.Logf("scheduler moved to %s and web rescheduled %s after the power cut of %s", st.Scheduler.Host, time.Since(start).Round(time.Millisecond), victim.NS.Name)

	// It comes back with its resurrected web job: the extra is stopped
	// (the others keep the replacement: no rebalancing).
	p.PowerOn(victim)
	p.WaitHealthy(time.Minute, func(s platformtest.Status) error {
		for _, h := range s.Hosts {
			if h.Status != controller.HostAlive {
				return fmt.Errorf("host %s is %s", h.ID, h.Status)
			}
		}
		return webRuns(3, 2)(s)
	})

	// Every host's power cut at once, then all back: healthy once a new
	// scheduler (a new lease) has checked every formation.
	before := p.WaitHealthy(time.Minute, nil).Scheduler.Token
	for _, h := range p.Hosts {
		p.PowerCut(h)
	}
	// One host comes back with another address, as after a new DHCP lease.
	moved := p.Hosts[2]
	p.Seg.MoveHost(moved.NS, 13)
	for _, h := range p.Hosts {
		p.PowerOn(h)
	}
	start = time.Now()
	p.WaitHealthy(2*time.Minute, func(s platformtest.Status) error {
		if s.Scheduler.Token == before {
			return fmt.Errorf("the scheduler of before the power cut still holds the lease")
		}
		return webRuns(3, 2)(s)
	})
	t.Logf("healthy %s after a cold start", time.Since(start).Round(time.Millisecond))
	for _, h := range p.Hosts {
		if !strings.Contains(p.HostLog(h), `msg="platform jobs up" count=`) {
			t.Errorf("%s's log has no \"platform jobs up\" line", h.NS.Name)
		}
	}
	s, _, err := p.Controllers().Setting(testwait.Ctx(t, 5*time.Second), "kept", controller.QueryOptions{})
	if err != nil || s.Value != "across power cuts" {
		t.Fatalf("setting after the cold start: %+v %v", s, err)
	}
	for _, h := range p.Hosts {
		jobs, err := p.HostClient(h).Jobs(testwait.Ctx(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, j := range jobs {
			if f := j.Spec.Tags[controller.FormationTag]; f != "" && j.Status.State == job.StateRunning {
				seen[f]++
			}
		}
		for _, f := range []string{"controller", "scheduler", "discovery"} {
			if seen[f] != 1 {
				t.Errorf("%s runs %d %s jobs after the cold start, want 1", h.NS.Name, seen[f], f)
			}
		}
	}
}
