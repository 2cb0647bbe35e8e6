// Package scheduler is the platform's scheduler: a service that keeps
// the controller's formations running on the cluster's hosts. Several
// instances run (one per controller host); one is active, the holder of
// the controller's "scheduler" lease, and every decision it makes is one
// write fenced by that lease, made before it acts on any host: a deposed
// scheduler's late decision is refused by the controller, and its
// successor knows every job it may have started.
//
// Each step it observes the hosts' jobs through their APIs, adopts the
// jobs that carry a formation's tag (how bootstrap hands over the jobs
// it started), asks package placement where instances go, records that
// in the controller, then starts and stops jobs through the host APIs.
//
// It does not decide placements itself (package placement does), run
// jobs (hostd does) or check their health (discovery does).
// docs/scheduler.md describes the rules for operators.
package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/router"
)

// LeaseName is the controller lease the active scheduler holds.
const LeaseName = "scheduler"

// HostAPI is what the scheduler uses of a host's API; *host.Client has it.
type HostAPI interface {
	Host(ctx context.Context) (host.HostInfo, error)
	Jobs(ctx context.Context) ([]job.Job, error)
	CreateJob(ctx context.Context, spec job.Spec) (job.Job, error)
	StopJob(ctx context.Context, id string, grace time.Duration) (job.Job, error)
	RemoveJob(ctx context.Context, id string, force bool) error
}

var _ HostAPI = (*host.Client)(nil)

// Controller is what the scheduler uses of the controller's API;
// *controller.Client has it.
type Controller interface {
	Formations(ctx context.Context, q controller.QueryOptions) ([]controller.Formation, controller.QueryMeta, error)
	Placements(ctx context.Context, q controller.QueryOptions) ([]controller.Placement, controller.QueryMeta, error)
	Hosts(ctx context.Context, q controller.QueryOptions) ([]controller.Host, controller.QueryMeta, error)
	Instances(ctx context.Context, q controller.QueryOptions) ([]controller.Instance, controller.QueryMeta, error)
	Lease(ctx context.Context, name, holder, host string, ttl time.Duration) (controller.Lease, error)
	Leases(ctx context.Context, q controller.QueryOptions) ([]controller.Lease, controller.QueryMeta, error)
	Schedule(ctx context.Context, s controller.Schedule) (uint64, error)
	DrainInstance(ctx context.Context, id string, drain bool) (controller.Instance, error)
}

var _ Controller = (*controller.Client)(nil)

