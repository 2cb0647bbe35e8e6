package scheduler

import (
	"context"
	"sync"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/services/controller"
)

// hostCache keeps a client per host API address and each host's
// resources, read once per address.
type hostCache struct {
	dial    func(addr string) HostAPI
	mu      sync.Mutex
	clients map[string]HostAPI
	infos   map[string]host.HostInfo
}

func newHostCache(dial func(string) HostAPI) *hostCache {
	return &hostCache{dial: dial, clients: map[string]HostAPI{}, infos: map[string]host.HostInfo{}}
}

func (c *hostCache) client(h controller.Host) HostAPI {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.clients[h.API]
	if !ok {
		cl = c.dial(h.API)
		c.clients[h.API] = cl
	}
	return cl
}

// info returns the host's description; it is read again when the host
// moved to another address (a reboot may bring other hardware too).
func (c *hostCache) info(ctx context.Context, h controller.Host) (host.HostInfo, error) {
	c.mu.Lock()
	info, ok := c.infos[h.API]
	c.mu.Unlock()
	if ok && info.ID == h.ID {
		return info, nil
	}
	info, err := c.client(h).Host(ctx)
	if err != nil {
		return info, err
	}
	c.mu.Lock()
	c.infos[h.API] = info
	c.mu.Unlock()
	return info, nil
}
