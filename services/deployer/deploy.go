package deployer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// errDeployMoved: the deploy's record changed under this deployer (an
// operator or another deployer ended it); it stops here.
var errDeployMoved = errors.New("the deploy was changed by another writer")

// failure is why a deploy cannot succeed (its instances are not
// healthy, its release command failed): the deploy ends failed at once.
// Other errors are tried again for up to maxTrouble.
type failure struct{ error }

func (f *failure) Unwrap() error { return f.error }

func failed(format string, args ...any) error { return &failure{fmt.Errorf(format, args...)} }

// maxTrouble is how long a deploy keeps trying steps that fail for
// other reasons than a failure.
const maxTrouble = 5 * time.Minute

// run is one deploy being carried out.
type run struct {
	d   *Deployer
	dep controller.Deploy // as last written, with its ModifyIndex
}

// carryOut takes the deploy with id from where the controller says it
// is to its end.
func (d *Deployer) carryOut(ctx context.Context, id string) {
	dep, _, err := d.cfg.Controller.Deploy(ctx, id, controller.QueryOptions{})
	if err != nil {
		d.log.Warn("read deploy", "deploy", id, "err", err)
		return
	}
	if dep.State != controller.DeployRunning {
		return
	}
	r := &run{d: d, dep: dep}
	var troubleSince time.Time
	for {
		err = r.steps(ctx)
		if err == nil {
			break
		}
		var f *failure
		switch {
		case ctx.Err() != nil:
			// Deposed or stopping: the next deployer carries on.
			return
		case errors.Is(err, errDeployMoved):
			d.log.Info("deploy changed by another writer", "deploy", id)
			return
		case !errors.As(err, &f) && (troubleSince.IsZero() || time.Since(troubleSince) < maxTrouble):
			// The controller between leaders, a write that raced the
			// scheduler's: the steps carry on from what is recorded.
			if troubleSince.IsZero() {
				troubleSince = time.Now()
			}
			d.log.Warn("deploy step, trying again", "deploy", id, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(d.cfg.Poll):
			}
			continue
		}
		d.log.Warn("deploy failed", "deploy", id, "err", err)
		if err := r.end(ctx, controller.DeployFailed, err.Error()); err != nil {
			d.log.Warn("record failed deploy", "deploy", id, "err", err)
		}
		return
	}
	if err := r.end(ctx, controller.DeployDone, ""); err != nil {
		d.log.Warn("record deploy done", "deploy", id, "err", err)
		return
	}
	d.log.Info("deploy done", "deploy", id)
}

// steps: the release command, then each process type of the new release
// (web first) brought to its scale in batches, the old instances of that
// type going as the new ones get healthy; last, the old release's types
// the new one does not have.
func (r *run) steps(ctx context.Context) error {
	c := r.d.cfg.Controller
	dep := r.dep
	to, err := c.Release(ctx, dep.App, dep.To, controller.QueryOptions{})
	if err != nil {
		return fmt.Errorf("read release v%d: %w", dep.To, err)
	}
	if len(dep.Log) == 0 {
		if err := r.say(ctx, "deploying v%d of %s (%s): %s; each batch gets %s to pass its health checks",
			dep.To, dep.App, dep.Strategy, to.Description, dep.HealthTimeout); err != nil {
			return err
		}
		for _, typ := range processTypes(&to) {
			p := to.Processes[typ]
			if chk := p.HealthCheck(); chk != nil {
				if err := r.say(ctx, "%s: health check %s", typ, describeCheck(chk, p.Port)); err != nil {
					return err
				}
			}
		}
	}
	if len(to.ReleaseCommand) > 0 && !r.logged(releaseDone) {
		if err := r.releaseCommand(ctx, &to); err != nil {
			return err
		}
	}
	for _, typ := range processTypes(&to) {
		if err := r.rollType(ctx, &to, typ); err != nil {
			return err
		}
	}
	return nil
}

// releaseDone starts the log line that says the release command passed:
// a deployer that carries on a deploy does not run it again.
const releaseDone = "release command passed"

func (r *run) logged(prefix string) bool {
	for _, s := range r.dep.Log {
		if strings.HasPrefix(s.Text, prefix) {
			return true
		}
	}
	return false
}

