package updater

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/services/controller"
)

// host takes host i through its steps, from the one recorded.
func (r *run) host(ctx context.Context, i int) error {
	c := r.u.cfg.Controller
	api, err := r.hostAPI(ctx, r.up.Hosts[i].ID)
	if err != nil {
		return err
	}
	for {
		// Again at each step: a save replaces r.up, hosts included.
		h := &r.up.Hosts[i]
		switch h.State {
		case controller.HostUpgradePending:
			info, err := api.Host(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Hostname, err)
			}
			if info.Version == r.up.Version && info.Slots.Upgrade == "committed" {
				if err := r.step(ctx, i, controller.HostUpgradeSkipped, "runs "+r.up.Version+" already"); err != nil {
					return err
				}
				return nil
			}
			if h.Voter {
				if err := r.waitQuorum(ctx, h); err != nil {
					return err
				}
			}
			if _, err := c.Drain(ctx, h.ID); err != nil {
				return fmt.Errorf("drain %s: %w", h.Hostname, err)
			}
			if err := r.step(ctx, i, controller.HostUpgradeDraining, ""); err != nil {
				return err
			}

		case controller.HostUpgradeDraining:
			// Again after a restart: draining is idempotent.
			if _, err := c.Drain(ctx, h.ID); err != nil {
				return fmt.Errorf("drain %s: %w", h.Hostname, err)
			}
			dctx, cancel := context.WithTimeout(ctx, r.u.cfg.DrainTimeout)
			_, err := WaitDrained(dctx, c, h.ID, nil)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r.uncordon(ctx, h)
				return failure("%s did not drain within %s: %v", h.Hostname, r.u.cfg.DrainTimeout, err)
			}
			if err := r.step(ctx, i, controller.HostUpgradeInstalling, ""); err != nil {
				return err
			}

		case controller.HostUpgradeInstalling:
			info, err := api.Host(ctx)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Hostname, err)
			}
			note := "installed before a restart of the updater"
			if !installed(info, r.up.Version) {
				res, err := r.send(ctx, api)
				if err != nil {
					var apiErr *host.APIError
					if errors.As(err, &apiErr) && apiErr.StatusCode < 500 {
						r.uncordon(ctx, h)
						return failure("%s refused the upgrade: %s", h.Hostname, apiErr.Message)
					}
					return fmt.Errorf("send the bundle to %s: %w", h.Hostname, err)
				}
				note = "slot " + res.Slot
			}
			h.Booted = info.StartedAt
			if err := r.step(ctx, i, controller.HostUpgradeRebooting, note); err != nil {
				return err
			}

		case controller.HostUpgradeRebooting:
			if err := r.waitBack(ctx, i, api); err != nil {
				return err
			}
			if err := r.step(ctx, i, controller.HostUpgradeVerifying, ""); err != nil {
				return err
			}

		case controller.HostUpgradeVerifying:
			if err := r.waitHealthy(ctx, h); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return r.rollback(ctx, i, api, err)
			}
			if _, err := c.Cordon(ctx, h.ID, false); err != nil {
				return fmt.Errorf("uncordon %s: %w", h.Hostname, err)
			}
			return r.step(ctx, i, controller.HostUpgradeDone, "")

		default:
			return fmt.Errorf("host %s in unknown upgrade state %q", h.ID, h.State)
		}
	}
}

// installed reports whether the host has version in its other slot,
// waiting for the reboot, or runs it already.
func installed(info host.HostInfo, version string) bool {
	if info.Version == version {
		return true
	}
	for _, s := range info.Slots.Slots {
		if !s.Booted && s.Version == version && s.Entry == "trial" {
			return true
		}
	}
	return false
}

// send streams the bundle from the registry to the host, within
// SendTimeout: a stream that stalls is cut and sent again.
func (r *run) send(ctx context.Context, api HostAPI) (host.UpgradeResult, error) {
	ctx, cancel := context.WithTimeout(ctx, r.u.cfg.SendTimeout)
	defer cancel()
	b, err := r.u.cfg.OpenBundle(ctx, r.up.Bundle)
	if err != nil {
		return host.UpgradeResult{}, fmt.Errorf("bundle %s: %w", r.up.Bundle, err)
	}
	defer b.Close()
	return api.Upgrade(ctx, b, host.UpgradeOptions{AllowDowngrade: r.up.AllowDowngrade})
}

// waitQuorum waits until every controller voter is healthy: the host
// about to go down is then the only voter missing while it is away.
func (r *run) waitQuorum(ctx context.Context, h *controller.UpgradeHost) error {
	said := time.Time{}
	for {
		st, err := r.u.cfg.Controller.Status(ctx)
		if err == nil && st.Healthy() {
			return nil
		}
		if time.Since(said) > 30*time.Second {
			r.u.log.Info("waiting for every controller voter to be healthy before taking a voter down", "host", h.Hostname, "err", err)
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.u.cfg.Poll):
		}
	}
}

