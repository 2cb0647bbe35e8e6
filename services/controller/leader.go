package controller

import (
	"context"
	"encoding/json"
	"time"

	"github.com/hashicorp/raft"

	"github.com/plinth-os/plinth/host"
)

// leaderLoop runs the leader's duties while this controller leads.
func (c *Controller) leaderLoop(ctx context.Context) {
	var stop context.CancelFunc
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case leading := <-c.raft.LeaderCh():
			if stop != nil {
				stop()
				stop = nil
			}
			if leading {
				c.log.Info("controller is the leader", "term", c.raft.Stats()["term"])
				stop = c.startLeading(ctx)
			} else {
				c.log.Info("controller is no longer the leader")
			}
		}
	}
}

// startLeading runs lead until the returned function is called.
func (c *Controller) startLeading(ctx context.Context) context.CancelFunc {
	ctx, cancel := context.WithCancel(ctx)
	go c.lead(ctx)
	return cancel
}

// lead keeps the hosts collection and the voters in line with Serf until
// ctx ends (leadership lost).
func (c *Controller) lead(ctx context.Context) {
	// Everything committed before this term is applied first, so the
	// comparisons below read the latest state.
	if err := c.raft.Barrier(c.cfg.ApplyTimeout).Error(); err != nil {
		c.log.Warn("leader barrier", "err", err)
	}
	since := time.Now()
	for ctx.Err() == nil {
		list, changed := c.members.snapshot()
		if err := c.syncHosts(list, time.Since(since) >= unknownGrace); err != nil {
			c.log.Warn("record hosts", "err", err)
		}
		c.reconcileVoters(list)
		select {
		case <-ctx.Done():
		case <-changed:
		case <-c.kick:
		case <-time.After(10 * time.Second):
		}
	}
}

// unknownGrace is how long a new leader waits before it records hosts
// that Serf does not know as gone: after a cold start, hosts join Serf
// one by one, and the scheduler must not move the jobs of a host that
// is still booting.
const unknownGrace = 30 * time.Second

// syncHosts writes the hosts whose Serf view differs from the store;
// with markUnknown, also the hosts Serf does not know, as left.
func (c *Controller) syncHosts(members []host.Member, markUnknown bool) error {
	txn := c.fsm.store.current().Txn(false)
	var changed []Host
	known := map[string]bool{}
	for _, mb := range members {
		known[mb.ID] = true
		h := Host{ID: mb.ID, Hostname: mb.Hostname, Addr: mb.Addr, API: mb.API, Status: mb.Status, Version: mb.Version, Roles: mb.Roles, Labels: mb.Labels}
		if h.Roles == nil {
			h.Roles = []string{}
		}
		if raw, _ := txn.First("hosts", "id", h.ID); raw != nil && raw.(*Host).sameSerf(&h) {
			continue
		}
		changed = append(changed, h)
	}
	// Hosts Serf no longer knows (reaped, or from a restored backup of
	// other hosts) are recorded as gone.
	all, _ := list[*Host](txn, "hosts")
	for _, h := range all {
		if markUnknown && !known[h.ID] && h.Status != HostLeft {
			g := *h
			g.Status = HostLeft
			changed = append(changed, g)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	_, err := c.propose(&command{Op: opHosts, Hosts: changed})
	return err
}

// leftGrace is how long a voter's host must have been gone gracefully
// before its voter is removed: a host rebooting also leaves Serf, and
// comes back sooner.
const leftGrace = time.Minute

// reconcileVoters removes the voters of hosts that left the cluster
// gracefully, once they have been gone for leftGrace, and only while every
// other voter is alive: when several leave at once the cluster is
// shutting down, and removing voters then could leave one host that
// believes it alone is the cluster when they come back. A failed host
// stays a voter: it may come back, and removing it would shrink the
// quorum under the others' feet.
func (c *Controller) reconcileVoters(members []host.Member) {
	c.joinMu.Lock()
	defer c.joinMu.Unlock()
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	status := map[string]string{}
	for _, mb := range members {
		status[mb.ID] = mb.Status
	}
	var left []raft.ServerID
	for _, s := range f.Configuration().Servers {
		id := string(s.ID)
		switch {
		case id == c.id:
		case status[id] == host.StatusLeft:
			left = append(left, s.ID)
			if _, ok := c.leftSince[id]; !ok {
				c.leftSince[id] = time.Now()
			}
		case status[id] != host.StatusAlive:
			delete(c.leftSince, id)
			return // another voter is down: not now
		default:
			delete(c.leftSince, id)
		}
	}
	if len(left) != 1 {
		return // none, or several leaving at once (a shutdown)
	}
	id := left[0]
	if time.Since(c.leftSince[string(id)]) < leftGrace {
		return
	}
	if err := c.raft.RemoveServer(id, 0, c.cfg.ApplyTimeout).Error(); err != nil {
		c.log.Warn("remove voter of a host that left", "node", id, "err", err)
		return
	}
	delete(c.leftSince, string(id))
	c.log.Info("removed the voter of a host that left the cluster", "node", id)
}

// propose commits cmd through raft and returns the FSM's result. It
// must be called on the leader.
func (c *Controller) propose(cmd *command) (uint64, error) {
	cmd.Time = time.Now().UTC()
	data, err := json.Marshal(cmd)
	if err != nil {
		return 0, err
	}
	f := c.raft.Apply(data, c.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		return 0, err
	}
	res := f.Response().(applyResult)
	return res.Index, res.Err
}

// addVoter adds node id (a controller host) as a voter, at its address
// as Serf knows it.
func (c *Controller) addVoter(id string) error {
	c.joinMu.Lock()
	defer c.joinMu.Unlock()
	delete(c.leftSince, id)
	addr, err := c.members.ServerAddr(raft.ServerID(id))
	if err != nil {
		return err
	}
	return c.raft.AddVoter(raft.ServerID(id), addr, 0, c.cfg.ApplyTimeout).Error()
}