// Config configures a scheduler. Make it with DefaultConfig and set
// Host, Controller and Dial.
type Config struct {
	// Host is the API of the host the scheduler runs on: its node ID
	// names the lease's holder.
	Host HostAPI
	// Controller is the controller's API.
	Controller Controller
	// Dial returns a client for the host API at addr (ip:port).
	Dial func(addr string) HostAPI

	// LeaseTTL is how long the lease lasts without renewal: how long a
	// scheduler that stopped answering, on a host Serf still sees
	// alive, stays the active one.
	LeaseTTL time.Duration
	// Retry is how often a standby asks for the lease, and the pause
	// after a failed call.
	Retry time.Duration
	// Resync is how often the hosts' jobs are read again when nothing
	// in the controller changed.
	Resync time.Duration
	// CallTimeout bounds one call to a host's API; a host that does not
	// answer in time is unreachable for this step.
	CallTimeout time.Duration
	// StartTimeout bounds a job's creation, which pulls its image when
	// the host lacks it (hostd carries a pull on past it, and the next
	// try finds the image there).
	StartTimeout time.Duration
	// StopGrace is how long a job being removed gets between SIGTERM
	// and SIGKILL.
	StopGrace time.Duration
	// WatchWait is how long one blocking query on the controller waits.
	WatchWait time.Duration
	// DialRouter, when set, returns a client for the router API at addr:
	// a job being removed that declares services is drained first (no
	// new work from the routers, and up to DrainTimeout for its work in
	// flight to end) and stopped after.
	DialRouter   func(addr string) *router.Client
	DrainTimeout time.Duration
	// WhileActive, when set, runs while this scheduler is the active
	// one, and is ended (its ctx) when it no longer is: how the deployer
	// runs once in the cluster, beside the scheduler whose formations it
	// writes.
	WhileActive func(ctx context.Context)

	// Logger receives the scheduler's log; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of every field but Host,
// Controller and Dial.
func DefaultConfig() Config {
	return Config{
		LeaseTTL:     5 * time.Second,
		Retry:        time.Second,
		Resync:       3 * time.Second,
		CallTimeout:  3 * time.Second,
		StartTimeout: 30 * time.Second,
		StopGrace:    10 * time.Second,
		WatchWait:    time.Minute,
		DrainTimeout: 30 * time.Second,
	}
}

// Scheduler is one scheduler instance, active or standby.
type Scheduler struct {
	cfg    Config
	log    *slog.Logger
	hostID string
	holder string
	hosts  *hostCache
	// failures are the placements whose job did not start, and when to
	// try again.
	failures *startFailures
	// lastWrite is the index of this scheduler's last schedule: its next
	// step reads placements at least that recent.
	lastWrite uint64
	// retiring are the jobs (by placement ID) being drained before they
	// stop: not orphans, although no placement has them.
	retiring sync.Map
}

// New checks cfg and returns a scheduler; Run starts it.
func New(cfg Config) (*Scheduler, error) {
	def := DefaultConfig()
	if cfg.Host == nil || cfg.Controller == nil || cfg.Dial == nil {
		return nil, errors.New("scheduler: Config needs Host, Controller and Dial")
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&cfg.LeaseTTL, def.LeaseTTL}, {&cfg.Retry, def.Retry}, {&cfg.Resync, def.Resync},
		{&cfg.CallTimeout, def.CallTimeout}, {&cfg.StartTimeout, def.StartTimeout}, {&cfg.StopGrace, def.StopGrace}, {&cfg.WatchWait, def.WatchWait},
		{&cfg.DrainTimeout, def.DrainTimeout}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if cfg.LeaseTTL < controller.MinLeaseTTL || cfg.LeaseTTL > controller.MaxLeaseTTL {
		return nil, fmt.Errorf("scheduler: lease TTL %s: use %s to %s", cfg.LeaseTTL, controller.MinLeaseTTL, controller.MaxLeaseTTL)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Scheduler{cfg: cfg, log: log, hosts: newHostCache(cfg.Dial), failures: newStartFailures()}, nil
}

// Run waits for the lease, schedules while it holds it, and waits again
// when it loses it, until ctx ends; then it gives the lease up so a
// standby takes over at once.
func (s *Scheduler) Run(ctx context.Context) error {
	info, err := s.localHost(ctx)
	if err != nil {
		return err
	}
	s.hostID = info.ID
	s.holder = info.ID + "/" + nonce()
	s.log.Info("scheduler started", "holder", s.holder)
	var lastErr string
	var leases uint64 // the leases' index a standby watches
	for {
		lctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
		l, err := s.cfg.Controller.Lease(lctx, LeaseName, s.holder, s.hostID, s.cfg.LeaseTTL)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil:
			s.log.Info("scheduler is active", "token", l.Token)
			s.lead(ctx, l.Token)
			if ctx.Err() != nil {
				s.release()
				return ctx.Err()
			}
			s.log.Info("scheduler is standing by")
		case controller.IsConflict(err):
			// Held by another: ask again when the leases change (the
			// controller frees a failed host's lease at once), at the
			// latest after Retry (a lease also ends by running out).
			lastErr = ""
			if leases = s.awaitLeases(ctx, leases); leases != 0 {
				continue
			}
		case err.Error() != lastErr:
			// Once per new error: a standby that cannot reach the
			// controller must say so, without a line a second.
			s.log.Warn("ask for the lease", "err", err)
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.cfg.Retry):
		}
	}
}

// awaitLeases waits until the leases collection moves past index, or
// Retry, and returns the index to wait on next; 0 when it could not
// watch (the caller then pauses for Retry).
func (s *Scheduler) awaitLeases(ctx context.Context, index uint64) uint64 {
	wctx, cancel := context.WithTimeout(ctx, s.cfg.Retry+s.cfg.CallTimeout)
	defer cancel()
	_, meta, err := s.cfg.Controller.Leases(wctx, controller.QueryOptions{Index: index, Wait: s.cfg.Retry})
	if err != nil {
		return 0
	}
	return meta.Index
}

// localHost waits for the local host's API.
func (s *Scheduler) localHost(ctx context.Context) (host.HostInfo, error) {
	for {
		info, err := s.cfg.Host.Host(ctx)
		if err == nil {
			return info, nil
		}
		s.log.Warn("local host API", "err", err)
		select {
		case <-ctx.Done():
			return host.HostInfo{}, fmt.Errorf("scheduler: local host API: %w", err)
		case <-time.After(s.cfg.Retry):
		}
	}
}

// release gives the lease up, briefly trying: if it fails the lease
// runs out by itself.
func (s *Scheduler) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s.cfg.Controller.Lease(ctx, LeaseName, s.holder, s.hostID, 0); err != nil {
		s.log.Warn("give up the lease", "err", err)
	}
}

func nonce() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}
