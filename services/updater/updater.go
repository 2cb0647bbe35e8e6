// Package updater upgrades a cluster's hosts to a new signed image, one
// host at a time: it cordons and drains the host (the scheduler moves
// its jobs), sends it the upgrade bundle (the host writes its other slot
// and reboots into it on trial), waits until the host is back on the new
// version, committed, and its platform jobs are healthy, and uncordons
// it. A controller voter is taken down only while every other voter is
// healthy, so raft keeps its quorum. A host that does not come back
// healthy stops the upgrade; one that comes back on the new version but
// whose jobs stay unhealthy is rolled back.
//
// The upgrade and each host's step live in the controller (kind
// upgrades): the updater runs under the active scheduler, and when it
// dies, or its own host is drained for the upgrade, the next active
// scheduler's updater continues from the recorded step. Every step is
// safe to run again.
package updater

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/services/controller"
)

// Controller is what the updater needs of the controller.
type Controller interface {
	Upgrades(ctx context.Context, q controller.QueryOptions) ([]controller.Upgrade, controller.QueryMeta, error)
	Upgrade(ctx context.Context, id string, q controller.QueryOptions) (controller.Upgrade, controller.QueryMeta, error)
	PutUpgrade(ctx context.Context, u controller.Upgrade, cas *uint64) (controller.Upgrade, error)
	Hosts(ctx context.Context, q controller.QueryOptions) ([]controller.Host, controller.QueryMeta, error)
	Status(ctx context.Context) (controller.Status, error)
	Drain(ctx context.Context, id string) (controller.Host, error)
	Cordon(ctx context.Context, id string, cordon bool) (controller.Host, error)
	Placements(ctx context.Context, q controller.QueryOptions) ([]controller.Placement, controller.QueryMeta, error)
	Formations(ctx context.Context, q controller.QueryOptions) ([]controller.Formation, controller.QueryMeta, error)
	Instances(ctx context.Context, q controller.QueryOptions) ([]controller.Instance, controller.QueryMeta, error)
}

// HostAPI is what the updater needs of a host's API.
type HostAPI interface {
	Host(ctx context.Context) (host.HostInfo, error)
	Upgrade(ctx context.Context, bundle io.Reader, opts host.UpgradeOptions) (host.UpgradeResult, error)
	Rollback(ctx context.Context) (host.UpgradeResult, error)
}

// Config configures an Updater.
type Config struct {
	Controller Controller
	// Dial returns a client for the host API at addr.
	Dial func(addr string) HostAPI
	// OpenBundle opens an upgrade's bundle (Upgrade.Bundle) in the
	// cluster's registry.
	OpenBundle func(ctx context.Context, ref string) (io.ReadCloser, error)
	// DrainTimeout bounds a host's drain; BackTimeout its reboot until
	// it is back on the new version and committed (its own commit
	// timeout and tries included); HealthyTimeout the wait for its
	// platform jobs after that.
	DrainTimeout   time.Duration
	BackTimeout    time.Duration
	HealthyTimeout time.Duration
	// SendTimeout bounds one sending of the bundle to a host; a send cut
	// off is tried again (the host writes nothing from a cut bundle).
	SendTimeout time.Duration
	// Poll is how often a host's state is read while waiting.
	Poll   time.Duration
	Logger *slog.Logger
}

// DefaultConfig returns the timeouts the platform uses.
func DefaultConfig() Config {
	return Config{
		DrainTimeout:   15 * time.Minute,
		BackTimeout:    45 * time.Minute,
		HealthyTimeout: 10 * time.Minute,
		SendTimeout:    20 * time.Minute,
		Poll:           2 * time.Second,
	}
}

// Updater carries out the cluster's upgrades.
type Updater struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg.
func New(cfg Config) (*Updater, error) {
	if cfg.Controller == nil || cfg.Dial == nil || cfg.OpenBundle == nil {
		return nil, errors.New("updater: Config needs Controller, Dial and OpenBundle")
	}
	def := DefaultConfig()
	cfg.DrainTimeout = cmp.Or(cfg.DrainTimeout, def.DrainTimeout)
	cfg.BackTimeout = cmp.Or(cfg.BackTimeout, def.BackTimeout)
	cfg.HealthyTimeout = cmp.Or(cfg.HealthyTimeout, def.HealthyTimeout)
	cfg.SendTimeout = cmp.Or(cfg.SendTimeout, def.SendTimeout)
	cfg.Poll = cmp.Or(cfg.Poll, def.Poll)
	return &Updater{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default())}, nil
}

// Lead runs the running upgrade, if any, until ctx ends: the scheduler
// calls it while it is the active one.
func (u *Updater) Lead(ctx context.Context) {
	var index uint64
	for ctx.Err() == nil {
		ups, meta, err := u.cfg.Controller.Upgrades(ctx, controller.QueryOptions{Index: index, Wait: time.Minute})
		if err != nil {
			u.log.Warn("read upgrades", "err", err)
			sleep(ctx, 5*time.Second)
			continue
		}
		index = meta.Index
		for _, up := range ups {
			if up.State != controller.UpgradeRunning {
				continue
			}
			if err := u.run(ctx, up); err != nil && ctx.Err() == nil {
				// Not the upgrade's own failure (that is recorded): a
				// controller between leaders, say. Try again.
				u.log.Warn("upgrade interrupted; continuing", "upgrade", up.ID, "err", err)
				index = 0
				sleep(ctx, 5*time.Second)
			}
		}
	}
}

