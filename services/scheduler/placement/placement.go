// Package placement decides where the scheduler runs the jobs of each
// formation: given the formations, the hosts and the placements that
// exist, Plan returns the placements to add, the ones to remove and what
// could not be placed, and why.
//
// It owns that decision and nothing else. It does no I/O and keeps no
// state between calls: reading formations and hosts, recording and
// applying the decision (starting and stopping jobs) and observing which
// placements are healthy belong to the scheduler, which calls Plan again
// with what it has observed.
package placement

import (
	"cmp"
	"slices"
	"strings"
)

// Status is what the scheduler knows of a host's liveness.
type Status string

// Statuses of a host. Any other value is treated as Unreachable.
const (
	Alive       Status = "alive"       // in Serf and its host API answers
	Unreachable Status = "unreachable" // alive in Serf but the scheduler cannot reach its API: keep its placements, never start a second copy
	Failed      Status = "failed"      // Serf says failed or left: its placements are gone
)

// Host is a machine placements can go to.
type Host struct {
	ID          string
	Roles       []string          // constraint key "role" matches any of these
	Tags        map[string]string // other constraint keys match Tags[key] == value
	Status      Status
	Cordoned    bool    // no new placements; existing ones stay
	Draining    bool    // cordoned, and its count-formation placements are moved away one at a time
	MemoryBytes int64   // what jobs may use in total; 0 = unknown, treated as unlimited
	CPUs        float64 // 0 = unknown, unlimited; compared in thousandths
}

// Formation is a set of identical jobs the scheduler keeps running.
type Formation struct {
	Name string
	// Job is the job ID on each host for omni formations; for count
	// formations the prefix: jobs are "<Job>-<n>", n >= 1, the smallest
	// n that none of the formation's placements given to Plan uses.
	Job         string
	Count       int  // desired instances, when !Omni
	Omni        bool // one instance on every eligible host
	Constraints map[string]string
	MemoryBytes int64   // per instance
	CPUs        float64 // per instance
}

// Placement is one job of a formation on one host.
type Placement struct {
	Formation   string
	Host        string
	Job         string // job ID on that host
	MemoryBytes int64  // what it reserves on its host
	CPUs        float64
	Healthy     bool   // the scheduler observed it running and passing its checks
	Replaces    string // key of the placement this one replaces during a drain, if any
}

// Key identifies a placement: a host runs one job per ID.
func (p Placement) Key() string { return p.Host + "/" + p.Job }

// Removal is a placement to stop, and why.
type Removal struct {
	Placement Placement
	Reason    string
}

// Shortfall is what Plan could not place of one formation: Missing
// instances, or 1 for a drain move it could not start, and a reason
// that says what would let them be placed, such as "needs 4.0 GiB of
// memory; the most free on an eligible host is 1.2 GiB (node-2)".
type Shortfall struct {
	Formation string
	Missing   int
	Reason    string
}

// Decision is what the scheduler should do next. Place and Remove are
// sorted by host, then job; Shortfalls by formation, at most one each.
type Decision struct {
	Place      []Placement // new placements (Healthy false)
	Remove     []Removal
	Shortfalls []Shortfall
}

// Plan decides what to place and remove so that every formation runs as
// desired on the hosts as they are now. Host IDs, formation names and
// placement keys must be unique; the order of the inputs does not matter.
//
// A new placement goes to an alive host that is neither cordoned nor
// draining, matches the formation's constraints and has the memory and
// CPUs free that it reserves. Plan works in this order, each step seeing
// the decisions of the ones before:
//
//  1. placements on failed or unknown hosts, of deleted formations, and
//     omni placements on hosts that no longer match are removed;
//  2. drain moves whose replacement is healthy finish: the old placement
//     is removed;
//  3. count formations with more instances than Count lose the extras,
//     from cordoned hosts first, then from the hosts with the most;
//  4. omni formations are placed before count formations, so that the
//     per-host services keep their room on every host;
//  5. count formations with fewer instances than Count are spread over
//     the eligible hosts, each new one on the host with the fewest;
//  6. each draining host with no move in flight starts its next one,
//     last, so that missing instances get the room first.
//
// A removal keeps its reservation for the rest of the Plan, because the
// scheduler may start the new placements before it has stopped the old.
// A placement counts for its formation whatever its job ID: moving a
// formation whose Job changed onto the new job is a release, not Plan's.
func Plan(formations []Formation, hosts []Host, placements []Placement) Decision {
	p := newPlanner(formations, hosts, placements)
	p.removeGone()
	p.finishMoves()
	for _, f := range p.forms {
		if !f.Omni {
			p.scaleDown(f)
		}
	}
	for _, f := range p.forms {
		if f.Omni {
			p.placeOmni(f)
		}
	}
	for _, f := range p.forms {
		if !f.Omni {
			p.scaleUp(f)
		}
	}
	p.startMoves()

	d := p.decision
	byHostJob := func(a, b Placement) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), strings.Compare(a.Job, b.Job))
	}
	slices.SortFunc(d.Place, byHostJob)
	slices.SortFunc(d.Remove, func(a, b Removal) int { return byHostJob(a.Placement, b.Placement) })
	slices.SortFunc(d.Shortfalls, func(a, b Shortfall) int { return strings.Compare(a.Formation, b.Formation) })
	return d
}
