package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/plinth-os/plinth/host"
)

// RoleController is the machine-config role of the hosts that run
// controller voters.
const RoleController = "controller"

// members is this host's view of Serf, followed through the local host
// API (the controller is a job; layer 0 is reached only by its client).
// It resolves raft server IDs, which are node IDs, to addresses, so an
// address change needs no raft configuration change.
type members struct {
	hosts *host.Client
	ports Ports
	log   *slog.Logger

	mu      sync.Mutex
	byID    map[string]host.Member
	changed chan struct{} // closed and replaced at every change
	synced  chan struct{} // closed after the first full list
}

func newMembers(hosts *host.Client, ports Ports, log *slog.Logger) *members {
	return &members{hosts: hosts, ports: ports, log: log, byID: map[string]host.Member{},
		changed: make(chan struct{}), synced: make(chan struct{})}
}

// run follows the host's member events until ctx ends: subscribe first,
// then list, so nothing between the two is missed.
func (m *members) run(ctx context.Context) {
	backoff := 250 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		listed, err := m.follow(ctx, &first)
		if ctx.Err() != nil {
			return
		}
		if listed {
			backoff = 250 * time.Millisecond // it worked until the stream broke
		}
		m.log.Warn("following host members", "err", err, "retry", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// follow reports whether it got as far as the member list.
func (m *members) follow(ctx context.Context, first *bool) (listed bool, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := m.hosts.Events(ctx)
	if err != nil {
		return false, err
	}
	defer stream.Close()
	list, err := m.hosts.Members(ctx)
	if err != nil {
		return false, err
	}
	m.set(list)
	if *first {
		*first = false
		close(m.synced)
	}
	for {
		e, err := stream.Next()
		if err != nil {
			return true, fmt.Errorf("member events: %w", err)
		}
		m.update(e)
	}
}

func (m *members) set(list []host.Member) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.byID = map[string]host.Member{}
	for _, mb := range list {
		m.byID[mb.ID] = mb
	}
	m.notifyLocked()
}

func (m *members) update(e host.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Type == "member-reap" {
		delete(m.byID, e.Member.ID)
	} else {
		m.byID[e.Member.ID] = e.Member
	}
	m.notifyLocked()
}

func (m *members) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// snapshot returns the members sorted by ID and a channel closed at the
// next change.
func (m *members) snapshot() ([]host.Member, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]host.Member, 0, len(m.byID))
	for _, mb := range m.byID {
		out = append(out, mb)
	}
	slices.SortFunc(out, func(a, b host.Member) int { return strings.Compare(a.ID, b.ID) })
	return out, m.changed
}

func (m *members) get(id string) (host.Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mb, ok := m.byID[id]
	return mb, ok
}

// addr returns the host's address with port: the IP of its advertised
// gossip address.
func (m *members) addr(id string, port int) (string, error) {
	mb, ok := m.get(id)
	if !ok {
		return "", fmt.Errorf("host %s is not a member this host knows", id)
	}
	return memberAddr(mb, port)
}

// ServerAddr is raft's ServerAddressProvider: a voter's current address.
func (m *members) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	a, err := m.addr(string(id), m.ports.Raft)
	return raft.ServerAddress(a), err
}

// apiAddr is the controller API address on host id.
func (m *members) apiAddr(id string) (string, error) { return m.addr(id, m.ports.API) }

func hasRole(mb host.Member, role string) bool { return slices.Contains(mb.Roles, role) }

// IsControllerHost reports whether mb is an alive member with the
// controller role: a host that runs, or may run, a voter.
func IsControllerHost(mb host.Member) bool {
	return mb.Status == host.StatusAlive && hasRole(mb, RoleController)
}

// memberAddr is mb's advertised gossip IP with port.
func memberAddr(mb host.Member, port int) (string, error) {
	ip, _, err := net.SplitHostPort(mb.Addr)
	if err != nil {
		return "", fmt.Errorf("host %s: gossip address %q: %w", mb.ID, mb.Addr, err)
	}
	return net.JoinHostPort(ip, strconv.Itoa(port)), nil
}
