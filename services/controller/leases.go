package controller

import (
	"fmt"
	"time"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/plinth-os/plinth/host/job"
)

func (l *Lease) key() string { return l.Name }

// LeaseRequest asks for a lease, or renews it when Holder already has
// it; a TTL of 0 gives it up.
type LeaseRequest struct {
	Holder string `json:"holder"`
	// Host is the holder's node ID: when Serf says it failed, the lease
	// is free at once, without waiting for TTL.
	Host string       `json:"host"`
	TTL  job.Duration `json:"ttl"`
}

// Bounds of a lease's TTL: short enough that a dead holder is replaced
// soon, long enough that a busy one renews it in time.
const (
	MinLeaseTTL = time.Second
	MaxLeaseTTL = time.Minute
)

func checkLeaseRequest(name string, r *LeaseRequest) error {
	switch {
	case !validName(name, 64):
		return fmt.Errorf("%w: lease name %q: use 1 to 64 of a-z, 0-9, '.', '-'", ErrInvalid, name)
	case r.Holder == "" || len(r.Holder) > 128:
		return fmt.Errorf("%w: lease %s: give the holder's name (1 to 128 bytes)", ErrInvalid, name)
	case r.TTL.Duration != 0 && (r.TTL.Duration < MinLeaseTTL || r.TTL.Duration > MaxLeaseTTL):
		return fmt.Errorf("%w: lease %s: ttl %s: use %s to %s, or 0 to give it up", ErrInvalid, name, r.TTL.Duration, MinLeaseTTL, MaxLeaseTTL)
	}
	return nil
}

// applyLease takes, renews or gives up a lease at the proposer's clock
// (c.Time), which every replica reads from the log entry.
func applyLease(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	r := c.Lease
	raw, err := txn.First("leases", "id", c.Key)
	if err != nil {
		return err
	}
	var cur *Lease
	if raw != nil {
		cur = raw.(*Lease)
	}
	held := cur != nil && cur.Expires.After(c.Time)
	if r.TTL.Duration == 0 {
		if cur == nil || cur.Holder != r.Holder {
			return nil // not the holder: nothing to give up
		}
		events.add(txn, index, c.Time, "lease-released", c.Key, fmt.Sprintf("%s gave up lease %s", r.Holder, c.Key))
		return remove(txn, "leases", c.Key, index, nil)
	}
	if held && cur.Holder != r.Holder {
		return fmt.Errorf("%w: lease %s is held by %s until %s", ErrConflict, c.Key, cur.Holder, cur.Expires.UTC().Format(time.RFC3339Nano))
	}
	l := &Lease{Name: c.Key, Holder: r.Holder, Host: r.Host, Token: index, Expires: c.Time.Add(r.TTL.Duration)}
	if held {
		l.Token = cur.Token // a renewal keeps the fence
	} else {
		events.add(txn, index, c.Time, "lease-taken", c.Key, fmt.Sprintf("%s took lease %s (token %d)", r.Holder, c.Key, index))
	}
	return put(txn, "leases", l, index, nil)
}

// releaseHostLeases ends the leases held from a host Serf declared
// failed or gone, so their next holder need not wait out the TTL.
func releaseHostLeases(txn *memdb.Txn, index uint64, host string, events *eventLog, c *command) error {
	it, err := txn.Get("leases", "id")
	if err != nil {
		return err
	}
	var gone []*Lease
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if l := raw.(*Lease); l.Host == host {
			gone = append(gone, l)
		}
	}
	for _, l := range gone {
		events.add(txn, index, c.Time, "lease-released", l.Name, fmt.Sprintf("lease %s of %s ended: its host %s is down", l.Name, l.Holder, host))
		if err := remove(txn, "leases", l.Name, index, nil); err != nil {
			return err
		}
	}
	return nil
}

// Fence names the lease a write is made under: it applies only while
// Holder still has the lease with Token.
type Fence struct {
	Lease  string `json:"lease"`
	Holder string `json:"holder"`
	Token  uint64 `json:"token"`
}

// checkFence refuses a write of a deposed holder: ErrConflict, which the
// holder reads as "stop acting".
func checkFence(txn *memdb.Txn, f Fence, now time.Time) error {
	raw, err := txn.First("leases", "id", f.Lease)
	if err != nil {
		return err
	}
	if raw == nil {
		return fmt.Errorf("%w: fenced: lease %s is free, so %s holds it no longer", ErrConflict, f.Lease, f.Holder)
	}
	l := raw.(*Lease)
	switch {
	case l.Holder != f.Holder || l.Token != f.Token:
		return fmt.Errorf("%w: fenced: lease %s is held by %s (token %d), not by %s (token %d)", ErrConflict, f.Lease, l.Holder, l.Token, f.Holder, f.Token)
	case !l.Expires.After(now):
		return fmt.Errorf("%w: fenced: %s's lease %s expired at %s", ErrConflict, f.Holder, f.Lease, l.Expires.UTC().Format(time.RFC3339Nano))
	}
	return nil
}
