package host

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
	"github.com/vishvananda/netlink"

	"github.com/plinth-os/plinth/host/fanout"
	"github.com/plinth-os/plinth/host/labels"
	"github.com/plinth-os/plinth/host/slots"
)

// Member is one host as the gossip pool sees it.
type Member struct {
	// ID is the host's node ID, also its Serf node name.
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	// Addr is the gossip address, ip:port.
	Addr string `json:"addr"`
	// API is the host API's address, ip:port.
	API string `json:"api"`
	// Status is alive, leaving, left or failed.
	Status  string   `json:"status"`
	Version string   `json:"version"`
	Roles   []string `json:"roles"`
	// Labels are the operator's key=value facts about the host.
	Labels map[string]string `json:"labels,omitempty"`
	// Subnet is the host's container subnet.
	Subnet string `json:"subnet,omitempty"`
	// Slots are a disk-installed host's slots: `slot:version:entry`
	// each, the booted one starred (see host/slots).
	Slots string `json:"slots,omitempty"`
	// Upgrade is where an upgrade stands: committed, installed, on
	// trial or failed ("" when not installed on a disk).
	Upgrade string `json:"upgrade,omitempty"`
}

// Member statuses.
const (
	StatusAlive   = "alive"
	StatusLeaving = "leaving"
	StatusLeft    = "left"
	StatusFailed  = "failed"
)

// Event is a change of one member: Type is member-join, member-leave,
// member-failed, member-update (new tags or address) or member-reap (a
// failed or left member forgotten).
type Event struct {
	Type   string    `json:"type"`
	Member Member    `json:"member"`
	Time   time.Time `json:"time"`
}

// Serf tag keys.
const (
	tagID       = "id"
	tagHostname = "hostname"
	tagAPI      = "api"
	tagVersion  = "version"
	tagRoles    = "roles"
	tagSubnet   = "subnet"
	tagLabels   = "labels"
	tagSlots    = "slots"
	tagUpgrade  = "upgrade"
)

// snapshotFile keeps the members Serf last knew, so a restarted hostd
// finds them again even when every seed is down.
const snapshotFile = "serf.snapshot"

// After an address change, members that missed the old member's leave
// keep its old address until they declare it failed (a few seconds); a
// join every moveRejoinEvery for moveRejoinWindow hands them the new one.
const (
	moveRejoinWindow = 15 * time.Second
	moveRejoinEvery  = 2 * time.Second
)

// subscriberBuffer is how many events a slow event stream may lag behind
// before it is cut off (its client reconnects and re-reads the members).
const subscriberBuffer = 256

// membership runs this host's Serf member. When the advertised address
// changes, it replaces the Serf instance with one at the new address under
// the same node name: memberlist refuses an address change of a live
// member, so the others first see the old address fail, then accept the
// new one (DeadNodeReclaimTime).
type membership struct {
	id       string
	hostname string
	roles    []string
	subnet   string // this host's container subnet, for the overlay
	slots    SlotsInfo
	key      []byte
	cfg      Config
	log      *slog.Logger
	events   chan serf.Event
	kick     chan struct{}

	mu    sync.Mutex
	serf  *serf.Serf
	adv   netip.Addr
	port  int
	extra []string // addresses of members known before a restart, to rejoin
	// rejoinUntil keeps joins going after a move even while others answer,
	// until every member has taken the new address.
	rejoinUntil time.Time

	// subs has its own lock, so that events keep flowing while a
	// restart holds mu and waits for the old instance to drain.
	subs *fanout.Fanout[Event]
}

func newMembership(cfg Config, id, hostname string, key []byte, log *slog.Logger) *membership {
	return &membership{
		id: id, hostname: hostname, roles: cfg.Roles, key: key, cfg: cfg, log: log,
		events: make(chan serf.Event, 512),
		kick:   make(chan struct{}, 1),
		subs:   fanout.New[Event](subscriberBuffer),
	}
}

// start creates the Serf member advertising adv.
func (m *membership) start(adv netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.startLocked(adv)
}

