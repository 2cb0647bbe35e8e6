package discovery

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plinth-os/plinth/services/controller"
)

// watchSlack is how much longer than its wait a blocking query may take
// before the agent gives up on it: a controller that went silent (a
// partition drops packets, it does not refuse them) must not hold a
// watch for ever.
const watchSlack = 15 * time.Second

// watch follows one of the controller's collections with blocking
// queries and gives each new version of it to store. While the
// controller does not answer it retries with backoff, and store keeps
// what it had; once the controller answers again it calls back.
func watch[T any](ctx context.Context, a *Agent, what string,
	list func(context.Context, controller.QueryOptions) ([]T, controller.QueryMeta, error), store func([]T)) {
	var index uint64
	loaded, failures := false, 0
	for {
		qctx, cancel := context.WithTimeout(ctx, a.cfg.WatchWait+watchSlack)
		items, meta, err := list(qctx, controller.QueryOptions{Index: index, Wait: a.cfg.WatchWait})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			if failures == 1 {
				a.log.Warn("controller unreachable; DNS answers from the cache", "watch", what, "err", err)
			}
			if !sleep(ctx, backoff(failures, a.cfg.MinBackoff, a.cfg.MaxBackoff)) {
				return
			}
			continue
		}
		if failures > 0 {
			a.log.Info("controller reachable again", "watch", what)
			failures = 0
			a.controllerBack()
		}
		// An index that went back (the controller restored a snapshot)
		// is a new version too.
		if !loaded || meta.Index != index {
			store(items)
			loaded = true
		}
		// Index 0 would make the next query return at once, and the
		// one after it, for as long as the collection is unwritten.
		index = max(meta.Index, 1)
	}
}

// cache keeps the collections as the controller last gave them, and the
// name table made of them, which DNS queries read.
type cache struct {
	names atomic.Pointer[table]

	mu        sync.Mutex
	instances []controller.Instance
	services  []controller.Service
	hosts     []controller.Host
	loaded    [3]bool // instances, services, hosts
	// down are the hosts this host's Serf says failed or left.
	down map[string]bool
}

// setDown replaces the set of down hosts (a copy of down is kept).
func (c *cache) setDown(down map[string]bool) {
	cp := make(map[string]bool, len(down))
	for id, d := range down {
		if d {
			cp[id] = true
		}
	}
	c.update(func() { c.down = cp })
}

func (c *cache) setInstances(v []controller.Instance) {
	c.update(func() { c.instances, c.loaded[0] = v, true })
}

func (c *cache) setServices(v []controller.Service) {
	c.update(func() { c.services, c.loaded[1] = v, true })
}

func (c *cache) setHosts(v []controller.Host) {
	c.update(func() { c.hosts, c.loaded[2] = v, true })
}

// update applies set and builds the names again, once every collection
// has come: before that, an answer could deny names that exist.
func (c *cache) update(set func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	set()
	if c.loaded == [3]bool{true, true, true} {
		c.names.Store(buildTable(withoutDown(c.instances, c.down), c.services, c.hosts))
	}
}

// backoff is the delay before retry n (from 1) of something that
// failed: from lo, doubling, capped at hi, and randomised by up to a
// half so that the agents of all hosts do not come back to a recovered
// controller in step.
func backoff(n int, lo, hi time.Duration) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d/2+1)
}

// sleep waits for d or for ctx to end; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// withoutDown returns instances with those on down hosts marked
// unhealthy.
func withoutDown(instances []controller.Instance, down map[string]bool) []controller.Instance {
	if len(down) == 0 {
		return instances
	}
	out := make([]controller.Instance, len(instances))
	for i, in := range instances {
		if down[in.Host] {
			in.Healthy = false
		}
		out[i] = in
	}
	return out
}
