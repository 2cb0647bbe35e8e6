package scheduler

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// fakeController serves a fixed state and records the schedules written.
type fakeController struct {
	formations []controller.Formation
	placements []controller.Placement
	hosts      []controller.Host
	written    []controller.Schedule
}

func (f *fakeController) Formations(context.Context, controller.QueryOptions) ([]controller.Formation, controller.QueryMeta, error) {
	return f.formations, controller.QueryMeta{Index: 1}, nil
}
func (f *fakeController) Placements(context.Context, controller.QueryOptions) ([]controller.Placement, controller.QueryMeta, error) {
	return f.placements, controller.QueryMeta{Index: 1}, nil
}
func (f *fakeController) Hosts(context.Context, controller.QueryOptions) ([]controller.Host, controller.QueryMeta, error) {
	return f.hosts, controller.QueryMeta{Index: 1}, nil
}
func (f *fakeController) Instances(context.Context, controller.QueryOptions) ([]controller.Instance, controller.QueryMeta, error) {
	return nil, controller.QueryMeta{Index: 1}, nil
}
func (f *fakeController) Lease(context.Context, string, string, string, time.Duration) (controller.Lease, error) {
	return controller.Lease{Token: 1}, nil
}
func (f *fakeController) Leases(context.Context, controller.QueryOptions) ([]controller.Lease, controller.QueryMeta, error) {
	return nil, controller.QueryMeta{}, errors.New("not in this test")
}
func (f *fakeController) DrainInstance(context.Context, string, bool) (controller.Instance, error) {
	return controller.Instance{}, errors.New("not in this test")
}
func (f *fakeController) Schedule(_ context.Context, s controller.Schedule) (uint64, error) {
	f.written = append(f.written, s)
	return 2, nil
}

// fakeHost is a host API that answers, or (down) times out like a host
// the scheduler cannot reach.
type fakeHost struct {
	id      string
	down    bool
	mu      sync.Mutex
	jobs    map[string]job.Job
	created []string
}

var errUnreachable = errors.New("dial tcp: i/o timeout")

