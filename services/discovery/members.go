package discovery

import (
	"context"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/services/controller"
)

// followMembers keeps the cache's set of hosts that this host's Serf
// says are down. Their instances leave the names at once, at Serf's
// failure detection time, without waiting for the controller to record
// the failure (a new leader may first have to be elected) and even while
// the controller is unreachable.
func (a *Agent) followMembers(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		listed, err := a.members(ctx)
		if ctx.Err() != nil {
			return
		}
		if listed {
			failures = 0 // it worked until the stream broke
		}
		failures++
		if failures == 1 {
			a.log.Warn("following the host's members", "err", err)
		}
		if !controller.Sleep(ctx, controller.Backoff(failures, a.cfg.MinBackoff, a.cfg.MaxBackoff)) {
			return
		}
	}
}

// members subscribes to the host's member events, then lists the
// members (so that no change between the two is missed), and applies
// every event until the stream ends. listed says whether it got as far
// as the list.
func (a *Agent) members(ctx context.Context) (listed bool, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := a.cfg.Host.Events(ctx)
	if err != nil {
		return false, err
	}
	defer stream.Close()
	list, err := a.cfg.Host.Members(ctx)
	if err != nil {
		return false, err
	}
	down := map[string]bool{}
	for _, m := range list {
		down[m.ID] = isDown(m.Status)
	}
	a.cache.setDown(down)
	for {
		e, err := stream.Next()
		if err != nil {
			return true, err
		}
		if e.Type == "member-reap" {
			delete(down, e.Member.ID)
		} else {
			down[e.Member.ID] = isDown(e.Member.Status)
		}
		a.cache.setDown(down)
	}
}

func isDown(status string) bool { return status == host.StatusFailed || status == host.StatusLeft }
