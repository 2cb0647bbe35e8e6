package scheduler

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/scheduler/placement"
)

// state is what one step reads from the controller.
type state struct {
	formations map[string]controller.Formation
	placements []controller.Placement
	hosts      []controller.Host
	// healthy is false for a job ("<host>/<job>") with an unhealthy
	// instance; jobs without services are absent.
	healthy map[string]bool
}

// observed is what one step found on the hosts.
type observed struct {
	// jobs by host ID, for the hosts whose API answered.
	jobs map[string]map[string]job.Job
	info map[string]host.HostInfo
}

// step is one round: read, observe, adopt, plan, record, act. It
// reports whether it started or stopped jobs. A signal on hostsChanged
// while it reads ends it with errHostsChanged.
func (s *Scheduler) step(ctx context.Context, fence controller.Fence, hostsChanged <-chan struct{}) (acted bool, _ error) {
	rctx, cancel := context.WithTimeout(ctx, 2*s.cfg.CallTimeout)
	read := make(chan struct{})
	var interrupted atomic.Bool
	go func() {
		select {
		case <-hostsChanged:
			interrupted.Store(true)
			cancel()
		case <-read:
		}
	}()
	st, err := s.read(rctx)
	var obs *observed
	if err == nil {
		obs = s.observe(rctx, st.hosts)
	}
	close(read)
	cancel()
	switch {
	case interrupted.Load():
		return false, errHostsChanged
	case err != nil:
		return false, err
	}
	adopted, orphans := adopt(st, obs, s.isRetiring)
	all := append(slices.Clone(st.placements), adopted...)
	d := placement.Plan(planFormations(st.formations), planHosts(st.hosts, obs), planPlacements(all, st, obs))

	sched := controller.Schedule{Fence: fence, Place: adopted}
	for _, p := range d.Place {
		sched.Place = append(sched.Place, controller.Placement{
			Formation: p.Formation, Host: p.Host, Job: p.Job, MemoryBytes: p.MemoryBytes, CPUs: p.CPUs, Replaces: p.Replaces})
	}
	for _, r := range d.Remove {
		sched.Remove = append(sched.Remove, controller.Removal{ID: r.Placement.Key(), Reason: r.Reason})
	}
	final := applyDecision(all, sched)
	sched.Status = s.statuses(st, obs, final, d.Shortfalls, fence.Token)
	if len(sched.Place) > 0 || len(sched.Remove) > 0 || len(sched.Status) > 0 {
		if err := s.record(ctx, sched, adopted, d); err != nil {
			return false, err
		}
	}
	return s.act(ctx, st, obs, sched, final, orphans), nil
}

// statuses are the formations' statuses that changed: how many run, and
// why not all (a shortfall, a job that does not start, one that keeps
// exiting), under the lease's token.
func (s *Scheduler) statuses(st *state, obs *observed, final []controller.Placement, short []placement.Shortfall, token uint64) map[string]controller.FormationStatus {
	keep := map[string]bool{}
	for _, p := range final {
		keep[p.ID] = true
	}
	s.failures.forget(keep)
	out := map[string]controller.FormationStatus{}
	for name, f := range st.formations {
		status := formationStatus(f, final, obs, short)
		if status.Reason == "" && status.Running < status.Desired {
			var ids []string
			for _, p := range final {
				if p.Formation == name {
					ids = append(ids, p.ID)
				}
			}
			status.Reason = cmp.Or(s.failures.reason(ids), crashReason(final, name, obs))
		}
		status.Token = token
		if status != f.Status {
			out[name] = status
		}
	}
	return out
}

// record writes the step under its fence; a refusal means this
// scheduler was deposed.
func (s *Scheduler) record(ctx context.Context, sched controller.Schedule, adopted []controller.Placement, d placement.Decision) error {
	ctx, cancel := context.WithTimeout(ctx, 2*s.cfg.CallTimeout)
	defer cancel()
	index, err := s.cfg.Controller.Schedule(ctx, sched)
	if controller.IsConflict(err) {
		return fmt.Errorf("%w: %v", errDeposed, err)
	}
	if err != nil {
		return fmt.Errorf("record the schedule: %w", err)
	}
	s.lastWrite = index
	for _, p := range adopted {
		s.log.Info("adopted job", "formation", p.Formation, "host", p.Host, "job", p.Job)
	}
	for _, r := range sched.Remove {
		s.log.Info("placement removed", "placement", r.ID, "reason", r.Reason)
	}
	for _, p := range d.Place {
		s.log.Info("placement added", "formation", p.Formation, "host", p.Host, "job", p.Job)
	}
	for _, sf := range d.Shortfalls {
		s.log.Warn("formation short", "formation", sf.Formation, "missing", sf.Missing, "reason", sf.Reason)
	}
	return nil
}