func (h *fakeHost) Host(context.Context) (host.HostInfo, error) {
	if h.down {
		return host.HostInfo{}, errUnreachable
	}
	return host.HostInfo{ID: h.id, MemoryBytes: 8 << 30, CPUs: 4}, nil
}
func (h *fakeHost) Jobs(context.Context) ([]job.Job, error) {
	if h.down {
		return nil, errUnreachable
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []job.Job
	for _, j := range h.jobs {
		out = append(out, j)
	}
	return out, nil
}
func (h *fakeHost) CreateJob(_ context.Context, s job.Spec) (job.Job, error) {
	if h.down {
		return job.Job{}, errUnreachable
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	j := job.Job{Spec: s, Status: job.Status{State: job.StateRunning}}
	h.jobs[s.ID] = j
	h.created = append(h.created, s.ID)
	return j, nil
}
func (h *fakeHost) StopJob(context.Context, string, time.Duration) (job.Job, error) {
	return job.Job{}, nil
}
func (h *fakeHost) RemoveJob(_ context.Context, id string, _ bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.jobs, id)
	return nil
}

func running(formation, id string) job.Job {
	return job.Job{Spec: job.Spec{ID: id, Tags: map[string]string{controller.FormationTag: formation}}, Status: job.Status{State: job.StateRunning}}
}

// oneStep runs one scheduling step against the fakes.
func oneStep(t *testing.T, c *fakeController, hosts ...*fakeHost) {
	t.Helper()
	byAddr := map[string]*fakeHost{}
	for _, h := range hosts {
		byAddr[h.id+":7947"] = h
	}
	cfg := DefaultConfig()
	cfg.Host, cfg.Controller = hosts[0], c
	cfg.Dial = func(addr string) HostAPI { return byAddr[addr] }
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.step(context.Background(), controller.Fence{Lease: LeaseName, Holder: "test", Token: 1}, nil); err != nil {
		t.Fatal(err)
	}
}

func webCluster(statusB string) (*fakeController, *fakeHost, *fakeHost, *fakeHost) {
	a := &fakeHost{id: "a", jobs: map[string]job.Job{"web-1": running("web", "web-1")}}
	b := &fakeHost{id: "b", jobs: map[string]job.Job{"web-2": running("web", "web-2")}}
	c := &fakeHost{id: "c", jobs: map[string]job.Job{}}
	ctl := &fakeController{
		formations: []controller.Formation{{Name: "web", Count: 2, Job: job.Spec{ID: "web", Rootfs: "/srv", Cmd: []string{"web"}},
			Status: controller.FormationStatus{Desired: 2, Running: 2, Token: 1}}},
		placements: []controller.Placement{
			{ID: "a/web-1", Formation: "web", Host: "a", Job: "web-1"},
			{ID: "b/web-2", Formation: "web", Host: "b", Job: "web-2"},
		},
	}
	for _, h := range []struct{ id, status string }{{"a", "alive"}, {"b", statusB}, {"c", "alive"}} {
		ctl.hosts = append(ctl.hosts, controller.Host{ID: h.id, API: h.id + ":7947", Status: h.status})
	}
	return ctl, a, b, c
}

// A host Serf still sees alive keeps its placement when the scheduler
// cannot reach its API: its job may be running, so no second copy.
func TestUnreachableHostKeepsItsJobs(t *testing.T) {
	ctl, a, b, c := webCluster(controller.HostAlive)
	b.down = true
	oneStep(t, ctl, a, b, c)
	for _, s := range ctl.written {
		if len(s.Place) > 0 || len(s.Remove) > 0 {
			t.Errorf("schedule %+v: want no placement added or removed", s)
		}
	}
	if len(a.created)+len(c.created) > 0 {
		t.Errorf("jobs started: a %v, c %v; want none", a.created, c.created)
	}
}

// A failed host's placement is replaced on a host that has none of the
// formation's.
func TestFailedHostsJobsAreReplaced(t *testing.T) {
	ctl, a, b, c := webCluster(controller.HostFailed)
	b.down = true
	oneStep(t, ctl, a, b, c)
	if len(ctl.written) != 1 {
		t.Fatalf("%d schedules written, want 1", len(ctl.written))
	}
	s := ctl.written[0]
	if len(s.Remove) != 1 || s.Remove[0].ID != "b/web-2" || len(s.Place) != 1 || s.Place[0].Host != "c" {
		t.Fatalf("schedule %+v: want b/web-2 removed and a placement on c", s)
	}
	if !slices.Equal(c.created, []string{s.Place[0].Job}) || len(a.created) > 0 {
		t.Errorf("jobs started: a %v, c %v; want %s on c", a.created, c.created, s.Place[0].Job)
	}
}

// A job that hostd keeps restarting makes its formation's reason.
func TestCrashLoopIsTheReason(t *testing.T) {
	ctl, a, b, c := webCluster(controller.HostAlive)
	crashing := running("web", "web-2")
	crashing.Status = job.Status{State: job.StateBackoff, Restarts: 4, Exit: &container.Exit{Code: 1}}
	b.jobs["web-2"] = crashing
	oneStep(t, ctl, a, b, c)
	if len(ctl.written) != 1 {
		t.Fatalf("%d schedules written, want 1", len(ctl.written))
	}
	want := controller.FormationStatus{Desired: 2, Running: 1, Token: 1,
		Reason: "job web-2 on host b keeps exiting (4 restarts, last exit code 1): see its logs"}
	if got := ctl.written[0].Status["web"]; got != want {
		t.Errorf("status %+v, want %+v", got, want)
	}
	if len(ctl.written[0].Place)+len(ctl.written[0].Remove) > 0 || len(b.created) > 0 {
		t.Errorf("schedule %+v, jobs created on b %v: a job in backoff is hostd's to restart", ctl.written[0], b.created)
	}
}
