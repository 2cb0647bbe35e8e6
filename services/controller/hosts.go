package controller

import (
	"fmt"
	"maps"
	"slices"

	memdb "github.com/hashicorp/go-memdb"
)

func (h *Host) key() string { return h.ID }

// Host statuses as Serf reports them.
const (
	HostAlive   = "alive"
	HostLeaving = "leaving"
	HostLeft    = "left"
	HostFailed  = "failed"
)

// sameSerf reports whether h and o say the same in what Serf gives (all
// but the operator's flags and the versions).
func (h *Host) sameSerf(o *Host) bool {
	return h.Hostname == o.Hostname && h.Addr == o.Addr && h.API == o.API && h.Status == o.Status &&
		h.Version == o.Version && slices.Equal(h.Roles, o.Roles) && maps.Equal(h.Labels, o.Labels)
}

// down reports whether a host with status is gone (failed or left): its
// instances are not healthy, whatever was reported.
func down(status string) bool { return status == HostFailed || status == HostLeft }

// applyHosts records what Serf says of hosts (the leader's view),
// keeping the operator's flags. Instances on a host that failed become
// unhealthy in the same write.
func applyHosts(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	for _, h := range c.Hosts {
		raw, err := txn.First("hosts", "id", h.ID)
		if err != nil {
			return err
		}
		if raw != nil {
			old := raw.(*Host)
			h.Cordoned, h.Draining = old.Cordoned, old.Draining
			if old.sameSerf(&h) {
				continue
			}
			if old.Status != h.Status {
				events.add(txn, index, c.Time, "host-"+h.Status, h.ID, fmt.Sprintf("host %s (%s) is %s (was %s)", h.ID, h.Hostname, h.Status, old.Status))
			}
		} else {
			events.add(txn, index, c.Time, "host-"+h.Status, h.ID, fmt.Sprintf("host %s (%s) is %s", h.ID, h.Hostname, h.Status))
		}
		h := h
		if err := put(txn, "hosts", &h, index, nil); err != nil {
			return err
		}
		if down(h.Status) {
			if err := hostDown(txn, index, h.ID, "host "+h.Status, events, c); err != nil {
				return err
			}
			if err := releaseHostLeases(txn, index, h.ID, events, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// applyCordon sets a host's cordoned and draining flags: draining
// implies cordoned, and uncordoning ends a drain.
func applyCordon(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	raw, err := txn.First("hosts", "id", c.Key)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("%w: host %s (see plinth members for node IDs)", ErrNotFound, c.Key)
	}
	if err := checkCAS("hosts", c.Key, raw, c.CAS); err != nil {
		return err
	}
	h := *raw.(*Host)
	drain := c.Draining && c.Cordoned
	if h.Cordoned == c.Cordoned && h.Draining == drain {
		return nil
	}
	h.Cordoned, h.Draining = c.Cordoned, drain
	what := "cordoned"
	switch {
	case drain:
		what = "draining"
	case !c.Cordoned:
		what = "uncordoned"
	}
	events.add(txn, index, c.Time, "host-"+what, h.ID, fmt.Sprintf("host %s (%s) %s", h.ID, h.Hostname, what))
	return put(txn, "hosts", &h, index, nil)
}