func (m *membership) startLocked(adv netip.Addr) error {
	conf := m.serfConfig(adv)
	s, err := serf.Create(conf)
	if err != nil {
		return fmt.Errorf("start gossip on %s:%d: %w", m.cfg.BindAddr, m.cfg.GossipPort, err)
	}
	m.serf, m.adv = s, adv
	m.port = int(s.LocalMember().Port)
	return nil
}

func (m *membership) serfConfig(adv netip.Addr) *serf.Config {
	logger := log.New(serfLog{m.log}, "", 0)
	ml := memberlist.DefaultLANConfig()
	ml.Name = m.id
	ml.BindAddr = m.cfg.BindAddr
	if ml.BindAddr == "0.0.0.0" && adv.Is6() && !adv.Is4In6() {
		// An IPv6 member: "::" listens on both families' addresses.
		ml.BindAddr = "::"
	}
	ml.BindPort = m.cfg.GossipPort
	ml.AdvertiseAddr = adv.String()
	ml.AdvertisePort = m.cfg.GossipPort
	if m.port != 0 {
		// A restart keeps the port a first start with port 0 picked.
		ml.BindPort, ml.AdvertisePort = m.port, m.port
	}
	g := m.cfg.Gossip
	ml.ProbeInterval = g.ProbeInterval
	ml.ProbeTimeout = g.ProbeTimeout
	ml.GossipInterval = g.GossipInterval
	ml.SuspicionMult = g.SuspicionMult
	ml.SuspicionMaxTimeoutMult = g.SuspicionMaxTimeoutMult
	ml.TCPTimeout = g.TCPTimeout
	// A host that failed may come back at a new address (DHCP); take the
	// new address as soon as the old one is declared dead.
	ml.DeadNodeReclaimTime = time.Millisecond
	ml.SecretKey = m.key
	ml.Logger = logger

	conf := serf.DefaultConfig()
	conf.NodeName = m.id
	conf.Tags = m.tags(adv)
	conf.MemberlistConfig = ml
	conf.EventCh = m.events
	conf.SnapshotPath = filepath.Join(m.cfg.StateDir, snapshotFile)
	conf.RejoinAfterLeave = true
	// Node names are random IDs, so a "conflict" is this host's own old
	// address after an address change, never a second host with our name;
	// Serf's resolution would shut this member down.
	conf.EnableNameConflictResolution = false
	conf.DisableCoordinates = true
	conf.ReconnectInterval = g.ReconnectInterval
	conf.BroadcastTimeout = 2 * time.Second
	conf.LeavePropagateDelay = 500 * time.Millisecond
	conf.Logger = logger
	return conf
}

func (m *membership) tags(adv netip.Addr) map[string]string {
	api := ""
	if m.cfg.APIPort != 0 {
		api = net.JoinHostPort(adv.String(), strconv.Itoa(m.cfg.APIPort))
	}
	tags := map[string]string{
		tagID:       m.id,
		tagHostname: m.hostname,
		tagAPI:      api,
		tagVersion:  imageVersion(),
		tagRoles:    strings.Join(m.roles, ","),
		tagSubnet:   m.subnet,
	}
	if len(m.cfg.Labels) > 0 {
		tags[tagLabels] = labels.Encode(m.cfg.Labels)
	}
	if len(m.slots.Slots) > 0 {
		tags[tagSlots] = slots.Line(m.slots.Slots)
		tags[tagUpgrade], _, _ = strings.Cut(m.slots.Upgrade, ":")
	}
	return tags
}

// setSlotsTag publishes the slots' state in this member's tags.
func (m *membership) setSlotsTag(info SlotsInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.slots = info
	if m.serf == nil {
		return
	}
	if err := m.serf.SetTags(m.tags(m.adv)); err != nil {
		m.log.Warn("publish slots tag", "err", err)
	}
}

// current returns the running Serf instance.
func (m *membership) current() *serf.Serf {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.serf
}

