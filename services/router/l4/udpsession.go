package l4

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/services/router/backend"
)

// maxDatagram holds any UDP payload.
const maxDatagram = 1<<16 - 1

// oobSize holds the packet-info control message of either family.
var oobSize = max(len(ipv4.NewControlMessage(ipv4.FlagDst)), len(ipv6.NewControlMessage(ipv6.FlagDst)))

// epoch makes session activity times monotonic nanoseconds that fit an
// atomic int64.
var epoch = time.Now()

func now() int64 { return int64(time.Since(epoch)) }

// udpPort is one served socket and its sessions, by client address.
type udpPort struct {
	p    *UDPProxy
	conn *net.UDPConn
	v6   bool // an AF_INET6 socket, which may also carry IPv4

	mu       sync.Mutex
	sessions map[netip.AddrPort]*udpSession
	closed   bool // endAll ran: no new sessions
}

// newUDPPort asks the kernel to say, with each datagram, the address it
// was sent to, so that a socket bound to a wildcard address can answer
// from that address.
func newUDPPort(p *UDPProxy, conn *net.UDPConn) (*udpPort, error) {
	pt := &udpPort{p: p, conn: conn, sessions: map[netip.AddrPort]*udpSession{}}
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var domain int
	cerr := rc.Control(func(fd uintptr) {
		domain, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	})
	if err = errors.Join(cerr, err); err != nil {
		return nil, fmt.Errorf("socket family of %s: %w", conn.LocalAddr(), err)
	}
	pt.v6 = domain == unix.AF_INET6
	if pt.v6 {
		err = ipv6.NewPacketConn(conn).SetControlMessage(ipv6.FlagDst, true)
	} else {
		err = ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst, true)
	}
	if err != nil {
		return nil, fmt.Errorf("packet info on %s: %w", conn.LocalAddr(), err)
	}
	return pt, nil
}

// udpSession is one client address and the backend it sticks to.
type udpSession struct {
	port    *udpPort
	client  netip.AddrPort
	dst     []byte // the packet info the client's datagrams come with
	dstIP   net.IP // the local address they were sent to
	reply   []byte // the control message that sends from that address
	service string
	idle    time.Duration
	b       *backend.Backend
	conn    *net.UDPConn // connected to b
	last    atomic.Int64 // now() of the last datagram either way

	set   *backend.Set // the last set b was seen in; Serve's goroutine only
	ended bool         // under port.mu
}

// forward sends one client datagram on to its session's backend,
// starting a session (or moving it, when its backend left the set or
// the client now sends to another local address) as needed.
func (pt *udpPort) forward(pkt, oob []byte, from netip.AddrPort) {
	pt.mu.Lock()
	s := pt.sessions[from]
	if s != nil {
		// Under the lock, so that an expiry deciding now sees it.
		s.last.Store(now())
	}
	pt.mu.Unlock()
	if s != nil && (!pt.sameDestination(s, oob) || !s.inSet()) {
		pt.end(s)
		s = nil
	}
	if s == nil {
		if s = pt.open(from, oob); s == nil {
			return
		}
	}
	if _, err := s.conn.Write(pkt); err != nil {
		// The backend refused an earlier datagram (ICMP): this one goes
		// to the backend a new session picks.
		pt.end(s)
		if s = pt.open(from, oob); s != nil {
			s.conn.Write(pkt)
		}
	}
}

// sameDestination reports whether oob, a client datagram's packet info,
// names the local address of s's first. The bytes are compared first:
// they differ without the address changing only for datagrams queued
// before the socket was asked for packet info.
func (pt *udpPort) sameDestination(s *udpSession, oob []byte) bool {
	if bytes.Equal(s.dst, oob) {
		return true
	}
	dst, _, err := pt.destination(oob)
	if err != nil || !dst.Equal(s.dstIP) {
		return false
	}
	s.dst = bytes.Clone(oob)
	return true
}

// inSet reports whether s's backend can still take work. The set is
// compared by pointer first: it is rebuilt only when instances change.
func (s *udpSession) inSet() bool {
	set := s.port.p.Backends.Lookup(s.service)
	if set == s.set {
		return true
	}
	if set == nil || !slices.Contains(set.Backends, s.b) {
		return false
	}
	s.set = set
	return true
}

