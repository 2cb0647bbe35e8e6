package scheduler

import (
	"context"
	"errors"
	"time"

	"github.com/plinth-os/plinth/services/controller"
)

// errDeposed: the controller refused a write under the lease; another
// scheduler is active.
var errDeposed = errors.New("deposed: the lease moved to another scheduler")

// errHostsChanged: the hosts changed while a step was reading them; the
// next step starts at once.
var errHostsChanged = errors.New("the hosts changed")

// lead schedules while the lease with token is this scheduler's: until
// ctx ends, a renewal is refused, or renewals fail for longer than the
// lease lasts (it may be another's by then).
func (s *Scheduler) lead(ctx context.Context, token uint64) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.renew(ctx, cancel)
	if s.cfg.WhileActive != nil {
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.cfg.WhileActive(ctx)
		}()
		// Not active any more once lead returns: wait for it to stop.
		defer func() { <-done }()
		defer cancel()
	}
	// Formations and instances start a step; a change of the hosts also
	// ends the reading of the current one, which may be waiting on a
	// host that just died.
	changed := make(chan struct{}, 1)
	hostsChanged := make(chan struct{}, 1)
	go controller.WatchIndex(ctx, s.cfg.WatchWait, s.cfg.Retry, func(ctx context.Context, q controller.QueryOptions) (uint64, error) {
		_, m, err := s.cfg.Controller.Formations(ctx, q)
		return m.Index, err
	}, changed)
	go controller.WatchIndex(ctx, s.cfg.WatchWait, s.cfg.Retry, func(ctx context.Context, q controller.QueryOptions) (uint64, error) {
		_, m, err := s.cfg.Controller.Instances(ctx, q)
		return m.Index, err
	}, changed)
	go controller.WatchIndex(ctx, s.cfg.WatchWait, s.cfg.Retry, func(ctx context.Context, q controller.QueryOptions) (uint64, error) {
		_, m, err := s.cfg.Controller.Hosts(ctx, q)
		return m.Index, err
	}, hostsChanged)
	fence := controller.Fence{Lease: LeaseName, Holder: s.holder, Token: token}
	for {
		acted, err := s.step(ctx, fence, hostsChanged)
		wait := s.cfg.Resync
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errDeposed):
			s.log.Warn("scheduler deposed", "err", err)
			return
		case errors.Is(err, errHostsChanged):
			continue
		case err != nil:
			s.log.Warn("scheduling step", "err", err)
		case acted:
			// Look again soon: the jobs just started or stopped change
			// the formations' status, and no watch says so.
			wait = s.cfg.Retry / 2
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-hostsChanged:
		case <-time.After(wait):
		}
	}
}

// renew keeps the lease until it is refused or may have run out.
func (s *Scheduler) renew(ctx context.Context, stop context.CancelFunc) {
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.cfg.LeaseTTL / 5):
		}
		rctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL/2)
		_, err := s.cfg.Controller.Lease(rctx, LeaseName, s.holder, s.hostID, s.cfg.LeaseTTL)
		cancel()
		switch {
		case err == nil:
			last = time.Now()
		case ctx.Err() != nil:
			return
		case controller.IsConflict(err):
			s.log.Warn("lease renewal refused", "err", err)
			stop()
			return
		case time.Since(last) > s.cfg.LeaseTTL*4/5:
			// The lease may be another's already: stop acting. (The
			// fence refuses a late write anyway; this stops work sooner.)
			s.log.Warn("lease not renewed in time", "err", err)
			stop()
			return
		default:
			s.log.Debug("renew the lease", "err", err)
		}
	}
}
