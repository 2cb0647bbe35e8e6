package scheduler

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/router"
)

// act makes the reachable hosts run what was recorded: it stops the
// removed placements' and the orphans' jobs, then starts the jobs of
// placements that have none, host by host in parallel. Hosts that did
// not answer this step are left alone: their jobs may be running. It
// reports whether there was anything to do.
func (s *Scheduler) act(ctx context.Context, st *state, obs *observed, sched controller.Schedule, final []controller.Placement, orphans []controller.Placement) bool {
	byHost := map[string]*hostWork{}
	work := func(id string) *hostWork {
		if byHost[id] == nil {
			byHost[id] = &hostWork{}
		}
		return byHost[id]
	}
	hosts := map[string]controller.Host{}
	for _, h := range st.hosts {
		hosts[h.ID] = h
	}
	for _, r := range sched.Remove {
		hostID, jobID, _ := strings.Cut(r.ID, "/")
		j, ok := obs.jobs[hostID][jobID]
		switch {
		case !ok:
		case s.cfg.DialRouter != nil && len(j.Spec.Services) > 0 && j.Status.State == job.StateRunning:
			s.retire(ctx, hosts[hostID], j)
		default:
			work(hostID).stop = append(work(hostID).stop, jobID)
		}
	}
	for _, o := range orphans {
		s.log.Info("stopping orphan job", "host", o.Host, "job", o.Job, "formation", o.Formation)
		work(o.Host).stop = append(work(o.Host).stop, o.Job)
	}
	for _, p := range final {
		jobs, reachable := obs.jobs[p.Host]
		if !reachable {
			continue
		}
		j, ok := jobs[p.Job]
		switch {
		case !ok:
		case j.Status.State == job.StateStopped || j.Status.State == job.StateExited:
			// Stopped by hand, or given up: the formation wants it running.
			work(p.Host).stop = append(work(p.Host).stop, p.Job)
		default:
			continue
		}
		f, ok := st.formations[p.Formation]
		if !ok || !s.failures.due(p.ID) {
			continue
		}
		work(p.Host).start = append(work(p.Host).start, instanceSpec(f, p.Job))
	}
	var wg sync.WaitGroup
	for id, w := range byHost {
		h, ok := hosts[id]
		if !ok {
			continue
		}
		wg.Go(func() { s.work(ctx, h, w) })
	}
	wg.Wait()
	return len(byHost) > 0
}

// retire drains a removed job's instances, then stops it, in the
// background: the routers stop giving it new work at once, and its work
// in flight gets up to DrainTimeout to end. Until it stops, steps do not
// take it for an orphan. A retire cut short (the scheduler lost its
// lease or stops) or whose stop fails gives the instances their work
// back: the job runs on, and the next scheduler stops it as an orphan or
// adopts it.
func (s *Scheduler) retire(ctx context.Context, h controller.Host, j job.Job) {
	id := controller.PlacementID(h.ID, j.Spec.ID)
	if _, busy := s.retiring.LoadOrStore(id, true); busy {
		return
	}
	var instances []string
	for _, svc := range j.Spec.Services {
		instances = append(instances, controller.InstanceID(h.ID, j.Spec.ID, svc.Name))
	}
	go func() {
		defer s.retiring.Delete(id)
		start := time.Now()
		var wg sync.WaitGroup
		for _, instance := range instances {
			wg.Go(func() {
				res, err := router.Drain(ctx, s.cfg.Controller, s.cfg.DialRouter, instance, s.cfg.DrainTimeout)
				switch {
				case ctx.Err() != nil:
				case err != nil:
					s.log.Info("stopping without drain", "instance", instance, "err", err)
				case !res.Drained():
					s.log.Warn("drain timed out; stopping", "instance", instance, "routers", res.Idle, "errors", res.Errors)
				}
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			s.log.Info("drain cut short; the job runs on", "host", h.ID, "job", j.Spec.ID)
			s.undrain(instances)
			return
		}
		s.log.Info("drained job", "host", h.ID, "job", j.Spec.ID, "took", time.Since(start).Round(time.Millisecond))
		if !s.stopJob(context.Background(), h, j.Spec.ID) {
			s.log.Warn("drained job runs on; its instances serve again", "host", h.ID, "job", j.Spec.ID)
			s.undrain(instances)
		}
	}()
}

// undrain gives instances new work again, as far as the controller
// answers; an instance that is gone needs nothing.
func (s *Scheduler) undrain(instances []string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CallTimeout)
	defer cancel()
	for _, id := range instances {
		if _, err := s.cfg.Controller.DrainInstance(ctx, id, false); err != nil && !controller.IsNotFound(err) {
			s.log.Warn("undrain", "instance", id, "err", err)
		}
	}
}

func (s *Scheduler) isRetiring(placementID string) bool {
	_, ok := s.retiring.Load(placementID)
	return ok
}

type hostWork struct {
	stop  []string
	start []job.Spec
}

func (s *Scheduler) work(ctx context.Context, h controller.Host, w *hostWork) {
	c := s.hosts.client(h)
	for _, id := range w.stop {
		s.stopJob(ctx, h, id)
	}
	for _, spec := range w.start {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
		_, err := c.CreateJob(cctx, spec)
		cancel()
		id := controller.PlacementID(h.ID, spec.ID)
		if err != nil {
			wait := s.failures.failed(id, err)
			s.log.Warn("start job", "host", h.ID, "job", spec.ID, "err", err, "retry_in", wait)
			continue
		}
		s.failures.started(id)
		s.log.Info("started job", "host", h.ID, "job", spec.ID)
	}
}

// stopJob stops and removes (by force) a job on h, bounded; it reports
// whether the job no longer runs: stopped, removed, or not there.
func (s *Scheduler) stopJob(ctx context.Context, h controller.Host, id string) bool {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StopGrace+s.cfg.CallTimeout)
	defer cancel()
	c := s.hosts.client(h)
	stopped, removed := true, true
	if _, err := c.StopJob(ctx, id, s.cfg.StopGrace); err != nil && !isStatus(err, http.StatusNotFound) {
		s.log.Warn("stop job", "host", h.ID, "job", id, "err", err)
		stopped = false
	}
	if err := c.RemoveJob(ctx, id, true); err != nil && !isStatus(err, http.StatusNotFound) {
		s.log.Warn("remove job", "host", h.ID, "job", id, "err", err)
		removed = false
	}
	return stopped || removed
}

// instanceSpec is the job of one instance of f: the formation's job with
// its ID, its formation's tag, and resurrection at boot (a host that
// comes back runs its instances before the scheduler does anything).
func instanceSpec(f controller.Formation, id string) job.Spec {
	spec := f.Job
	spec.ID = id
	spec.Tags = maps.Clone(spec.Tags)
	if spec.Tags == nil {
		spec.Tags = map[string]string{}
	}
	spec.Tags[controller.FormationTag] = f.Name
	spec.Resurrect = true
	return spec
}

func isStatus(err error, code int) bool {
	var e *host.APIError
	return errors.As(err, &e) && e.StatusCode == code
}
