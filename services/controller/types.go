package controller

import (
	"time"

	"github.com/plinth-os/plinth/host/job"
)

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
	// Labels are the operator's key=value facts about the host, from
	// its machine config; formations' constraints match them.
	Labels map[string]string `json:"labels,omitempty"`
	// Cordoned hosts get no new placements (the scheduler's rule).
	Cordoned bool `json:"cordoned"`
	// Draining hosts are cordoned and the scheduler moves their jobs
	// away, one at a time.
	Draining bool `json:"draining,omitempty"`
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
	// Draining instances get no new work from the routers and do not
	// lead their service; whoever stops them waits for their work in
	// flight to end (the routers count it).
	Draining bool `json:"draining,omitempty"`
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

// Formation is desired state for one workload and process type: how many
// copies of a job to keep running, and where. The scheduler owns its
// placements; Status is what the scheduler last found.
type Formation struct {
	// Name is 1 to 48 of a-z, 0-9, '.', '-', starting with a letter or
	// digit.
	Name string `json:"name"`
	// Count is how many instances to run, spread across hosts; with Omni
	// it must be 0.
	Count int `json:"count,omitempty"`
	// Omni runs one instance on every eligible host.
	Omni bool `json:"omni,omitempty"`
	// Constraints limit the hosts: "role" matches any of a host's roles;
	// "hostname", "id" and "version" match what the host advertises
	// (ConstraintKeys); any other key matches the host's label of that
	// key, and a host without it does not match.
	Constraints map[string]string `json:"constraints,omitempty"`
	// Job is what each instance runs. Its ID is the job's ID on each host
	// for omni formations and the prefix of "<id>-<n>" otherwise; empty,
	// it is the formation's name. Its memory limit and CPU quota are what
	// each instance reserves on its host.
	Job    job.Spec        `json:"job"`
	Status FormationStatus `json:"status,omitzero"`
	Meta
}

// FormationStatus is the scheduler's last word on a formation; the API's
// writes of a formation keep it.
type FormationStatus struct {
	Desired int `json:"desired"`
	Running int `json:"running"`
	// Reason says why fewer than Desired are placed.
	Reason string `json:"reason,omitempty"`
	// Token is the scheduler lease's token it was written under: a
	// status from an earlier scheduler is not current.
	Token uint64 `json:"token,omitempty"`
}

// Placement is the scheduler's decision that one instance of a formation
// runs on a host. The scheduler writes it before it starts the job, so a
// new scheduler knows every job an old one may have started.
type Placement struct {
	// ID is "<host>/<job>".
	ID        string `json:"id"`
	Formation string `json:"formation"`
	Host      string `json:"host"`
	Job       string `json:"job"`
	// MemoryBytes and CPUs are what it reserves on its host.
	MemoryBytes int64   `json:"memory_bytes,omitempty"`
	CPUs        float64 `json:"cpus,omitempty"`
	// Replaces is the ID of the placement this one takes over from
	// during a drain.
	Replaces string `json:"replaces,omitempty"`
	Meta
}

// Lease makes one holder of a name the only active one (the active
// scheduler). Token, the raft index at which the holder took it, fences
// its writes: a deposed holder's token no longer matches.
type Lease struct {
	Name   string `json:"name"`
	Holder string `json:"holder"`
	// Host is the holder's host: the lease ends when Serf says it failed.
	Host    string    `json:"host"`
	Token   uint64    `json:"token"`
	Expires time.Time `json:"expires"`
	Meta
}

// Route tells the routers on every host to carry traffic to a service's
// instances: HTTP by domain and path prefix (on the routers' ports 80
// and 443), or a TCP port, or a UDP port range.
type Route struct {
	// ID is "<type>-<index>" unless the writer names it.
	ID   string `json:"id"`
	Type string `json:"type"` // RouteHTTP, RouteTCP or RouteUDP
	// Service is the discovery service whose healthy instances get the
	// traffic.
	Service string `json:"service"`
	// Domain ("example.com", "*.example.com") and Path (a prefix, "/" by
	// default) match HTTP requests.
	Domain string `json:"domain,omitempty"`
	Path   string `json:"path,omitempty"`
	// Sticky sends a client's HTTP requests to the same instance while
	// it is healthy (a signed cookie).
	Sticky bool `json:"sticky,omitempty"`
	// Port is a TCP route's port (0 when written: the lowest free one of
	// the range setting) or a UDP route's first port; PortEnd is a UDP
	// range's last port.
	Port    int `json:"port,omitempty"`
	PortEnd int `json:"port_end,omitempty"`
	// TLS terminates TLS on a TCP route, with TLSCert or the cluster's
	// default certificate.
	TLS bool `json:"tls,omitempty"`
	// TLSCert and TLSKey (PEM) are the route's own certificate: an HTTP
	// route's for its domain (by SNI), a TLS TCP route's.
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
	// Leader sends a TCP route's connections to the service's leader
	// only (a singleton database).
	Leader bool `json:"leader,omitempty"`
	// ProxyProtocol sends a PROXY protocol v2 header to the instance
	// ahead of a TCP connection's bytes.
	ProxyProtocol bool `json:"proxy_protocol,omitempty"`
	// ConnectTimeout bounds connecting to an instance; Timeout is an
	// HTTP response's, a TCP connection's idle time, or a UDP session's
	// idle time. 0 is the router's default.
	ConnectTimeout job.Duration `json:"connect_timeout,omitzero"`
	Timeout        job.Duration `json:"timeout,omitzero"`
	Meta
}
