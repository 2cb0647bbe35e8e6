package controller

import (
	"fmt"
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
			h.Cordoned = old.Cordoned
			if old.Hostname == h.Hostname && old.Addr == h.Addr && old.API == h.API && old.Status == h.Status &&
				old.Version == h.Version && slices.Equal(old.Roles, h.Roles) {
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
		if h.Status == HostFailed || h.Status == HostLeft {
			if err := hostDown(txn, index, h.ID, "host "+h.Status, events, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// applyCordon sets a host's cordoned flag.
func applyCordon(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	raw, err := txn.First("hosts", "id", c.Key)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("%w: host %s (see plinth members for node IDs)", ErrNotFound, c.Key)
	}
	h := *raw.(*Host)
	if c.CAS != nil && h.ModifyIndex != *c.CAS {
		return fmt.Errorf("%w: host %s is at index %d, not %d", ErrConflict, h.ID, h.ModifyIndex, *c.CAS)
	}
	if h.Cordoned == c.Cordoned {
		return nil
	}
	h.Cordoned = c.Cordoned
	what := "cordoned"
	if !c.Cordoned {
		what = "uncordoned"
	}
	events.add(txn, index, c.Time, "host-"+what, h.ID, fmt.Sprintf("host %s (%s) %s", h.ID, h.Hostname, what))
	return put(txn, "hosts", &h, index, nil)
}
