package controller

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	memdb "github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
)

// Raft log operations: every change of the state is one of these,
// applied by the FSM in one switch.
const (
	opPut      = "put"      // Kind, Object, CAS
	opDelete   = "delete"   // Kind, Key, CAS
	opReport   = "report"   // Key (host), Instances
	opHosts    = "hosts"    // Hosts (the leader's view of Serf)
	opCordon   = "cordon"   // Key (host), Cordoned, Draining, CAS
	opLease    = "lease"    // Key (lease), Lease
	opSchedule = "schedule" // Schedule
	opDrain    = "drain"    // Key (instance), Draining
	opRelease  = "release"  // Key (app), Release
	opDeploy   = "deploy"   // Deploy, CAS
	opDestroy  = "destroy"  // Key (app), CAS
	// opTouch moves every collection's index to its own, right after a
	// restore: the restored indexes are lower than those clients
	// already saw, and their watches would wait for a change.
	opTouch = "touch"
)

// command is one raft log entry.
type command struct {
	Op   string `json:"op"`
	Kind string `json:"kind,omitempty"`
	Key  string `json:"key,omitempty"`
	// CAS, when set, is the ModifyIndex the write expects.
	CAS       *uint64         `json:"cas,omitempty"`
	Object    json.RawMessage `json:"object,omitempty"`
	Instances []Instance      `json:"instances,omitempty"`
	Hosts     []Host          `json:"hosts,omitempty"`
	Cordoned  bool            `json:"cordoned,omitempty"`
	Draining  bool            `json:"draining,omitempty"`
	Lease     *LeaseRequest   `json:"lease,omitempty"`
	Schedule  *Schedule       `json:"schedule,omitempty"`
	Release   *ReleaseRequest `json:"release,omitempty"`
	Deploy    *Deploy         `json:"deploy,omitempty"`
	// Time is the leader's clock when it proposed the write, so that
	// every replica records the same event times.
	Time time.Time `json:"time"`
}

// applyResult is what Apply returns to the proposer.
type applyResult struct {
	Index uint64
	Err   error
}

// fsm applies the raft log to the store.
type fsm struct {
	store  *store
	mu     sync.Mutex // serialises Apply and Restore
	events eventLog
}

func newFSM() *fsm { return &fsm{store: newStore()} }

func (f *fsm) Apply(l *raft.Log) any {
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return applyResult{Err: fmt.Errorf("%w: raft entry %d: %v", ErrInvalid, l.Index, err)}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	db := f.store.current()
	txn := db.Txn(true)
	defer txn.Abort()
	events := f.events // restored if the write fails
	if err := apply(txn, l.Index, &c, &f.events); err != nil {
		f.events = events
		return applyResult{Index: l.Index, Err: err}
	}
	// A write that changed nothing answers the collection's index, which
	// it did not move: a read "after" it must not wait for it.
	index := l.Index
	if raw, _ := txn.First(indexTable, "id", c.table()); raw != nil {
		index = raw.(*tableIndex).Index
	}
	txn.Commit()
	return applyResult{Index: index}
}

// table is the collection an operation writes.
func (c *command) table() string {
	switch c.Op {
	case opReport, opDrain:
		return "instances"
	case opHosts, opCordon:
		return "hosts"
	case opLease:
		return "leases"
	case opSchedule:
		return "placements"
	case opRelease:
		return "releases"
	case opDeploy:
		return "deploys"
	case opDestroy:
		return "apps"
	}
	return c.Kind
}

func apply(txn *memdb.Txn, index uint64, c *command, events *eventLog) error {
	switch c.Op {
	case opPut:
		k, ok := kinds[c.Kind]
		if !ok {
			return fmt.Errorf("%w: no collection %q", ErrInvalid, c.Kind)
		}
		// Not strict: the API checked the object, and a field that a
		// newer leader knows must not make this replica skip the write
		// the others made.
		obj := k.new()
		if err := json.Unmarshal(c.Object, obj); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalid, c.Kind, err)
		}
		if k.keep != nil {
			if old, err := txn.First(c.Kind, "id", obj.key()); err != nil {
				return err
			} else if old != nil {
				k.keep(old.(object), obj)
			}
		}
		if k.admit != nil {
			if err := k.admit(txn, index, c.Time, obj); err != nil {
				return err
			}
		}
		return put(txn, c.Kind, obj, index, c.CAS)
	case opDelete:
		k, ok := kinds[c.Kind]
		if !ok {
			return fmt.Errorf("%w: no collection %q", ErrInvalid, c.Kind)
		}
		if k.removable != nil {
			if err := k.removable(txn, c.Key); err != nil {
				return err
			}
		}
		return remove(txn, c.Kind, c.Key, index, c.CAS)
	case opReport:
		return applyReport(txn, index, c, events)
	case opDrain:
		return applyInstanceDrain(txn, index, c, events)
	case opHosts:
		return applyHosts(txn, index, c, events)
	case opCordon:
		return applyCordon(txn, index, c, events)
	case opLease:
		return applyLease(txn, index, c, events)
	case opSchedule:
		return applySchedule(txn, index, c, events)
	case opRelease:
		return applyRelease(txn, index, c, events)
	case opDeploy:
		return applyDeploy(txn, index, c, events)
	case opDestroy:
		return applyDestroyApp(txn, index, c, events)
	case opTouch:
		for name := range kinds {
			if err := touch(txn, name, index); err != nil {
				return err
			}
		}
		return nil
	}
	// Skipping it would leave this replica's state unlike the others'
	// for good; stopping makes the job restart loudly until it is
	// upgraded.
	panic(fmt.Sprintf("controller: raft entry %d has operation %q, which this version does not know: upgrade this host's plinth", index, c.Op))
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{txn: f.store.current().Txn(false)}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := load(json.NewDecoder(bufio.NewReader(rc)))
	if err != nil {
		return fmt.Errorf("restore controller state: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	it, _ := s.current().Txn(false).Get("events", "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		n++
	}
	f.events = eventLog{count: n}
	f.store.replace(s.current())
	return nil
}

type fsmSnapshot struct{ txn *memdb.Txn }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 64<<10)
	if err := dump(s.txn, json.NewEncoder(w)); err != nil {
		sink.Cancel()
		return err
	}
	if err := w.Flush(); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
