// Package deployer runs apps: it keeps the formations of each app's
// serving release at the app's scale, removes the formations of every
// other release once the serving one is healthy, and carries out
// deploys: the new release's instances start a batch at a time, each
// batch must pass its health checks before as many old instances go
// (the scheduler drains them through the routers first), and a deploy
// whose instances never get healthy ends failed, the old release serving
// as before.
//
// Its state is the controller's (apps, releases, deploys, formations,
// instances): a deployer that stops mid-deploy is replaced by another
// that carries on from what the controller says. It does not place
// jobs (the scheduler does) or check their health (discovery does).
package deployer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// Controller is what the deployer uses of the controller's API;
// *controller.Client has it.
type Controller interface {
	Apps(ctx context.Context, q controller.QueryOptions) ([]controller.App, controller.QueryMeta, error)
	App(ctx context.Context, name string, q controller.QueryOptions) (controller.App, error)
	Release(ctx context.Context, app string, version int, q controller.QueryOptions) (controller.Release, error)
	Deploys(ctx context.Context, q controller.QueryOptions) ([]controller.Deploy, controller.QueryMeta, error)
	Deploy(ctx context.Context, id string, q controller.QueryOptions) (controller.Deploy, controller.QueryMeta, error)
	UpdateDeploy(ctx context.Context, d controller.Deploy, cas uint64) (controller.Deploy, error)
	Formations(ctx context.Context, q controller.QueryOptions) ([]controller.Formation, controller.QueryMeta, error)
	PutFormation(ctx context.Context, f controller.Formation, cas *uint64) (controller.Formation, error)
	DeleteFormation(ctx context.Context, name string, cas *uint64) error
	Instances(ctx context.Context, q controller.QueryOptions) ([]controller.Instance, controller.QueryMeta, error)
	Hosts(ctx context.Context, q controller.QueryOptions) ([]controller.Host, controller.QueryMeta, error)
}

var _ Controller = (*controller.Client)(nil)

// Config configures a deployer. Make it with DefaultConfig and set
// Controller and Dial.
type Config struct {
	Controller Controller
	// Retention, when set, removes old releases and unused images.
	Retention Retention
	// Dial returns a client for the host API at addr: release commands
	// run as one-off jobs on a host.
	Dial func(addr string) HostAPI
	// Poll is how often a deploy looks at its new instances' health.
	Poll time.Duration
	// Resync is how often the apps are reconciled when nothing changed.
	Resync time.Duration
	// WatchWait is how long one blocking query waits.
	WatchWait time.Duration
	// ReleaseTimeout bounds a release command.
	ReleaseTimeout time.Duration
	// PruneEvery is how often old releases and images are looked for,
	// besides after each deploy.
	PruneEvery time.Duration
	Logger     *slog.Logger
}

// DefaultConfig returns the defaults of every field but Controller and
// Dial.
func DefaultConfig() Config {
	return Config{
		Poll:           500 * time.Millisecond,
		Resync:         5 * time.Second,
		WatchWait:      time.Minute,
		ReleaseTimeout: 10 * time.Minute,
		PruneEvery:     10 * time.Minute,
	}
}

// Deployer is one deployer; Lead runs it while its caller is the active
// one (the active scheduler).
type Deployer struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	running map[string]bool // deploy IDs being carried out
}

// New checks cfg and returns a deployer.
func New(cfg Config) (*Deployer, error) {
	if cfg.Controller == nil || cfg.Dial == nil {
		return nil, errors.New("deployer: Config needs Controller and Dial")
	}
	def := DefaultConfig()
	cfg.Poll = cmp.Or(cfg.Poll, def.Poll)
	cfg.Resync = cmp.Or(cfg.Resync, def.Resync)
	cfg.WatchWait = cmp.Or(cfg.WatchWait, def.WatchWait)
	cfg.ReleaseTimeout = cmp.Or(cfg.ReleaseTimeout, def.ReleaseTimeout)
	cfg.PruneEvery = cmp.Or(cfg.PruneEvery, def.PruneEvery)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Deployer{cfg: cfg, log: log, running: map[string]bool{}}, nil
}