// open starts a session for client, or returns nil and drops the
// datagram: no route, no backend, or the port is full.
func (pt *udpPort) open(client netip.AddrPort, oob []byte) *udpSession {
	r := pt.p.route.Load()
	if r == nil {
		return nil
	}
	warn := func(msg string, args ...any) {
		pt.p.openLog.warn(pt.p.logger(), msg, append(args, "route", r.ID, "addr", pt.conn.LocalAddr())...)
	}
	pt.mu.Lock()
	full := len(pt.sessions) >= pt.p.maxSessions()
	pt.mu.Unlock()
	if full {
		pt.p.dropped.Add(1)
		warn("udp sessions full, dropping new clients", "max", pt.p.maxSessions())
		return nil
	}
	set := pt.p.Backends.Lookup(r.Service)
	b := set.Pick()
	if b == nil {
		return nil
	}
	addr, err := netip.ParseAddrPort(b.Addr)
	if err != nil {
		warn("backend address", "backend", b.ID, "err", err)
		return nil
	}
	dst, ifIndex, err := pt.destination(oob)
	if err != nil {
		pt.p.logger().Debug("packet info", "route", r.ID, "client", client, "err", err)
		return nil
	}
	b.Acquire()
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		b.Release()
		warn("udp session", "backend", b.Addr, "err", err)
		return nil
	}
	s := &udpSession{
		port: pt, client: client, dst: bytes.Clone(oob), dstIP: dst, reply: replyControl(dst, ifIndex),
		service: r.Service, idle: r.IdleTimeout, b: b, conn: conn, set: set,
	}
	s.last.Store(now())
	pt.mu.Lock()
	if pt.closed {
		pt.endLocked(s)
		pt.mu.Unlock()
		return nil
	}
	pt.sessions[client] = s
	pt.mu.Unlock()
	go s.relayReplies()
	return s
}

// destination is the local address a datagram was sent to, read from
// its packet info; nil when there is none.
func (pt *udpPort) destination(oob []byte) (net.IP, int, error) {
	if pt.v6 {
		var cm ipv6.ControlMessage
		err := cm.Parse(oob)
		return cm.Dst, cm.IfIndex, err
	}
	var cm ipv4.ControlMessage
	err := cm.Parse(oob)
	return cm.Dst, cm.IfIndex, err
}

// replyControl is the control message that sends replies from dst.
func replyControl(dst net.IP, ifIndex int) []byte {
	switch {
	case dst == nil:
		return nil
	case dst.To4() != nil:
		// Also on an IPv6 socket: Linux sends to IPv4-mapped clients
		// through IPv4 and reads IP_PKTINFO there.
		return (&ipv4.ControlMessage{Src: dst.To4()}).Marshal()
	case dst.IsLinkLocalUnicast():
		return (&ipv6.ControlMessage{Src: dst, IfIndex: ifIndex}).Marshal()
	default:
		return (&ipv6.ControlMessage{Src: dst}).Marshal()
	}
}

// relayReplies sends the backend's datagrams to the client until the
// session ends. The read deadline is moved only when it fires, not per
// datagram.
func (s *udpSession) relayReplies() {
	rc, err := s.conn.SyscallConn()
	if err != nil {
		s.port.end(s)
		return
	}
	s.conn.SetReadDeadline(time.Now().Add(s.idle))
	for {
		buf, n, err := readDatagram(rc)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if s.port.expire(s) {
				return
			}
			continue
		}
		if err != nil {
			// Closed by end, or the backend refused (ICMP).
			s.port.end(s)
			return
		}
		s.last.Store(now())
		_, _, err = s.port.conn.WriteMsgUDPAddrPort((*buf)[:n], s.reply, s.client)
		bufs.Put(buf)
		if errors.Is(err, net.ErrClosed) {
			s.port.end(s)
			return
		}
	}
}

// bufs holds datagram buffers for the sessions' readers. A buffer is
// taken only once a datagram is waiting, so that tens of thousands of
// quiet sessions do not each hold 64 KiB.
var bufs = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// readDatagram reads one datagram from a connected socket into a
// buffer from bufs, which the caller puts back.
func readDatagram(rc syscall.RawConn) (*[]byte, int, error) {
	var buf *[]byte
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		b := bufs.Get().(*[]byte)
		n, rerr = unix.Read(int(fd), *b)
		if rerr == unix.EAGAIN || rerr == unix.EINTR {
			bufs.Put(b)
			return false
		}
		buf = b
		return true
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		if buf != nil {
			bufs.Put(buf)
		}
		return nil, 0, err
	}
	return buf, n, nil
}

// expire ends s when it has been idle for its timeout and reports
// whether it ended; otherwise it moves the read deadline to when it
// would be. Deciding and ending under one lock keeps a datagram that
// forward is sending from finding its session closed.
func (pt *udpPort) expire(s *udpSession) bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if s.ended {
		return true
	}
	if since := time.Duration(now() - s.last.Load()); since < s.idle {
		s.conn.SetReadDeadline(time.Now().Add(s.idle - since))
		return false
	}
	pt.endLocked(s)
	return true
}

// end ends s once, whoever notices first.
func (pt *udpPort) end(s *udpSession) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.endLocked(s)
}

// endLocked forgets s, closes its socket and releases its backend, all
// under pt.mu: once endAll has taken the lock, no session it did not
// see is still to be released.
func (pt *udpPort) endLocked(s *udpSession) {
	if s.ended {
		return
	}
	s.ended = true
	if pt.sessions[s.client] == s {
		delete(pt.sessions, s.client)
	}
	s.conn.Close()
	s.b.Release()
}

// endAll ends every session, and those open would start later.
func (pt *udpPort) endAll() {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.closed = true
	for _, s := range pt.sessions {
		pt.endLocked(s)
	}
}

func (pt *udpPort) len() int {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return len(pt.sessions)
}
