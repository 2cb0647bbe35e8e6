package router

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/plinth-os/plinth/services/controller"
)

// DrainResult is what a drain found on each router (by host ID) when
// the wait ended, or why a router could not say.
type DrainResult struct {
	Idle   map[string]Idle
	Errors map[string]error
	Took   time.Duration
}

// Drained: every router answered, gives the instance no new work and
// has none of its work in flight.
func (d DrainResult) Drained() bool {
	if len(d.Errors) > 0 {
		return false
	}
	for _, i := range d.Idle {
		if i != (Idle{}) {
			return false
		}
	}
	return true
}

// Controller is what Drain needs of the controller's API.
type Controller interface {
	DrainInstance(ctx context.Context, id string, drain bool) (controller.Instance, error)
	Hosts(ctx context.Context, q controller.QueryOptions) ([]controller.Host, controller.QueryMeta, error)
}

// Drain marks the instance draining at the controller, so no router gives
// it new work, then waits up to timeout for every alive host's router to
// have no work in flight on it. dial makes a client for a router's API
// address. The instance stays draining: whoever drained it now stops it
// (or undrains it).
func Drain(ctx context.Context, c Controller, dial func(addr string) *Client, id string, timeout time.Duration) (DrainResult, error) {
	if timeout <= 0 || timeout > MaxIdleWait {
		return DrainResult{}, fmt.Errorf("drain %s: timeout %s: use more than 0 and at most %s", id, timeout, MaxIdleWait)
	}
	start := time.Now()
	if _, err := c.DrainInstance(ctx, id, true); err != nil {
		return DrainResult{}, fmt.Errorf("drain %s: %w", id, err)
	}
	hosts, _, err := c.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		return DrainResult{}, fmt.Errorf("drain %s: list hosts: %w", id, err)
	}
	res := DrainResult{Idle: map[string]Idle{}, Errors: map[string]error{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range hosts {
		if h.Status != "alive" {
			continue
		}
		wg.Go(func() {
			idle, err := waitIdle(ctx, dial, h, id, timeout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Errors[h.ID] = err
				return
			}
			res.Idle[h.ID] = idle
		})
	}
	wg.Wait()
	res.Took = time.Since(start)
	return res, nil
}

func waitIdle(ctx context.Context, dial func(string) *Client, h controller.Host, id string, timeout time.Duration) (Idle, error) {
	addr, err := HostAddr(h)
	if err != nil {
		return Idle{}, err
	}
	// The router answers when the wait ends; the slack covers the trip.
	ctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	return dial(addr).WaitIdle(ctx, id, timeout)
}
