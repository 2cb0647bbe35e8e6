package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	memdb "github.com/hashicorp/go-memdb"
)

// Errors of the state store, which the API maps to status codes.
var (
	ErrNotFound = errors.New("no such object")
	// ErrConflict: a compare-and-set write named an index that is not the
	// object's current one (someone else wrote it since it was read).
	ErrConflict = errors.New("index conflict")
	ErrInvalid  = errors.New("invalid")
)

// object is what every collection holds: a versioned, keyed value.
type object interface {
	meta() *Meta
	key() string
}

// kind describes one collection. Adding an object type is one kind
// literal in kinds and a file with its struct.
type kind struct {
	// name is the collection's name in the API and its table.
	name string
	// field is the struct field holding the key.
	field string
	new   func() object
	// indexes are extra memdb indexes (name → struct field).
	indexes map[string]string
	// writable: the API's generic PUT and DELETE may change it; the
	// others are written by the controller itself.
	writable bool
	// check validates an object the API is asked to write.
	check func(object) error
	// keep, when set, carries fields of the stored object (old) that the
	// API's writer does not own over to the new one.
	keep func(old, obj object)
	// admit, when set, checks an object against the rest of the state as
	// its write is applied, and may complete it (an ID, a port).
	admit func(txn *memdb.Txn, index uint64, t time.Time, obj object) error
	// removable, when set, lets the platform remove objects of a kind
	// the API does not write, when it says yes.
	removable func(txn *memdb.Txn, key string) error
}

var kinds = map[string]*kind{
	"hosts":     {name: "hosts", field: "ID", new: func() object { return new(Host) }},
	"services":  {name: "services", field: "Name", new: func() object { return new(Service) }},
	"instances": {name: "instances", field: "ID", new: func() object { return new(Instance) }, indexes: map[string]string{"host": "Host", "service": "Service"}},
	"settings":  {name: "settings", field: "Key", new: func() object { return new(Setting) }, writable: true, check: checkSetting},
	"events":    {name: "events", new: func() object { return new(Event) }},
	"formations": {name: "formations", field: "Name", new: func() object { return new(Formation) }, writable: true,
		check: checkFormation, keep: keepFormationStatus},
	"placements": {name: "placements", field: "ID", new: func() object { return new(Placement) }, indexes: map[string]string{"host": "Host", "formation": "Formation"}},
	"leases":     {name: "leases", field: "Name", new: func() object { return new(Lease) }},
	"routes": {name: "routes", field: "ID", new: func() object { return new(Route) }, writable: true,
		check: checkRoute, keep: keepRoutePort, admit: admitRoute},
	"apps": {name: "apps", field: "Name", new: func() object { return new(App) }, writable: true,
		check: checkApp, keep: keepApp, admit: admitApp},
	"releases": {name: "releases", field: "ID", new: func() object { return new(Release) }, indexes: map[string]string{"app": "App"},
		removable: checkRemoveRelease},
	"deploys": {name: "deploys", field: "ID", new: func() object { return new(Deploy) }, indexes: map[string]string{"app": "App"}},
	"builds": {name: "builds", field: "ID", new: func() object { return new(Build) }, indexes: map[string]string{"app": "App"},
		writable: true, check: checkBuild, admit: admitBuild},
	"upgrades": {name: "upgrades", field: "ID", new: func() object { return new(Upgrade) }, writable: true,
		check: checkUpgrade, admit: admitUpgrade},
	"images": {name: "images", field: "ID", new: func() object { return new(Image) }, writable: true, check: checkImage, indexes: map[string]string{"repo": "Repo"}},
	"tags":   {name: "tags", field: "ID", new: func() object { return new(Tag) }, writable: true, check: checkTag, indexes: map[string]string{"repo": "Repo"}},
}

// indexTable records, per collection, the raft index of its last change:
// what blocking queries wait on.
const indexTable = "index"

type tableIndex struct {
	Name  string
	Index uint64
}

func schema() *memdb.DBSchema {
	s := &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		indexTable: {Name: indexTable, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Name"}},
		}},
	}}
	for _, k := range kinds {
		t := &memdb.TableSchema{Name: k.name, Indexes: map[string]*memdb.IndexSchema{}}
		if k.name == "events" {
			t.Indexes["id"] = &memdb.IndexSchema{Name: "id", Unique: true, Indexer: &memdb.UintFieldIndex{Field: "ID"}}
		} else {
			t.Indexes["id"] = &memdb.IndexSchema{Name: "id", Unique: true, Indexer: &memdb.StringFieldIndex{Field: k.field}}
		}
		for name, field := range k.indexes {
			t.Indexes[name] = &memdb.IndexSchema{Name: name, Indexer: &memdb.StringFieldIndex{Field: field}}
		}
		s.Tables[k.name] = t
	}
	return s
}

// store is the controller's state: memdb tables written only by the FSM.
// A restore swaps the whole database and wakes every blocking query.
type store struct {
	mu       sync.Mutex
	db       *memdb.MemDB
	replaced chan struct{}
}

func newStore() *store {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		panic(fmt.Sprintf("controller schema: %v", err)) // a programming error
	}
	return &store{db: db, replaced: make(chan struct{})}
}

func (s *store) current() *memdb.MemDB {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db
}

// state returns the database and a channel closed when it is replaced.
func (s *store) state() (*memdb.MemDB, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db, s.replaced
}

func (s *store) replace(db *memdb.MemDB) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.db = db
	close(s.replaced)
	s.replaced = make(chan struct{})
}

