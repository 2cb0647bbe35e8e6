package vmtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/plinth-os/plinth/host/cnet"
	"github.com/plinth-os/plinth/internal/testwait"
)

// NetnsPrefix starts the name of every network namespace the harness
// creates, followed by the creating process's PID and a sequence number.
const NetnsPrefix = "plinth-vmt-"

var netnsSeq atomic.Int64

// Netns is a named network namespace created by the harness. VMs that share
// a Segment run inside one, so that their multicast traffic never leaves it.
type Netns struct {
	// Name is the namespace's name for ip netns (/run/netns/Name).
	Name string

	mu       sync.Mutex
	segments int
}

// CreateNetns creates a uniquely named network namespace with its loopback
// up. Delete it with Delete; tests use NewNetns, which does that on cleanup.
func CreateNetns() (*Netns, error) {
	name := fmt.Sprintf("%s%d-%d", NetnsPrefix, os.Getpid(), netnsSeq.Add(1))
	if err := ip("netns", "add", name); err != nil {
		return nil, err
	}
	ns := &Netns{Name: name}
	// QEMU's multicast sockets send and join on 127.0.0.1. That needs lo up,
	// and nothing else: no multicast flag or route.
	if err := ip("-n", name, "link", "set", "lo", "up"); err != nil {
		return nil, errors.Join(err, ns.Delete())
	}
	return ns, nil
}

// NewNetns creates a network namespace and deletes it when the test ends
// (after the VMs started later in the test are closed).
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	ns, err := CreateNetns()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

// Delete deletes the namespace. It disappears once the last process in it
// has exited.
func (n *Netns) Delete() error {
	return ip("netns", "delete", n.Name)
}

// Exists reports whether the namespace is still registered with ip netns.
func (n *Netns) Exists() bool {
	_, err := os.Stat("/run/netns/" + n.Name)
	return err == nil
}

// Segment returns a new L2 segment inside n, separate from n's other
// segments.
func (n *Netns) Segment() *Segment {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.segments++
	return &Segment{
		Netns: n.Name,
		Group: fmt.Sprintf("230.0.0.1:%d", segmentBasePort+n.segments),
	}
}

// segmentBasePort is arbitrary: every segment's port is private to its netns.
const segmentBasePort = 40000

// Segment is one Ethernet segment shared by any number of VMs: QEMU's
// multicast socket netdev, every VM's frames go to every other VM. All VMs
// on a segment run in its Netns, which Start arranges.
type Segment struct {
	// Netns is the network namespace the segment's VMs run in.
	Netns string
	// Group is the multicast group address and UDP port of the segment.
	Group string
}

// HostPort connects the segment to a tap device named name in its
// namespace, up and without addresses, until the test ends: a QEMU
// without a machine joins the segment's socket and the tap in one hub.
// Programs of the test (a DHCP server, a router) then run on the tap in
// the namespace, as on the VMs' Ethernet.
func (s *Segment) HostPort(t testing.TB, name string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", s.Netns, "qemu-system-x86_64",
		"-machine", "none", "-nodefaults", "-no-user-config", "-display", "none",
		"-netdev", "socket,id=seg,mcast="+s.Group+",localaddr=127.0.0.1",
		"-netdev", "tap,id=tap,ifname="+name+",script=no,downscript=no",
		"-netdev", "hubport,id=p1,hubid=0,netdev=seg",
		"-netdev", "hubport,id=p2,hubid=0,netdev=tap")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	testwait.For(t, "segment port "+name, 10*time.Second, func() error {
		select {
		case <-exited:
			t.Fatalf("segment port %s: QEMU exited: %s", name, out.String())
		default:
		}
		return ip("-n", s.Netns, "link", "set", name, "up")
	})
}

// NewSegment creates a segment in a new network namespace, deleted when
// the test ends.
func NewSegment(t testing.TB) *Segment {
	t.Helper()
	return NewNetns(t).Segment()
}

// LinkEnd is one end of a point-to-point Ethernet link between two VMs: a
// connected unix stream socket pair, one end per QEMU (-netdev stream with
// the socket passed as a file descriptor). Being connected before either
// QEMU starts, the link does not depend on start order. Start consumes the
// end: each end serves one VM once.
type LinkEnd struct {
	mu   sync.Mutex
	file *os.File
}

// NewLink returns the two ends of a new point-to-point link.
func NewLink() (a, b *LinkEnd, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("link socketpair: %w", err)
	}
	a = &LinkEnd{file: os.NewFile(uintptr(fds[0]), "link-a")}
	b = &LinkEnd{file: os.NewFile(uintptr(fds[1]), "link-b")}
	return a, b, nil
}

// take hands the socket to a starting VM, which closes it once QEMU has
// inherited it.
func (e *LinkEnd) take() (*os.File, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.file == nil {
		return nil, errors.New("link end already used or closed")
	}
	f := e.file
	e.file = nil
	return f, nil
}

// Close releases an end that no VM used.
func (e *LinkEnd) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.file == nil {
		return nil
	}
	err := e.file.Close()
	e.file = nil
	return err
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago
// and that it has not returned before. The VMs of a segment forward
// ports on the loopback of the segment's namespace, not this one's,
// where a port closed here may well be handed out again: two VMs given
// the same one failed to start about one run in a hundred.
func FreePort() (int, error) {
	givenMu.Lock()
	defer givenMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free loopback port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !given[port] {
			given[port] = true
			return port, nil
		}
	}
	return 0, errors.New("find a free loopback port: every one tried was handed out before")
}

var (
	givenMu sync.Mutex
	given   = map[int]bool{}
)

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// DialContext dials addr from inside the VM's network namespace (see
// Config.Netns), where its forwarded ports (HostAddr) are; without one, it
// dials from the caller's.
func (v *VM) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{}
	if v.cfg.Netns == "" {
		return d.DialContext(ctx, network, addr)
	}
	target, err := netns.GetFromName(v.cfg.Netns)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	return cnet.DialContextIn(target, d)(ctx, network, addr)
}
