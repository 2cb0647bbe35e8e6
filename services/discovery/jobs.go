package discovery

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// hostCallTimeout bounds one call to the local host API.
const hostCallTimeout = 10 * time.Second

// target is an instance that a running job of this host declares: where
// it answers and how to check it.
type target struct {
	id, service, job, proto string
	addr                    netip.AddrPort
	check                   check
}

func (t target) equal(u target) bool { return reflect.DeepEqual(t, u) }

// instance is the instance t on host, as r found it.
func (t target) instance(host string, r result) controller.Instance {
	return controller.Instance{
		ID: t.id, Service: t.service, Host: host, Job: t.job,
		Addr: t.addr.String(), Proto: t.proto, Healthy: r.healthy, Output: r.output,
	}
}

// targets are the instances that the running jobs of the host self
// declare. skipped says, by job, why a running job's services have none.
func targets(self host.HostInfo, jobs []job.Job) (ts []target, skipped map[string]string) {
	skipped = map[string]string{}
	for _, j := range jobs {
		if j.Status.State != job.StateRunning || len(j.Spec.Services) == 0 {
			continue
		}
		var ip netip.Addr
		switch j.Spec.Network {
		case job.NetworkHost:
			ap, err := netip.ParseAddrPort(self.API)
			if err != nil {
				skipped[j.Spec.ID] = fmt.Sprintf("host network, but the host advertises no API address (%q)", self.API)
				continue
			}
			ip = ap.Addr()
		case job.NetworkBridge:
			if !j.Status.IP.IsValid() {
				skipped[j.Spec.ID] = "bridge network, but the job has no address"
				continue
			}
			ip = j.Status.IP
		default:
			skipped[j.Spec.ID] = "the job has no network, so nothing can reach its services; give it network host or bridge"
			continue
		}
		for _, s := range j.Spec.Services {
			s = s.WithDefaults()
			ts = append(ts, target{
				id:      controller.InstanceID(self.ID, j.Spec.ID, s.Name),
				service: s.Name, job: j.Spec.ID, proto: s.Proto,
				addr:  netip.AddrPortFrom(ip.Unmap(), uint16(s.Port)),
				check: checkOf(s.Check),
			})
		}
	}
	return ts, skipped
}

// checkOf is the check of a service with its defaults filled in
// (job.Service.WithDefaults).
func checkOf(c *job.Check) check {
	if c == nil {
		return check{}
	}
	return check{
		kind: c.Type, path: c.Path, status: c.Status, command: c.Command,
		interval: c.Interval.Duration, timeout: c.Timeout.Duration,
	}
}

// running is the check loop of one target.
type running struct {
	target target
	cancel context.CancelFunc
	done   chan struct{}
}

// stop ends the loop and waits for it, so that it records nothing after.
func (r *running) stop() {
	r.cancel()
	<-r.done
}

// followJobs keeps a check loop for each instance that the host's jobs
// declare: it lists the jobs at start, after each job event, and every
// ResyncInterval, and starts and stops loops to match.
func (a *Agent) followJobs(ctx context.Context) {
	loops := map[string]*running{}
	defer func() {
		for _, r := range loops {
			r.stop()
		}
	}()
	resync := make(chan struct{}, 1)
	resync <- struct{}{}
	events := make(chan struct{})
	go func() {
		defer close(events)
		a.jobEvents(ctx, resync)
	}()
	defer func() { <-events }()

	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	retry := time.NewTimer(0)
	retry.Stop()
	skipped := map[string]string{}
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-resync:
		case <-tick.C:
		case <-retry.C:
		}
		err := a.syncJobs(ctx, loops, skipped)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			if failures == 1 {
				a.log.Warn("list the host's jobs; checks go on as they were", "err", err)
			}
			retry.Reset(controller.Backoff(failures, a.cfg.MinBackoff, a.cfg.MaxBackoff))
			continue
		}
		failures = 0
	}
}

