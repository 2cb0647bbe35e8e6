package controller

import (
	"fmt"
	"strings"

	memdb "github.com/hashicorp/go-memdb"
)

func (p *Placement) key() string { return p.ID }

// PlacementID is the key of a job's placement on a host.
func PlacementID(host, job string) string { return host + "/" + job }

// Schedule is one step of the scheduler, written as one raft entry under
// its lease: the placements it adds and removes and the formations'
// status. A deposed scheduler's Schedule is refused whole.
type Schedule struct {
	Fence  Fence       `json:"fence"`
	Place  []Placement `json:"place,omitempty"`
	Remove []Removal   `json:"remove,omitempty"`
	// Status is each formation's new status, by name; formations that
	// are gone are skipped.
	Status map[string]FormationStatus `json:"status,omitempty"`
}

// Removal is a placement the scheduler takes back, and why.
type Removal struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

func checkSchedule(s *Schedule) error {
	if s.Fence.Lease == "" || s.Fence.Holder == "" || s.Fence.Token == 0 {
		return fmt.Errorf("%w: schedule: give the fence (lease, holder, token) of the lease it is written under", ErrInvalid)
	}
	for _, p := range s.Place {
		if p.Host == "" || p.Job == "" || p.Formation == "" {
			return fmt.Errorf("%w: placement %q: give formation, host and job", ErrInvalid, p.ID)
		}
		if p.ID != "" && p.ID != PlacementID(p.Host, p.Job) {
			return fmt.Errorf("%w: placement id %q is not %q", ErrInvalid, p.ID, PlacementID(p.Host, p.Job))
		}
	}
	for _, r := range s.Remove {
		if !strings.Contains(r.ID, "/") {
			return fmt.Errorf("%w: removal %q: give a placement id, host/job", ErrInvalid, r.ID)
		}
	}
	return nil
}

// applySchedule writes a Schedule, all of it or nothing.
func applySchedule(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	s := c.Schedule
	if err := checkFence(txn, s.Fence, c.Time); err != nil {
		return err
	}
	for _, r := range s.Remove {
		raw, err := txn.First("placements", "id", r.ID)
		if err != nil {
			return err
		}
		if raw == nil {
			continue // already gone: a retried write
		}
		events.add(txn, index, c.Time, "placement-removed", r.ID, fmt.Sprintf("%s: %s", r.ID, r.Reason))
		if err := remove(txn, "placements", r.ID, index, nil); err != nil {
			return err
		}
	}
	for _, p := range s.Place {
		p.ID = PlacementID(p.Host, p.Job)
		events.add(txn, index, c.Time, "placement-added", p.ID, fmt.Sprintf("formation %s placed job %s on host %s", p.Formation, p.Job, p.Host))
		if err := put(txn, "placements", &p, index, nil); err != nil {
			return err
		}
	}
	for name, st := range s.Status {
		raw, err := txn.First("formations", "id", name)
		if err != nil {
			return err
		}
		if raw == nil {
			continue
		}
		f := *raw.(*Formation)
		if f.Status == st {
			continue
		}
		if st.Reason != "" && st.Reason != f.Status.Reason {
			events.add(txn, index, c.Time, "formation-short", name, fmt.Sprintf("formation %s: %d of %d placed: %s", name, st.Running, st.Desired, st.Reason))
		}
		f.Status = st
		if err := put(txn, "formations", &f, index, nil); err != nil {
			return err
		}
	}
	// Every schedule moves the placements' index, so the writer's
	// follow-up read waits for this write whatever it changed.
	return touch(txn, "placements", index)
}