// Lead runs deploys and reconciles apps until ctx ends.
func (d *Deployer) Lead(ctx context.Context) {
	changed := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	c := d.cfg.Controller
	watch := func(read func(context.Context, controller.QueryOptions) (uint64, error)) {
		wg.Go(func() { controller.WatchIndex(ctx, d.cfg.WatchWait, d.cfg.Poll, read, changed) })
	}
	watch(func(ctx context.Context, q controller.QueryOptions) (uint64, error) {
		_, m, err := c.Apps(ctx, q)
		return m.Index, err
	})
	watch(func(ctx context.Context, q controller.QueryOptions) (uint64, error) {
		_, m, err := c.Deploys(ctx, q)
		return m.Index, err
	})
	watch(func(ctx context.Context, q controller.QueryOptions) (uint64, error) {
		_, m, err := c.Instances(ctx, q)
		return m.Index, err
	})
	// Prune after each deploy that ended (its index moved past the
	// last one pruned for), and every PruneEvery.
	var pruned time.Time
	var prunedFor uint64
	for {
		ended, err := d.pass(ctx, &wg)
		if err != nil && ctx.Err() == nil {
			d.log.Warn("deployer pass", "err", err)
		}
		if d.cfg.Retention != nil && (time.Since(pruned) > d.cfg.PruneEvery || ended > prunedFor) {
			if err := d.prune(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn("prune releases and images", "err", err)
			}
			pruned, prunedFor = time.Now(), ended
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(d.cfg.Resync):
		}
	}
}

// pass starts the deploys not yet under way and reconciles the apps that
// no deploy holds; it returns the highest index of a deploy that ended.
func (d *Deployer) pass(ctx context.Context, wg *sync.WaitGroup) (ended uint64, err error) {
	c := d.cfg.Controller
	deploys, _, err := c.Deploys(ctx, controller.QueryOptions{})
	if err != nil {
		return 0, fmt.Errorf("read deploys: %w", err)
	}
	busy := map[string]bool{}
	for _, dep := range deploys {
		if dep.State != controller.DeployRunning {
			ended = max(ended, dep.ModifyIndex)
			continue
		}
		busy[dep.App] = true
		d.mu.Lock()
		started := d.running[dep.ID]
		d.running[dep.ID] = true
		d.mu.Unlock()
		if !started {
			wg.Go(func() {
				defer func() {
					d.mu.Lock()
					delete(d.running, dep.ID)
					d.mu.Unlock()
				}()
				d.carryOut(ctx, dep.ID)
			})
		}
	}
	s, err := d.read(ctx, false)
	if err != nil {
		return ended, err
	}
	for _, f := range reconcile(s, busy) {
		if err := d.apply(ctx, f); err != nil {
			d.log.Warn("reconcile", "formation", f.name, "err", err)
		}
	}
	return ended, nil
}

// readTimeout bounds one reading of the state.
const readTimeout = 30 * time.Second

// state is what reconcile and the deploys read of the controller.
type state struct {
	apps       map[string]controller.App
	releases   map[string]controller.Release // by ID, the serving ones
	formations []controller.Formation
	instances  []controller.Instance
	// instancesIndex is the instances' index, to watch for a change.
	instancesIndex uint64
}

// read reads the state; consistent reads it at the leader, to see this
// deployer's last writes.
func (d *Deployer) read(ctx context.Context, consistent bool) (*state, error) {
	// Bounded: a controller that takes no answer must not hold a
	// deploy past its health timeout.
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	c := d.cfg.Controller
	q := controller.QueryOptions{Consistent: consistent}
	apps, _, err := c.Apps(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("read apps: %w", err)
	}
	s := &state{apps: map[string]controller.App{}, releases: map[string]controller.Release{}}
	for _, a := range apps {
		s.apps[a.Name] = a
		if a.Release == 0 {
			continue
		}
		r, err := c.Release(ctx, a.Name, a.Release, q)
		if err != nil {
			return nil, fmt.Errorf("read release v%d of %s: %w", a.Release, a.Name, err)
		}
		s.releases[r.ID] = r
	}
	if s.formations, _, err = c.Formations(ctx, q); err != nil {
		return nil, fmt.Errorf("read formations: %w", err)
	}
	var m controller.QueryMeta
	if s.instances, m, err = c.Instances(ctx, q); err != nil {
		return nil, fmt.Errorf("read instances: %w", err)
	}
	s.instancesIndex = m.Index
	return s, nil
}

// fix is one change reconcile asks for: a formation to write (with its
// compare-and-set index, 0 to create) or to delete.
type fix struct {
	name      string
	formation *controller.Formation
	cas       uint64
	delete    bool
}

func (d *Deployer) apply(ctx context.Context, f fix) error {
	if f.delete {
		return d.cfg.Controller.DeleteFormation(ctx, f.name, &f.cas)
	}
	_, err := d.cfg.Controller.PutFormation(ctx, *f.formation, &f.cas)
	return err
}