// rollType brings typ of release to to its scale: batches of new
// instances (one, or all at once) started and waited for, as many old
// ones scaled down after each.
func (r *run) rollType(ctx context.Context, to *controller.Release, typ string) error {
	c := r.d.cfg.Controller
	name := controller.ProcessFormationName(to.App, typ, to.Version)
	for {
		s, err := r.d.read(ctx, true)
		if err != nil {
			return err
		}
		app, ok := s.apps[to.App]
		if !ok {
			return failed("app %s was destroyed", to.App)
		}
		target := app.ScaleOf(typ)
		cur, exists := findFormation(s.formations, name)
		if !exists {
			f := controller.ProcessFormation(to, typ, min(target, r.batch(target)))
			if _, err := c.PutFormation(ctx, f, new(uint64)); err != nil && !controller.IsConflict(err) {
				if controller.IsInvalid(err) {
					return failed("make formation %s: %v", name, err)
				}
				return fmt.Errorf("make formation %s: %w", name, err)
			}
			if f.Count > 0 {
				if err := r.say(ctx, "%s: starting %d of %d", typ, f.Count, target); err != nil {
					return err
				}
			}
			continue
		}
		n := cur.Count
		if n > 0 {
			if err := r.awaitHealthy(ctx, name, n); err != nil {
				var f *failure
				if errors.As(err, &f) {
					return failed("%s: %v", typ, err)
				}
				return err
			}
		}
		if err := r.scaleOld(ctx, s, to, typ, max(0, target-n)); err != nil {
			return err
		}
		if n >= target {
			if n > 0 {
				return r.say(ctx, "%s: %d of %d healthy", typ, n, target)
			}
			return nil
		}
		cur.Count = min(target, n+r.batch(target))
		if _, err := c.PutFormation(ctx, cur, &cur.ModifyIndex); controller.IsConflict(err) {
			continue // the scheduler wrote its status: read again
		} else if err != nil {
			return fmt.Errorf("scale formation %s: %w", name, err)
		}
		if err := r.say(ctx, "%s: %d of %d healthy; starting %d more", typ, n, target, cur.Count-n); err != nil {
			return err
		}
	}
}

// batch is how many new instances a step starts.
func (r *run) batch(target int) int {
	if r.dep.Strategy == controller.StrategyAllAtOnce {
		return max(target, 1)
	}
	return 1
}

// scaleOld lowers the app's other formations of typ to want instances
// in all, taking from the oldest release first.
func (r *run) scaleOld(ctx context.Context, s *state, to *controller.Release, typ string, want int) error {
	old := oldFormations(s.formations, to, typ)
	total := 0
	for _, f := range old {
		total += f.Count
	}
	for _, f := range old {
		if total <= want {
			return nil
		}
		cut := min(f.Count, total-want)
		f.Count -= cut
		total -= cut
		if _, err := r.d.cfg.Controller.PutFormation(ctx, f, &f.ModifyIndex); err != nil {
			// A conflict (the scheduler wrote its status) is tried
			// again from a new reading.
			return fmt.Errorf("scale down %s: %w", f.Name, err)
		}
		if err := r.say(ctx, "%s: stopping %d of %s (drained first)", typ, cut, f.Name); err != nil {
			return err
		}
	}
	return nil
}

// oldFormations are the app's formations of typ other than to's, oldest
// release first.
func oldFormations(all []controller.Formation, to *controller.Release, typ string) []controller.Formation {
	var out []controller.Formation
	self := controller.ProcessFormationName(to.App, typ, to.Version)
	for _, f := range all {
		if f.Name != self && f.Job.Tags[controller.AppTag] == to.App && f.Job.Tags[controller.TypeTag] == typ {
			out = append(out, f)
		}
	}
	// Names differ only by their release number.
	slicesSortByRelease(out)
	return out
}