// Members lists every member Serf knows, failed and left ones included,
// sorted by hostname then ID.
func (m *membership) Members() []Member {
	s := m.current()
	var out []Member
	for _, sm := range s.Members() {
		out = append(out, toMember(sm))
	}
	slices.SortFunc(out, func(a, b Member) int {
		if c := strings.Compare(a.Hostname, b.Hostname); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// localIP is the address this host's gossip advertises now; nil before
// gossip starts.
func (m *membership) localIP() net.IP {
	s := m.current()
	if s == nil {
		return nil
	}
	return s.LocalMember().Addr
}

// Local returns this host's own member entry.
func (m *membership) Local() Member {
	return toMember(m.current().LocalMember())
}

func toMember(sm serf.Member) Member {
	var roles []string
	if r := sm.Tags[tagRoles]; r != "" {
		roles = strings.Split(r, ",")
	}
	return Member{
		ID:       sm.Name,
		Hostname: sm.Tags[tagHostname],
		Addr:     net.JoinHostPort(sm.Addr.String(), strconv.Itoa(int(sm.Port))),
		API:      sm.Tags[tagAPI],
		Status:   sm.Status.String(),
		Version:  sm.Tags[tagVersion],
		Roles:    roles,
		Labels:   labels.Decode(sm.Tags[tagLabels]),
		Subnet:   sm.Tags[tagSubnet],
		Slots:    sm.Tags[tagSlots],
		Upgrade:  sm.Tags[tagUpgrade],
	}
}

// subscribe returns a channel of member events from now on, and a cancel
// function. The channel is closed when the subscriber falls too far behind
// or membership stops.
func (m *membership) subscribe() (<-chan Event, func()) { return m.subs.Subscribe() }

// run keeps the member going until ctx ends, then leaves the cluster.
// start must have succeeded before.
func (m *membership) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { m.pumpEvents(ctx) })
	wg.Go(func() { m.joinLoop(ctx) })
	wg.Go(func() { m.followAddress(ctx) })
	wg.Wait()

	s := m.current()
	if err := s.Leave(); err != nil {
		m.log.Warn("leave cluster", "err", err)
	}
	if err := s.Shutdown(); err != nil {
		m.log.Warn("stop gossip", "err", err)
	}
	m.subs.Close()
}

func (m *membership) pumpEvents(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-m.events:
			me, ok := e.(serf.MemberEvent)
			if !ok {
				continue
			}
			now := time.Now()
			for _, sm := range me.Members {
				ev := Event{Type: me.Type.String(), Member: toMember(sm), Time: now}
				m.log.Info("member "+strings.TrimPrefix(ev.Type, "member-"),
					"id", ev.Member.ID, "hostname", ev.Member.Hostname, "addr", ev.Member.Addr)
				m.subs.Publish(ev)
			}
		}
	}
}

// joinLoop joins the seeds whenever this host sees no other live member:
// at start, after an address change, and after a partition that outlasted
// Serf's own reconnect attempts. Backoff grows from 0.5 s to 10 s.
func (m *membership) joinLoop(ctx context.Context) {
	const minWait, maxWait, idleCheck = 500 * time.Millisecond, 10 * time.Second, 5 * time.Second
	wait := time.Duration(0)
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
		case <-time.After(wait):
		}
		seeds, moving := m.seeds()
		if len(seeds) == 0 || m.placeholderAddress() || m.aliveOthers() > 0 && !moving {
			wait, failures = idleCheck, 0
			continue
		}
		if moving {
			m.current().Join(seeds, true)
			wait = moveRejoinEvery
			continue
		}
		n, err := m.current().Join(seeds, true)
		// A seed given by name may be this host itself, which answers too.
		if n > 0 && m.aliveOthers() > 0 {
			m.log.Info("joined cluster", "contacted", n, "seeds", len(seeds))
			wait, failures = idleCheck, 0
			continue
		}
		failures++
		if failures == 1 || failures%10 == 0 {
			m.log.Warn("join cluster: no seed answered; retrying", "seeds", strings.Join(seeds, ","), "attempts", failures, "err", err)
		}
		wait = min(max(2*wait, minWait), maxWait)
		if failures == 1 {
			wait = minWait
		}
	}
}