// read reads the controller's state; placements at least as recent as
// this scheduler's last write.
func (s *Scheduler) read(ctx context.Context) (*state, error) {
	st := &state{formations: map[string]controller.Formation{}, healthy: map[string]bool{}}
	fs, _, err := s.cfg.Controller.Formations(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, fmt.Errorf("read formations: %w", err)
	}
	for _, f := range fs {
		st.formations[f.Name] = f
	}
	q := controller.QueryOptions{}
	if s.lastWrite > 0 {
		q = controller.QueryOptions{Index: s.lastWrite - 1, Wait: s.cfg.CallTimeout}
	}
	if st.placements, _, err = s.cfg.Controller.Placements(ctx, q); err != nil {
		return nil, fmt.Errorf("read placements: %w", err)
	}
	if st.hosts, _, err = s.cfg.Controller.Hosts(ctx, controller.QueryOptions{}); err != nil {
		return nil, fmt.Errorf("read hosts: %w", err)
	}
	instances, _, err := s.cfg.Controller.Instances(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, fmt.Errorf("read instances: %w", err)
	}
	for _, in := range instances {
		key := controller.PlacementID(in.Host, in.Job)
		ok, seen := st.healthy[key]
		st.healthy[key] = in.Healthy && (ok || !seen)
	}
	return st, nil
}