// awaitHealthy waits until n instances of formation name are healthy, for
// up to the deploy's health timeout.
func (r *run) awaitHealthy(ctx context.Context, name string, n int) error {
	deadline := time.Now().Add(jobDuration(r.dep.HealthTimeout, controller.DefaultHealthTimeout))
	for {
		s, err := r.d.read(ctx, true)
		if err != nil {
			return err
		}
		f, ok := findFormation(s.formations, name)
		if !ok {
			return failed("formation %s was removed", name)
		}
		got := healthy(&f, s.instances)
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return failed("%d of %d new instances healthy after %s: %s", got, n, r.dep.HealthTimeout, unhealthyReason(&f, s.instances))
		}
		if err := r.stillOurs(ctx); err != nil {
			return err
		}
		// Until the instances change (discovery reports a check), or a
		// second at most: a process without a service is counted from
		// its formation's status, which this does not watch.
		wait := max(min(time.Until(deadline), time.Second), time.Millisecond)
		wctx, cancel := context.WithTimeout(ctx, wait+readTimeout)
		_, _, err = r.d.cfg.Controller.Instances(wctx, controller.QueryOptions{Index: s.instancesIndex, Wait: wait})
		cancel()
		if err != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(r.d.cfg.Poll):
			}
		}
	}
}

// stillOurs checks that the deploy is still running as this deployer
// last wrote it.
func (r *run) stillOurs(ctx context.Context) error {
	cur, _, err := r.d.cfg.Controller.Deploy(ctx, r.dep.ID, controller.QueryOptions{})
	if err != nil {
		return fmt.Errorf("read deploy: %w", err)
	}
	// A follower may answer an older version than this deployer's last
	// write; only a newer one is another writer's.
	if cur.ModifyIndex > r.dep.ModifyIndex || (cur.ModifyIndex == r.dep.ModifyIndex && cur.State != controller.DeployRunning) {
		return errDeployMoved
	}
	return nil
}

// say appends a line to the deploy's log.
func (r *run) say(ctx context.Context, format string, args ...any) error {
	next := r.dep
	next.Log = append(append([]controller.DeployStep(nil), r.dep.Log...), controller.DeployStep{Time: time.Now().UTC(), Text: fmt.Sprintf(format, args...)})
	return r.write(ctx, next)
}

// end records the deploy's end.
func (r *run) end(ctx context.Context, state, reason string) error {
	next := r.dep
	next.State, next.Reason = state, reason
	text := "deploy done: v" + fmt.Sprint(r.dep.To) + " serves"
	if state == controller.DeployFailed {
		text = fmt.Sprintf("deploy failed, v%d serves: %s", r.dep.From, reason)
	}
	next.Log = append(append([]controller.DeployStep(nil), r.dep.Log...), controller.DeployStep{Time: time.Now().UTC(), Text: text})
	return r.write(ctx, next)
}

func (r *run) write(ctx context.Context, next controller.Deploy) error {
	out, err := r.d.cfg.Controller.UpdateDeploy(ctx, next, r.dep.ModifyIndex)
	if controller.IsConflict(err) {
		return errDeployMoved
	}
	if err != nil {
		return fmt.Errorf("record deploy %s: %w", r.dep.ID, err)
	}
	r.dep = out
	return nil
}

func findFormation(all []controller.Formation, name string) (controller.Formation, bool) {
	for _, f := range all {
		if f.Name == name {
			return f, true
		}
	}
	return controller.Formation{}, false
}

// slicesSortByRelease orders formations by their release number.
func slicesSortByRelease(fs []controller.Formation) {
	slices.SortFunc(fs, func(a, b controller.Formation) int {
		x, _ := strconv.Atoi(a.Job.Tags[controller.ReleaseTag])
		y, _ := strconv.Atoi(b.Job.Tags[controller.ReleaseTag])
		return x - y
	})
}

// describeCheck says what a health check does, for the deploy's log.
func describeCheck(c *job.Check, port int) string {
	switch c.Type {
	case job.CheckHTTP:
		return fmt.Sprintf("GET :%d%s wants %d, every %s, timeout %s", port, cmp.Or(c.Path, job.DefaultCheckPath), cmp.Or(c.Status, job.DefaultCheckStatus), c.Interval, c.Timeout)
	case job.CheckCommand:
		return fmt.Sprintf("command %q exits 0, every %s, timeout %s", strings.Join(c.Command, " "), c.Interval, c.Timeout)
	}
	return fmt.Sprintf("tcp :%d accepts, every %s, timeout %s", port, c.Interval, c.Timeout)
}