// seeds is the configured join list plus members known before a restart,
// without this host's own address; moving is true during the rejoin window
// after an address change.
func (m *membership) seeds() (seeds []string, moving bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	self := net.JoinHostPort(m.adv.String(), strconv.Itoa(m.port))
	var out []string
	for _, s := range slices.Concat(m.cfg.Join, m.extra) {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(strings.Trim(s, "[]"), strconv.Itoa(cmp.Or(m.cfg.GossipPort, DefaultGossipPort)))
		}
		if s != self && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, time.Now().Before(m.rejoinUntil)
}

// placeholderAddress reports whether the member advertises loopback only
// because the host has no address yet: joining then would tell the
// cluster an address nobody can reach.
func (m *membership) placeholderAddress() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.adv.IsLoopback() {
		return false
	}
	spec, err := netip.ParseAddr(m.cfg.Advertise)
	return err != nil || !spec.IsLoopback()
}

func (m *membership) aliveOthers() int {
	n := 0
	for _, sm := range m.current().Members() {
		if sm.Name != m.id && sm.Status == serf.StatusAlive {
			n++
		}
	}
	return n
}

// followAddress re-evaluates the advertised address when the kernel's
// addresses change (and every 10 s in case an event was lost) and moves
// the member to a new address.
func (m *membership) followAddress(ctx context.Context) {
	updates := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		ErrorCallback: func(err error) { m.log.Debug("address events", "err", err) },
	}); err != nil {
		m.log.Warn("watch addresses; polling every 10s instead", "err", err)
		updates = nil
	} else {
		// netlink's reader blocks sending to the channel; drain it until
		// the reader, stopped by done, closes it.
		ch := updates
		defer func() {
			go func() {
				for range ch {
				}
			}()
		}()
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-updates:
			if !ok {
				m.log.Warn("address events stopped; polling every 10s instead")
				updates = nil
				continue
			}
			// Addresses often change in bursts (DHCP removes one, adds
			// another); look once the burst has settled.
			settle = time.After(200 * time.Millisecond)
			continue
		case <-settle:
		case <-tick.C:
		}
		settle = nil
		m.checkAddress()
	}
}

func (m *membership) checkAddress() {
	ip, err := currentAdvertise(m.cfg.Advertise, m.cfg.containerRange())
	m.mu.Lock()
	old := m.adv
	m.mu.Unlock()
	if err != nil || ip == old {
		return
	}
	if err := m.move(ip); err != nil {
		m.log.Error("move to new address", "from", old, "to", ip, "err", err)
	}
}

// move restarts the Serf member at a new advertised address and rejoins
// the members it knew. The old member leaves first, so the others accept
// the new address at once; should the leave not get through, they accept
// it once they declare the old one failed, which the rejoins after a move
// catch.
func (m *membership) move(ip netip.Addr) error {
	m.mu.Lock()
	old, from := m.serf, m.adv
	m.mu.Unlock()
	var known []string
	for _, sm := range old.Members() {
		if sm.Name != m.id && sm.Status == serf.StatusAlive {
			known = append(known, net.JoinHostPort(sm.Addr.String(), strconv.Itoa(int(sm.Port))))
		}
	}
	m.log.Info("advertised address changed; restarting gossip", "from", from, "to", ip)
	if err := old.Leave(); err != nil {
		m.log.Debug("leave before moving", "err", err)
	}
	if err := old.Shutdown(); err != nil {
		m.log.Warn("stop gossip", "err", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var err error
	for range 5 { // the old sockets may take a moment to close
		if err = m.startLocked(ip); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return errors.Join(err, m.startLocked(from))
	}
	m.extra = known
	m.rejoinUntil = time.Now().Add(moveRejoinWindow)
	select {
	case m.kick <- struct{}{}:
	default:
	}
	return nil
}

// serfLog turns Serf's and memberlist's "[LEVEL] text" lines into slog
// records; their DEBUG and INFO chatter is kept at debug level.
type serfLog struct{ log *slog.Logger }

func (l serfLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(line, "[ERR]"):
		level = slog.LevelError
	case strings.HasPrefix(line, "[WARN]"):
		level = slog.LevelWarn
	}
	if i := strings.Index(line, "] "); i >= 0 && strings.HasPrefix(line, "[") {
		line = line[i+2:]
	}
	l.log.Log(context.Background(), level, line)
	return len(p), nil
}
