package controller

import (
	"fmt"
	"net"
	"slices"
	"strings"

	memdb "github.com/hashicorp/go-memdb"
)

func (s *Service) key() string  { return s.Name }
func (i *Instance) key() string { return i.ID }

// InstanceID names a job's declaration of a service on a host.
func InstanceID(host, job, service string) string { return host + "/" + job + "/" + service }

// checkReport validates a discovery agent's report of host's instances.
func checkReport(host string, in []Instance) error {
	if host == "" {
		return fmt.Errorf("%w: report names no host", ErrInvalid)
	}
	seen := map[string]bool{}
	for _, i := range in {
		switch {
		case i.Service == "" || i.Job == "":
			return fmt.Errorf("%w: instance %q: service and job are required", ErrInvalid, i.ID)
		case i.Host != host:
			return fmt.Errorf("%w: instance %q is on host %q, not the reporting host %q", ErrInvalid, i.ID, i.Host, host)
		case i.ID != InstanceID(i.Host, i.Job, i.Service):
			return fmt.Errorf("%w: instance ID %q: want %q", ErrInvalid, i.ID, InstanceID(i.Host, i.Job, i.Service))
		case seen[i.ID]:
			return fmt.Errorf("%w: instance %q reported twice", ErrInvalid, i.ID)
		case strings.ContainsAny(i.Service, "/. ") || len(i.Service) > 63:
			return fmt.Errorf("%w: service name %q: use a DNS label (a-z, 0-9, -)", ErrInvalid, i.Service)
		}
		if _, _, err := net.SplitHostPort(i.Addr); err != nil {
			return fmt.Errorf("%w: instance %q: addr %q: want ip:port", ErrInvalid, i.ID, i.Addr)
		}
		seen[i.ID] = true
	}
	return nil
}

// applyReport makes host's instances the reported set. Unchanged
// instances are not written, so watchers wake only on real changes.
func applyReport(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	// A report that arrives after its host was declared down (late, or
	// from a host cut off from gossip) cannot make its instances healthy.
	downWhy := ""
	if raw, err := txn.First("hosts", "id", c.Key); err == nil && raw != nil {
		if s := raw.(*Host).Status; down(s) {
			downWhy = "host " + s
		}
	}
	touched := map[string]bool{}
	want := map[string]Instance{}
	for _, i := range c.Instances {
		if downWhy != "" {
			i.Healthy, i.Output = false, downWhy
		}
		want[i.ID] = i
	}
	it, err := txn.Get("instances", "host", c.Key)
	if err != nil {
		return err
	}
	var gone []*Instance
	for raw := it.Next(); raw != nil; raw = it.Next() {
		old := raw.(*Instance)
		n, ok := want[old.ID]
		if !ok {
			gone = append(gone, old)
			continue
		}
		// A drain is the operator's, not the reporter's: it lasts as
		// long as the instance.
		n.Draining = old.Draining
		want[old.ID] = n
		if sameInstance(old, &n) {
			delete(want, old.ID)
		}
	}
	for _, old := range gone {
		if err := txn.Delete("instances", old); err != nil {
			return err
		}
		touched[old.Service] = true
	}
	if len(gone) > 0 {
		if err := touch(txn, "instances", index); err != nil {
			return err
		}
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		n := want[id]
		if err := put(txn, "instances", &n, index, nil); err != nil {
			return err
		}
		touched[n.Service] = true
	}
	return electLeaders(txn, index, touched, events, c)
}

// serves: the instance may lead its service and take new work.
func (i *Instance) serves() bool { return i.Healthy && !i.Draining }

func sameInstance(a, b *Instance) bool {
	return a.Service == b.Service && a.Job == b.Job && a.Addr == b.Addr && a.Proto == b.Proto &&
		a.Healthy == b.Healthy && a.Output == b.Output
}

// hostDown marks every instance on host unhealthy, with why.
func hostDown(txn *memdb.Txn, index uint64, host, why string, events *eventLog, c *command) error {
	it, err := txn.Get("instances", "host", host)
	if err != nil {
		return err
	}
	var down []Instance
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if i := *raw.(*Instance); i.Healthy {
			i.Healthy, i.Output = false, why
			down = append(down, i)
		}
	}
	touched := map[string]bool{}
	for _, i := range down {
		if err := put(txn, "instances", &i, index, nil); err != nil {
			return err
		}
		touched[i.Service] = true
	}
	return electLeaders(txn, index, touched, events, c)
}

// electLeaders keeps each touched service's record and its leader: the
// current one while it is healthy, else the oldest healthy instance. A
// service without instances is removed.
func electLeaders(txn *memdb.Txn, index uint64, services map[string]bool, events *eventLog, c *command) error {
	names := make([]string, 0, len(services))
	for n := range services {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		it, err := txn.Get("instances", "service", name)
		if err != nil {
			return err
		}
		var all []*Instance
		for raw := it.Next(); raw != nil; raw = it.Next() {
			all = append(all, raw.(*Instance))
		}
		raw, err := txn.First("services", "id", name)
		if err != nil {
			return err
		}
		if len(all) == 0 {
			if raw != nil {
				if err := remove(txn, "services", name, index, nil); err != nil {
					return err
				}
			}
			continue
		}
		var svc Service
		if raw != nil {
			svc = *raw.(*Service)
		} else {
			svc.Name = name
		}
		leader := ""
		for _, i := range all {
			if i.ID == svc.Leader && i.serves() {
				leader = i.ID
			}
		}
		if leader == "" {
			var best *Instance
			for _, i := range all {
				if i.serves() && (best == nil || i.CreateIndex < best.CreateIndex || i.CreateIndex == best.CreateIndex && i.ID < best.ID) {
					best = i
				}
			}
			if best != nil {
				leader = best.ID
			}
		}
		if raw != nil && leader == svc.Leader {
			continue
		}
		if leader != svc.Leader {
			msg := fmt.Sprintf("service %s has no healthy instance to lead", name)
			if leader != "" {
				msg = fmt.Sprintf("service %s is led by %s", name, leader)
			}
			events.add(txn, index, c.Time, "service-leader", name, msg)
		}
		svc.Leader = leader
		if err := put(txn, "services", &svc, index, nil); err != nil {
			return err
		}
	}
	return nil
}

// applyInstanceDrain marks an instance draining (c.Draining) or serving
// again, and elects its service's leader anew.
func applyInstanceDrain(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	raw, err := txn.First("instances", "id", c.Key)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("%w: instance %s (see plinth services)", ErrNotFound, c.Key)
	}
	i := *raw.(*Instance)
	if i.Draining == c.Draining {
		return nil
	}
	i.Draining = c.Draining
	if err := put(txn, "instances", &i, index, nil); err != nil {
		return err
	}
	what := "draining"
	if !c.Draining {
		what = "serving again"
	}
	events.add(txn, index, c.Time, "instance-drain", i.ID, fmt.Sprintf("instance %s is %s", i.ID, what))
	return electLeaders(txn, index, map[string]bool{i.Service: true}, events, c)
}