// reconcile returns the changes that bring the apps no deploy holds
// (busy) to their serving release at their scale: its formations made
// or scaled, and every other formation of the app scaled to 0 once the
// serving one of the same type is healthy, then deleted once its jobs
// are gone. Formations of apps that no longer exist go the same way.
func reconcile(s *state, busy map[string]bool) []fix {
	var fixes []fix
	byName := map[string]controller.Formation{}
	for _, f := range s.formations {
		byName[f.Name] = f
	}
	// The serving formations, and whether each type is ready to take
	// over from the others.
	serving := map[string]bool{}
	ready := map[string]bool{} // "<app>/<type>"
	for _, a := range sortedApps(s.apps) {
		if busy[a.Name] || a.Release == 0 {
			continue
		}
		r := s.releases[controller.ReleaseID(a.Name, a.Release)]
		for _, typ := range processTypes(&r) {
			want := a.ScaleOf(typ)
			f := controller.ProcessFormation(&r, typ, want)
			serving[f.Name] = true
			cur, ok := byName[f.Name]
			switch {
			case !ok:
				fixes = append(fixes, fix{name: f.Name, formation: &f})
			case cur.Count != want:
				cur.Count = want
				fixes = append(fixes, fix{name: f.Name, formation: &cur, cas: cur.ModifyIndex})
			default:
				ready[a.Name+"/"+typ] = healthy(&cur, s.instances) >= want
			}
		}
	}
	for _, f := range s.formations {
		app, ok := f.Job.Tags[controller.AppTag]
		if !ok || serving[f.Name] || busy[app] {
			continue
		}
		_, exists := s.apps[app]
		typ := f.Job.Tags[controller.TypeTag]
		switch {
		case f.Count > 0 && (!exists || ready[app+"/"+typ] || !servesType(s, app, typ)):
			f.Count = 0
			fixes = append(fixes, fix{name: f.Name, formation: &f, cas: f.ModifyIndex})
		case f.Count == 0 && f.Status.Running == 0:
			fixes = append(fixes, fix{name: f.Name, delete: true, cas: f.ModifyIndex})
		}
	}
	return fixes
}

// servesType reports whether app's serving release has process type typ.
func servesType(s *state, app, typ string) bool {
	a := s.apps[app]
	r, ok := s.releases[controller.ReleaseID(app, a.Release)]
	if !ok {
		return false
	}
	_, has := r.Processes[typ]
	return has
}

func sortedApps(apps map[string]controller.App) []controller.App {
	out := make([]controller.App, 0, len(apps))
	for _, a := range apps {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b controller.App) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// processTypes are r's process types, web first.
func processTypes(r *controller.Release) []string {
	types := make([]string, 0, len(r.Processes))
	for t := range r.Processes {
		types = append(types, t)
	}
	slices.SortFunc(types, func(a, b string) int {
		switch {
		case a == controller.WebProcess:
			return -1
		case b == controller.WebProcess:
			return 1
		}
		return strings.Compare(a, b)
	})
	return types
}

// healthy counts f's instances that serve: for a process with a service,
// those whose every declared service passes its check and is not
// draining; for one without, the running jobs the scheduler last saw.
func healthy(f *controller.Formation, instances []controller.Instance) int {
	if len(f.Job.Services) == 0 {
		return f.Status.Running
	}
	prefix := cmp.Or(f.Job.ID, f.Name) + "-"
	good := map[string]bool{}
	bad := map[string]bool{}
	for _, in := range instances {
		if !strings.HasPrefix(in.Job, prefix) {
			continue
		}
		if _, err := strconv.Atoi(in.Job[len(prefix):]); err != nil {
			continue
		}
		key := in.Host + "/" + in.Job
		if in.Healthy && !in.Draining {
			good[key] = true
		} else {
			bad[key] = true
		}
	}
	n := 0
	for k := range good {
		if !bad[k] {
			n++
		}
	}
	return n
}

// unhealthyReason says, in a few words, why f's instances are not
// healthy: the scheduler's reason, or the instances' last checks.
func unhealthyReason(f *controller.Formation, instances []controller.Instance) string {
	if f.Status.Reason != "" {
		return f.Status.Reason
	}
	prefix := cmp.Or(f.Job.ID, f.Name) + "-"
	var outs []string
	for _, in := range instances {
		if strings.HasPrefix(in.Job, prefix) && !in.Healthy {
			outs = append(outs, fmt.Sprintf("%s on %s: %s", in.Job, in.Host, cmp.Or(in.Output, "not checked yet")))
		}
	}
	if len(outs) == 0 {
		return fmt.Sprintf("%d of %d running, no instance reported", f.Status.Running, f.Count)
	}
	slices.Sort(outs)
	return strings.Join(outs, "; ")
}

// jobDuration is a job.Duration's time.Duration, or def when zero.
func jobDuration(d job.Duration, def time.Duration) time.Duration {
	return cmp.Or(d.Duration, def)
}