// errStopped: the upgrade was canceled or ended elsewhere.
var errStopped = errors.New("upgrade stopped")

// run carries out one upgrade from where its record stands.
type run struct {
	u  *Updater
	up controller.Upgrade
}

func (u *Updater) run(ctx context.Context, up controller.Upgrade) error {
	r := &run{u: u, up: up}
	if len(r.up.Hosts) == 0 {
		if err := r.plan(ctx); err != nil {
			return r.fail(ctx, err.Error())
		}
	}
	for i := range r.up.Hosts {
		switch r.up.Hosts[i].State {
		case controller.HostUpgradeDone, controller.HostUpgradeSkipped:
			continue
		case controller.HostUpgradeFailed:
			return r.fail(ctx, fmt.Sprintf("host %s failed: %s", r.up.Hosts[i].ID, r.up.Hosts[i].Note))
		}
		if err := r.host(ctx, i); err != nil {
			var f *hostFailure
			if errors.As(err, &f) {
				if h := &r.up.Hosts[i]; h.State != controller.HostUpgradeFailed {
					h.State, h.Since, h.Note = controller.HostUpgradeFailed, time.Now().UTC(), f.Error()
				}
				return r.fail(ctx, f.Error())
			}
			if errors.Is(err, errStopped) {
				return nil
			}
			return err
		}
	}
	r.up.State = controller.UpgradeDone
	r.logf("all %d hosts on %s", len(r.up.Hosts), r.up.Version)
	return r.save(ctx)
}

// hostFailure ends the upgrade: a host did not come back healthy.
type hostFailure struct{ msg string }

func (f *hostFailure) Error() string { return f.msg }

func failure(format string, args ...any) error {
	return &hostFailure{msg: fmt.Sprintf(format, args...)}
}

// plan orders the hosts: those that are not controller voters first,
// then the voters, the raft leader last, so that leadership moves once.
func (r *run) plan(ctx context.Context) error {
	hosts, _, err := r.u.cfg.Controller.Hosts(ctx, controller.QueryOptions{Consistent: true})
	if err != nil {
		return err
	}
	st, err := r.u.cfg.Controller.Status(ctx)
	if err != nil {
		return err
	}
	voters := map[string]bool{}
	for _, v := range st.Voters {
		if v.Suffrage == "voter" {
			voters[v.ID] = true
		}
	}
	var plan []controller.UpgradeHost
	for _, h := range hosts {
		switch h.Status {
		case host.StatusAlive:
		case host.StatusLeft:
			continue // gone on purpose
		default:
			return fmt.Errorf("host %s (%s) is %s: bring it back or remove it before upgrading", h.ID, h.Hostname, h.Status)
		}
		plan = append(plan, controller.UpgradeHost{ID: h.ID, Hostname: h.Hostname, Voter: voters[h.ID], From: h.Version, State: controller.HostUpgradePending})
	}
	rank := func(h controller.UpgradeHost) int {
		switch {
		case h.ID == st.Leader:
			return 2
		case h.Voter:
			return 1
		}
		return 0
	}
	slices.SortStableFunc(plan, func(a, b controller.UpgradeHost) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), strings.Compare(a.Hostname, b.Hostname))
	})
	r.up.Hosts = plan
	var names []string
	for _, h := range plan {
		names = append(names, h.Hostname)
	}
	r.logf("plan: %s", strings.Join(names, ", "))
	return r.save(ctx)
}

// logf adds a line to the upgrade's log (saved with the next step).
func (r *run) logf(format string, args ...any) {
	line := time.Now().UTC().Format("15:04:05 ") + fmt.Sprintf(format, args...)
	r.u.log.Info(fmt.Sprintf(format, args...), "upgrade", r.up.ID)
	r.up.Log = append(r.up.Log, line)
	if n := len(r.up.Log) - 200; n > 0 {
		r.up.Log = r.up.Log[n:]
	}
}

// save writes the upgrade if nobody else did since it was read: a
// cancel wins over the updater's next step.
func (r *run) save(ctx context.Context) error {
	cas := r.up.ModifyIndex
	for {
		out, err := r.u.cfg.Controller.PutUpgrade(ctx, r.up, &cas)
		if err == nil {
			r.up = out
			return nil
		}
		if !controller.IsConflict(err) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.u.log.Warn("save upgrade; trying again", "err", err)
			sleep(ctx, 2*time.Second)
			continue
		}
		cur, _, gerr := r.u.cfg.Controller.Upgrade(ctx, r.up.ID, controller.QueryOptions{Consistent: true})
		if gerr != nil {
			return gerr
		}
		if cur.State != controller.UpgradeRunning {
			r.u.log.Info("upgrade ended elsewhere", "upgrade", r.up.ID, "state", cur.State)
			return errStopped
		}
		return fmt.Errorf("upgrade %s changed under the updater: %w", r.up.ID, err)
	}
}

// fail records the upgrade as failed.
func (r *run) fail(ctx context.Context, reason string) error {
	r.up.State, r.up.Reason = controller.UpgradeFailed, reason
	r.logf("failed: %s", reason)
	if err := r.save(ctx); err != nil && !errors.Is(err, errStopped) {
		return err
	}
	return nil
}

// step records host i's next state.
func (r *run) step(ctx context.Context, i int, state, note string) error {
	h := &r.up.Hosts[i]
	h.State, h.Since, h.Note = state, time.Now().UTC(), note
	r.logf("%s: %s%s", h.Hostname, state, strings.TrimSuffix(" ("+note+")", " ()"))
	return r.save(ctx)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
