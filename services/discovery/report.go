package discovery

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/plinth-os/plinth/services/controller"
)

// local is this host's instance set, as its checks last found it. The
// checks write it; the reporter reads it, so a slow or absent controller
// never holds a check up.
type local struct {
	mu sync.Mutex
	// host is the host's ID; "" until the host API gave it.
	host string
	// listed is set once the host's jobs were listed: before, the set is
	// not known, and reporting it empty would remove the host's
	// instances from the controller.
	listed    bool
	instances map[string]controller.Instance
	// changed is signalled (without blocking) when the set changes in a
	// way that others act on.
	changed chan struct{}
}

func newLocal() *local {
	return &local{instances: map[string]controller.Instance{}, changed: make(chan struct{}, 1)}
}

// set records an instance's state. A change of Output alone is not
// signalled: some checks say something new each time (a command's
// output), and it goes with the next report anyway.
func (l *local) set(in controller.Instance) {
	l.mu.Lock()
	defer l.mu.Unlock()
	old, ok := l.instances[in.ID]
	l.instances[in.ID] = in
	old.Output = in.Output
	if !ok || old != in {
		l.signal()
	}
}

// remove forgets an instance: its job stopped, or no longer declares it.
func (l *local) remove(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.instances[id]; ok {
		delete(l.instances, id)
		l.signal()
	}
}

// setListed records the host's ID and that its jobs were listed.
func (l *local) setListed(host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.listed || l.host != host {
		l.listed, l.host = true, host
		l.signal()
	}
}

func (l *local) signal() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// snapshot returns the host's ID and its instances by ID; ok is false
// until the set is known.
func (l *local) snapshot() (host string, instances []controller.Instance, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.listed {
		return "", nil, false
	}
	instances = slices.Collect(maps.Values(l.instances))
	slices.SortFunc(instances, func(a, b controller.Instance) int { return cmp.Compare(a.ID, b.ID) })
	return l.host, instances, true
}

// report sends the host's instance set to the controller whenever it
// changes, and every ReportInterval. A failed report is retried with
// backoff, and changes meanwhile wait for the retry, which sends the
// set as it is then; a controller that answers a watch again is sent
// the set at once.
func (a *Agent) report(ctx context.Context) {
	timer := time.NewTimer(a.cfg.ReportInterval)
	defer timer.Stop()
	failures := 0
	for {
		changed := a.local.changed
		if failures > 0 {
			changed = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-a.back:
		case <-timer.C:
		}
		host, instances, ok := a.local.snapshot()
		if !ok {
			timer.Reset(a.cfg.ReportInterval)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, a.cfg.ReportTimeout)
		err := a.cfg.Controller.ReportInstances(rctx, host, instances)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			if failures == 1 {
				a.log.Warn("report instances; retrying", "instances", len(instances), "err", err)
			}
			timer.Reset(controller.Backoff(failures, a.cfg.MinBackoff, a.cfg.MaxBackoff))
			continue
		}
		if failures > 0 {
			a.log.Info("reported instances after failures", "failures", failures)
		}
		failures = 0
		timer.Reset(a.cfg.ReportInterval)
	}
}
