package discovery

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/plinth-os/plinth/services/controller"
)

// watch follows one of the controller's collections (controller.Follow)
// and gives each new version of it to store; once the controller answers
// again after failures it tells the reporter.
func watch[T any](ctx context.Context, a *Agent, what string,
	list func(context.Context, controller.QueryOptions) ([]T, controller.QueryMeta, error), store func([]T)) {
	controller.Follow(ctx, controller.FollowConfig{What: what, Wait: a.cfg.WatchWait, MinBackoff: a.cfg.MinBackoff,
		MaxBackoff: a.cfg.MaxBackoff, Log: a.log, Back: a.controllerBack}, list, store)
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
