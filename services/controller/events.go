package controller

import (
	"time"

	memdb "github.com/hashicorp/go-memdb"
)

func (e *Event) key() string { return "" }
func (e *Event) meta() *Meta { return &Meta{CreateIndex: e.Index, ModifyIndex: e.Index} }

// MaxEvents bounds the cluster's event history: the oldest go first.
const MaxEvents = 1000

// eventLog appends events inside FSM writes. Several events of one raft
// entry get consecutive sub-indexes so they keep their order.
type eventLog struct {
	count int // events in the table
	seq   uint64
	last  uint64 // raft index of the last event
}

// eventIndexShift leaves room for 4096 events per raft entry in an
// event's index, which sorts by raft index then by order of writing.
const eventIndexShift = 12

func (l *eventLog) add(txn *memdb.Txn, index uint64, t time.Time, typ, subject, msg string) {
	if index != l.last {
		l.last, l.seq = index, 0
	}
	if l.seq == 1<<eventIndexShift-1 {
		return // this write's share of the history is full
	}
	l.seq++
	e := &Event{ID: index<<eventIndexShift | l.seq, Index: index, Time: t, Type: typ, Subject: subject, Message: msg}
	if txn.Insert("events", e) != nil {
		return
	}
	l.count++
	for l.count > MaxEvents {
		raw, err := txn.First("events", "id")
		if err != nil || raw == nil {
			break
		}
		txn.Delete("events", raw)
		l.count--
	}
	touch(txn, "events", index)
}