// put writes obj into table at raft index, keeping its CreateIndex, and
// records the table's change. cas, when not nil, must be the object's
// current ModifyIndex (0: it must not exist).
func put(txn *memdb.Txn, table string, obj object, index uint64, cas *uint64) error {
	old, err := txn.First(table, "id", obj.key())
	if err != nil {
		return err
	}
	if err := checkCAS(table, obj.key(), old, cas); err != nil {
		return err
	}
	m := obj.meta()
	m.CreateIndex, m.ModifyIndex = index, index
	if old != nil {
		m.CreateIndex = old.(object).meta().CreateIndex
	}
	if err := txn.Insert(table, obj); err != nil {
		return err
	}
	return touch(txn, table, index)
}

// remove deletes the object with key from table, under the same
// compare-and-set rule as put.
func remove(txn *memdb.Txn, table, key string, index uint64, cas *uint64) error {
	old, err := txn.First(table, "id", key)
	if err != nil {
		return err
	}
	if err := checkCAS(table, key, old, cas); err != nil {
		return err
	}
	if old == nil {
		return fmt.Errorf("%w: %s %s", ErrNotFound, table, key)
	}
	if err := txn.Delete(table, old); err != nil {
		return err
	}
	return touch(txn, table, index)
}

// checkCAS is the compare-and-set rule of every write: with cas, the
// object (old, nil when absent) must be at ModifyIndex *cas, or absent
// when *cas is 0.
func checkCAS(table, key string, old any, cas *uint64) error {
	switch {
	case cas == nil:
	case old == nil && *cas != 0:
		return fmt.Errorf("%w: %s %s does not exist (compare-and-set index %d)", ErrConflict, table, key, *cas)
	case old != nil && old.(object).meta().ModifyIndex != *cas:
		return fmt.Errorf("%w: %s %s is at index %d, not %d: read it again and retry", ErrConflict, table, key, old.(object).meta().ModifyIndex, *cas)
	}
	return nil
}

func touch(txn *memdb.Txn, table string, index uint64) error {
	return txn.Insert(indexTable, &tableIndex{Name: table, Index: index})
}

// QueryOptions make a read a blocking query: it returns once the
// collection's index is above Index, or after Wait (capped at MaxWait).
type QueryOptions struct {
	Index uint64
	Wait  time.Duration
	// Consistent reads from the leader, once it has confirmed it still
	// leads: the read sees every write acknowledged before it, wherever
	// that write was made (a read, change and compare-and-set write
	// needs it).
	Consistent bool
}

// QueryMeta is the collection's index at the time of a read: the Index
// of the next blocking query.
type QueryMeta struct {
	Index uint64
}

// MaxWait caps a blocking query's wait.
const MaxWait = 5 * time.Minute

// query runs read on a snapshot of the store once the table's index is
// above q.Index (at once when q.Index is 0), or when q.Wait or ctx ends.
// It is the one blocking-query helper every endpoint uses.
func (s *store) query(ctx context.Context, table string, q QueryOptions, read func(*memdb.Txn) error) (QueryMeta, error) {
	if q.Index > 0 {
		wait := min(q.Wait, MaxWait)
		if wait <= 0 {
			wait = MaxWait
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	restored := false
	for {
		db, replaced := s.state()
		txn := db.Txn(false)
		ch, raw, err := txn.FirstWatch(indexTable, "id", table)
		if err != nil {
			return QueryMeta{}, err
		}
		var idx uint64
		if raw != nil {
			idx = raw.(*tableIndex).Index
		}
		if q.Index == 0 || idx > q.Index || ctx.Err() != nil || restored {
			return QueryMeta{Index: max(idx, 1)}, read(txn)
		}
		select {
		case <-ch:
		case <-replaced:
			// A restore may bring the index back below q.Index: the
			// watcher gets the new state and its index at once.
			restored = true
		case <-ctx.Done():
		}
	}
}

// list returns every object of table, sorted by key.
func list[T object](txn *memdb.Txn, table string) ([]T, error) {
	it, err := txn.Get(table, "id")
	if err != nil {
		return nil, err
	}
	out := []T{}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(T))
	}
	return out, nil
}

// dump writes every table as JSON lines: {"table": …, "object": …}.
// It is the format of snapshots and backups.
func dump(txn *memdb.Txn, enc *json.Encoder) error {
	names := []string{indexTable}
	for n := range kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		it, err := txn.Get(n, "id")
		if err != nil {
			return err
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			if err := enc.Encode(dumpLine{Table: n, Object: raw}); err != nil {
				return err
			}
		}
	}
	return nil
}

type dumpLine struct {
	Table  string `json:"table"`
	Object any    `json:"object"`
}

// load reads what dump wrote into a new store. Unknown tables or fields
// are errors: the dump is from another version or damaged.
func load(dec *json.Decoder) (*store, error) {
	s := newStore()
	txn := s.current().Txn(true)
	defer txn.Abort()
	for line := 1; ; line++ {
		var l struct {
			Table  string          `json:"table"`
			Object json.RawMessage `json:"object"`
		}
		if err := dec.Decode(&l); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("state line %d: %w", line, err)
		}
		var obj any
		if l.Table == indexTable {
			obj = new(tableIndex)
		} else if k, ok := kinds[l.Table]; ok {
			obj = k.new()
		} else {
			return nil, fmt.Errorf("state line %d: unknown table %q", line, l.Table)
		}
		if err := strictJSON(l.Object, obj); err != nil {
			return nil, fmt.Errorf("state line %d (%s): %w", line, l.Table, err)
		}
		if err := txn.Insert(l.Table, obj); err != nil {
			return nil, fmt.Errorf("state line %d (%s): %w", line, l.Table, err)
		}
	}
	txn.Commit()
	return s, nil
}

// strictJSON decodes data into v, refusing unknown fields and trailing
// data.
func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