// syncJobs lists the host's jobs and makes loops match their instances.
// skipped holds the reasons last logged for jobs without instances, so
// that each is logged once.
func (a *Agent) syncJobs(ctx context.Context, loops map[string]*running, skipped map[string]string) error {
	call, cancel := context.WithTimeout(ctx, hostCallTimeout)
	defer cancel()
	self, err := a.cfg.Host.Host(call)
	if err != nil {
		return fmt.Errorf("host info: %w", err)
	}
	jobs, err := a.cfg.Host.Jobs(call)
	if err != nil {
		return fmt.Errorf("jobs: %w", err)
	}
	ts, skip := targets(self, jobs)
	for id, why := range skip {
		if skipped[id] != why {
			a.log.Warn("job's services get no instance", "job", id, "reason", why)
		}
	}
	clear(skipped)
	for id, why := range skip {
		skipped[id] = why
	}

	want := map[string]target{}
	for _, t := range ts {
		want[t.id] = t
	}
	for id, r := range loops {
		if t, ok := want[id]; !ok || !t.equal(r.target) {
			r.stop()
			delete(loops, id)
			if !ok {
				a.local.remove(id)
				a.log.Info("instance gone", "instance", id)
			}
		}
	}
	for id, t := range want {
		if loops[id] == nil {
			loops[id] = a.startLoop(ctx, self.ID, t)
		}
	}
	a.local.setListed(self.ID)
	return nil
}

// startLoop starts checking t.
func (a *Agent) startLoop(ctx context.Context, host string, t target) *running {
	ctx, cancel := context.WithCancel(ctx)
	r := &running{target: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		a.checkLoop(ctx, host, t)
	}()
	return r
}

// firstRetry is the pause after a new instance's first failed check; it
// doubles up to the check's interval until a check passes, so that an
// instance that starts listening a moment late (every new one, in a
// deploy that waits on it) is found healthy in a fraction of the
// interval.
const firstRetry = 100 * time.Millisecond

// checkLoop checks t every interval and records the result.
func (a *Agent) checkLoop(ctx context.Context, host string, t target) {
	if t.check.kind == "" {
		a.local.set(t.instance(host, result{true, "running, no health check"}))
		return
	}
	a.local.set(t.instance(host, result{false, "not checked yet"}))
	a.log.Info("checking instance", "instance", t.id, "addr", t.addr.String(), "check", t.check.kind, "interval", t.check.interval)
	healthy, passed, retry := false, false, firstRetry
	for {
		start := time.Now()
		r := a.checker.run(ctx, t.check, t.job, t.addr.String())
		if ctx.Err() != nil {
			return
		}
		a.local.set(t.instance(host, r))
		if r.healthy != healthy {
			healthy = r.healthy
			a.log.Info("instance health", "instance", t.id, "healthy", healthy, "output", r.output)
		}
		passed = passed || r.healthy
		wait := t.check.interval - time.Since(start)
		if !passed {
			wait, retry = min(retry, t.check.interval), retry*2
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// jobEvents follows the host's job events and asks for a resync after
// each, and after each (re)connection, since events may have been missed.
func (a *Agent) jobEvents(ctx context.Context, resync chan<- struct{}) {
	notify := func() {
		select {
		case resync <- struct{}{}:
		default:
		}
	}
	failures := 0
	for {
		s, err := a.cfg.Host.JobEvents(ctx)
		if err == nil {
			failures = 0
			notify()
			var e job.Event
			for e, err = s.NextJob(); err == nil; e, err = s.NextJob() {
				a.log.Debug("job event", "job", e.Job, "type", e.Type)
				notify()
			}
			s.Close()
		}
		if ctx.Err() != nil {
			return
		}
		failures++
		if failures == 1 {
			a.log.Warn("host job events unavailable; reconnecting", "err", err)
		}
		if !controller.Sleep(ctx, controller.Backoff(failures, a.cfg.MinBackoff, a.cfg.MaxBackoff)) {
			return
		}
	}
}
