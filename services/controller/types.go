package controller

import "time"

// Meta versions an object: the raft indexes of the write that created it
// and of the last one that changed it. A write may name the ModifyIndex
// it read (compare and set); 0 asks that the object not exist yet.
type Meta struct {
	CreateIndex uint64 `json:"create_index"`
	ModifyIndex uint64 `json:"modify_index"`
}

func (m *Meta) meta() *Meta { return m }

// Host is a cluster member as the controller records it: what Serf says
// of it, plus the operator's flags.
type Host struct {
	ID       string   `json:"id"`
	Hostname string   `json:"hostname"`
	Addr     string   `json:"addr"` // gossip address, ip:port
	API      string   `json:"api"`  // host API address, ip:port
	Status   string   `json:"status"`
	Version  string   `json:"version"`
	Roles    []string `json:"roles"`
	// Cordoned hosts get no new placements (the scheduler's rule).
	Cordoned bool `json:"cordoned"`
	Meta
}

// Service is a name that jobs declare and discovery resolves; its
// instances are in their own collection.
type Service struct {
	Name string `json:"name"`
	// Leader is the ID of the service's leader instance: the oldest
	// healthy one, changed only when it is no longer healthy.
	Leader string `json:"leader,omitempty"`
	Meta
}

// Instance is one job's declaration of a service on one host, with the
// result of its last health check.
type Instance struct {
	// ID is "<host>/<job>/<service>".
	ID      string `json:"id"`
	Service string `json:"service"`
	Host    string `json:"host"`
	Job     string `json:"job"`
	// Addr is where the service answers, ip:port.
	Addr    string `json:"addr"`
	Proto   string `json:"proto,omitempty"`
	Healthy bool   `json:"healthy"`
	// Output is the last check's result in a few words.
	Output string `json:"output,omitempty"`
	Meta
}

// Setting is one cluster-wide setting.
type Setting struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	Meta
}

// Event is one entry of the bounded cluster history.
type Event struct {
	// ID orders events: the raft index of the write that made the event,
	// shifted left by 12 bits, plus its order within that write.
	ID uint64 `json:"id"`
	// Index is the raft index of the write that made the event.
	Index   uint64    `json:"index"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Subject string    `json:"subject,omitempty"`
	Message string    `json:"message"`
}