// waitBack waits until host i answers from a new boot on the upgrade's
// version, committed; a host that went back to its old slot by itself
// ends the upgrade.
func (r *run) waitBack(ctx context.Context, i int, api HostAPI) error {
	h := &r.up.Hosts[i]
	deadline := h.Since.Add(r.u.cfg.BackTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		info, err := api.Host(cctx)
		cancel()
		if err == nil && !info.StartedAt.Equal(h.Booted) {
			switch {
			case info.Version == r.up.Version && info.Slots.Upgrade == "committed":
				return nil
			case strings.HasPrefix(info.Slots.Upgrade, "failed:"):
				r.uncordon(ctx, h)
				return failure("%s did not become healthy on %s and went back to %s by itself: %s", h.Hostname, r.up.Version, info.Version, info.Slots.Upgrade)
			case info.Version != r.up.Version && info.Slots.Upgrade == "committed":
				// Booted the old slot without a failed trial: the new
				// slot's entry is gone (the disk was changed by hand?).
				r.uncordon(ctx, h)
				return failure("%s came back on %s, not %s", h.Hostname, info.Version, r.up.Version)
			}
		}
		if time.Now().After(deadline) {
			return failure("%s did not come back on %s within %s (it stays cordoned)", h.Hostname, r.up.Version, r.u.cfg.BackTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.u.cfg.Poll):
		}
	}
}

// waitHealthy waits until the controller sees the host alive on the new
// version, every instance on it is healthy and, for a voter, every
// voter is healthy again.
func (r *run) waitHealthy(ctx context.Context, h *controller.UpgradeHost) error {
	ctx, cancel := context.WithTimeout(ctx, r.u.cfg.HealthyTimeout)
	defer cancel()
	why := ""
	for {
		why = r.unhealthy(ctx, h)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy on %s within %s: %s", h.Hostname, r.up.Version, r.u.cfg.HealthyTimeout, why)
		case <-time.After(r.u.cfg.Poll):
		}
	}
}

// unhealthy says why host h does not count as healthy yet, or "".
func (r *run) unhealthy(ctx context.Context, h *controller.UpgradeHost) string {
	c := r.u.cfg.Controller
	hosts, _, err := c.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		return err.Error()
	}
	found := false
	for _, x := range hosts {
		if x.ID == h.ID {
			found = true
			if x.Status != host.StatusAlive || x.Version != r.up.Version {
				return fmt.Sprintf("the cluster sees it %s on %s", x.Status, x.Version)
			}
		}
	}
	if !found {
		return "not among the cluster's hosts"
	}
	if h.Voter {
		st, err := c.Status(ctx)
		if err != nil {
			return err.Error()
		}
		if !st.Healthy() {
			return "controller voters not all healthy"
		}
	}
	insts, _, err := c.Instances(ctx, controller.QueryOptions{})
	if err != nil {
		return err.Error()
	}
	for _, in := range insts {
		if in.Host == h.ID && !in.Healthy && !in.Draining {
			return fmt.Sprintf("%s unhealthy: %s", in.Service, in.Output)
		}
	}
	return ""
}

// rollback boots host i back into the version it ran, after it came
// back on the new one but did not become healthy, and ends the upgrade.
func (r *run) rollback(ctx context.Context, i int, api HostAPI, why error) error {
	h := &r.up.Hosts[i]
	info, err := api.Host(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", h.Hostname, err)
	}
	r.logf("%s: rolling back to %s: %v", h.Hostname, h.From, why)
	if _, err := api.Rollback(ctx); err != nil {
		return failure("%s: %v; and its rollback failed: %v (it stays cordoned)", h.Hostname, why, err)
	}
	h.Booted = info.StartedAt
	for deadline := time.Now().Add(r.u.cfg.BackTimeout); time.Now().Before(deadline); {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		back, err := api.Host(cctx)
		cancel()
		if err == nil && !back.StartedAt.Equal(h.Booted) && back.Version == h.From {
			r.uncordon(ctx, h)
			h.State, h.Note = controller.HostUpgradeFailed, why.Error()+"; rolled back to "+h.From
			return failure("%s: %v; rolled back to %s", h.Hostname, why, h.From)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.u.cfg.Poll):
		}
	}
	return failure("%s: %v; rolled back, but not back on %s within %s (it stays cordoned)", h.Hostname, why, h.From, r.u.cfg.BackTimeout)
}

// uncordon gives a host that stays on its old version back to the
// scheduler.
func (r *run) uncordon(ctx context.Context, h *controller.UpgradeHost) {
	if _, err := r.u.cfg.Controller.Cordon(ctx, h.ID, false); err != nil {
		r.u.log.Warn("uncordon", "host", h.Hostname, "err", err)
	}
}

// hostAPI returns a client of host id's API.
func (r *run) hostAPI(ctx context.Context, id string) (HostAPI, error) {
	hosts, _, err := r.u.cfg.Controller.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		if h.ID == id {
			return r.u.cfg.Dial(h.API), nil
		}
	}
	return nil, failure("host %s is no longer in the cluster", id)
}