// observe lists the jobs of every alive host, all at once.
func (s *Scheduler) observe(ctx context.Context, hosts []controller.Host) *observed {
	obs := &observed{jobs: map[string]map[string]job.Job{}, info: map[string]host.HostInfo{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range hosts {
		if h.Status != controller.HostAlive {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
			defer cancel()
			info, err := s.hosts.info(ctx, h)
			if err != nil {
				return
			}
			jobs, err := s.hosts.client(h).Jobs(ctx)
			if err != nil {
				return
			}
			m := make(map[string]job.Job, len(jobs))
			for _, j := range jobs {
				m[j.Spec.ID] = j
			}
			mu.Lock()
			obs.jobs[h.ID], obs.info[h.ID] = m, info
			mu.Unlock()
		})
	}
	wg.Wait()
	return obs
}

// adopt finds the jobs on hosts that carry a formation's tag and have
// no placement: those a formation still needs become its placements
// (bootstrap's jobs, or a scheduler's whose write was lost), the others
// are orphans to stop (a failed host's jobs, resurrected after their
// replacements started). Jobs being retired (drained, then stopped) are
// neither. A job of a formation that does not exist is
// left alone: it may be bootstrap's, before it registers the formation.
func adopt(st *state, obs *observed, retiring func(placementID string) bool) (adopted []controller.Placement, orphans []controller.Placement) {
	placed := map[string]bool{}
	count := map[string]int{}   // formation → placements on hosts not failed
	onHost := map[string]bool{} // formation/host → has a placement
	down := map[string]bool{}
	for _, h := range st.hosts {
		down[h.ID] = h.Status == controller.HostFailed || h.Status == controller.HostLeft
	}
	for _, p := range st.placements {
		placed[p.ID] = true
		if !down[p.Host] {
			count[p.Formation]++
		}
		onHost[p.Formation+"/"+p.Host] = true
	}
	for _, hostID := range slices.Sorted(maps.Keys(obs.jobs)) {
		jobs := obs.jobs[hostID]
		for _, id := range slices.Sorted(maps.Keys(jobs)) {
			j := jobs[id]
			name := j.Spec.Tags[controller.FormationTag]
			f, ok := st.formations[name]
			if !ok || placed[controller.PlacementID(hostID, id)] || retiring(controller.PlacementID(hostID, id)) {
				continue
			}
			p := controller.Placement{ID: controller.PlacementID(hostID, id), Formation: name, Host: hostID, Job: id,
				MemoryBytes: j.Spec.Resources.MemoryBytes, CPUs: j.Spec.Resources.CPUQuota}
			alive := j.Status.State == job.StateRunning || j.Status.State == job.StateBackoff
			needed := alive && (f.Omni && !onHost[name+"/"+hostID] || !f.Omni && count[name] < f.Count)
			if needed {
				adopted = append(adopted, p)
				count[name]++
				onHost[name+"/"+hostID] = true
			} else {
				orphans = append(orphans, p)
			}
		}
	}
	return adopted, orphans
}

// applyDecision is the placements once sched is written.
func applyDecision(all []controller.Placement, sched controller.Schedule) []controller.Placement {
	gone := map[string]bool{}
	for _, r := range sched.Remove {
		gone[r.ID] = true
	}
	var out []controller.Placement
	for _, p := range all {
		if !gone[p.ID] {
			out = append(out, p)
		}
	}
	for _, p := range sched.Place {
		p.ID = controller.PlacementID(p.Host, p.Job)
		if !slices.ContainsFunc(out, func(o controller.Placement) bool { return o.ID == p.ID }) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// formationStatus counts a formation's placements whose job runs.
func formationStatus(f controller.Formation, final []controller.Placement, obs *observed, short []placement.Shortfall) controller.FormationStatus {
	st := controller.FormationStatus{Desired: f.Count}
	placed := 0
	for _, p := range final {
		if p.Formation != f.Name {
			continue
		}
		placed++
		if j, ok := obs.jobs[p.Host][p.Job]; ok && j.Status.State == job.StateRunning {
			st.Running++
		}
	}
	if f.Omni {
		st.Desired = placed
	}
	for _, sf := range short {
		if sf.Formation == f.Name {
			if f.Omni {
				st.Desired += sf.Missing
			}
			st.Reason = sf.Reason
		}
	}
	return st
}

func planFormations(fs map[string]controller.Formation) []placement.Formation {
	out := make([]placement.Formation, 0, len(fs))
	for _, f := range fs {
		out = append(out, placement.Formation{
			Name: f.Name, Job: f.Job.ID, Count: f.Count, Omni: f.Omni, Constraints: f.Constraints,
			MemoryBytes: f.Job.Resources.MemoryBytes, CPUs: f.Job.Resources.CPUQuota,
		})
	}
	return out
}

// planHosts maps the controller's hosts to placement's: alive in Serf
// but not answering is unreachable (its jobs may run: never a second
// copy), leaving too (it may come back), failed and left are failed.
func planHosts(hosts []controller.Host, obs *observed) []placement.Host {
	out := make([]placement.Host, 0, len(hosts))
	for _, h := range hosts {
		tags := maps.Clone(h.Labels)
		if tags == nil {
			tags = map[string]string{}
		}
		tags["hostname"], tags["id"], tags["version"] = h.Hostname, h.ID, h.Version
		ph := placement.Host{ID: h.ID, Roles: h.Roles, Cordoned: h.Cordoned, Draining: h.Draining, Tags: tags}
		switch h.Status {
		case controller.HostFailed, controller.HostLeft:
			ph.Status = placement.Failed
		case controller.HostAlive:
			ph.Status = placement.Unreachable
			if _, ok := obs.jobs[h.ID]; ok {
				ph.Status = placement.Alive
				info := obs.info[h.ID]
				ph.MemoryBytes, ph.CPUs = info.MemoryBytes, float64(info.CPUs)
			}
		default:
			ph.Status = placement.Unreachable
		}
		out = append(out, ph)
	}
	return out
}

// planPlacements maps placements to placement's, with their health: the
// job runs, and every instance it declares passes its checks.
func planPlacements(all []controller.Placement, st *state, obs *observed) []placement.Placement {
	out := make([]placement.Placement, 0, len(all))
	for _, p := range all {
		j, ok := obs.jobs[p.Host][p.Job]
		healthy := ok && j.Status.State == job.StateRunning
		if h, declared := st.healthy[p.ID]; declared {
			healthy = healthy && h
		} else if ok && len(j.Spec.Services) > 0 {
			healthy = false // not checked yet
		}
		out = append(out, placement.Placement{Formation: p.Formation, Host: p.Host, Job: p.Job,
			MemoryBytes: p.MemoryBytes, CPUs: p.CPUs, Healthy: healthy, Replaces: p.Replaces})
	}
	return out
}

// crashReason says which of a formation's jobs keeps exiting (restarted
// by hostd with its backoff: a wrong command, a port another job has),
// from the first such placement by ID; "" when none does.
func crashReason(final []controller.Placement, formation string, obs *observed) string {
	for _, p := range final {
		j, ok := obs.jobs[p.Host][p.Job]
		if p.Formation != formation || !ok || j.Status.State != job.StateBackoff {
			continue
		}
		exit := "unknown"
		if e := j.Status.Exit; e != nil && e.Signal != "" {
			exit = "signal " + e.Signal
		} else if e != nil {
			exit = fmt.Sprintf("code %d", e.Code)
		}
		return fmt.Sprintf("job %s on host %s keeps exiting (%d restarts, last exit %s): see its logs", p.Job, p.Host, j.Status.Restarts, exit)
	}
	return ""
}
