// Package netnstest builds test networks out of network namespaces: one
// namespace holding a bridge (the segment), and one namespace per test
// host attached to it by a veth pair. Tests that run real hosts (hostd
// processes, platform services) use it; everything it makes is removed
// when the test ends. It needs root.
package netnstest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/plinth-os/plinth/host/cnet"
)

// Segment is one L2 segment: a bridge in a namespace of its own.
type Segment struct {
	t      testing.TB
	prefix string // namespace and link name prefix
	bridge string // namespace holding the bridge
	net    string // first three octets of the hosts' IPv4 addresses
}

// Host is one namespace on the segment.
type Host struct {
	Name string
	// NS is the namespace's name (ip netns).
	NS string
	// Addr is the host's current IPv4 address.
	Addr string
	link string // the bridge's end of the veth
}

// New makes a segment whose hosts get addresses in subnet (three
// octets, "10.78.0"); it skips the test when not root. tag keeps the
// namespace names of different test packages apart.
func New(t testing.TB, tag, subnet string) *Segment {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	s := &Segment{t: t, prefix: fmt.Sprintf("%s%d", tag, os.Getpid()%100000), net: subnet}
	s.bridge = s.prefix + "-br"
	s.addNS(s.bridge)
	s.Run("ip", "-n", s.bridge, "link", "add", "br0", "type", "bridge")
	s.Run("ip", "-n", s.bridge, "link", "set", "br0", "up")
	return s
}

// Run runs a command and fails the test if it fails.
func (s *Segment) Run(args ...string) {
	s.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		s.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (s *Segment) addNS(name string) {
	s.Run("ip", "netns", "add", name)
	s.t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
}

// AddHost makes host n: a namespace with eth0 at <subnet>.<n>/24 on the
// segment, and loopback up.
func (s *Segment) AddHost(n int) *Host {
	h := &Host{
		Name: fmt.Sprintf("h%d", n), NS: fmt.Sprintf("%s-h%d", s.prefix, n),
		link: fmt.Sprintf("%sh%d", s.prefix, n), Addr: fmt.Sprintf("%s.%d", s.net, n),
	}
	s.addNS(h.NS)
	s.Run("ip", "link", "add", "eth0", "netns", h.NS, "type", "veth", "peer", "name", h.link, "netns", s.bridge)
	s.Run("ip", "-n", s.bridge, "link", "set", h.link, "master", "br0", "up")
	s.Run("ip", "-n", h.NS, "link", "set", "lo", "up")
	s.Run("ip", "-n", h.NS, "addr", "add", h.Addr+"/24", "dev", "eth0")
	s.Run("ip", "-n", h.NS, "link", "set", "eth0", "up")
	return h
}

// MoveHost gives h the address <subnet>.<n> instead of its current one.
func (s *Segment) MoveHost(h *Host, n int) {
	addr := fmt.Sprintf("%s.%d", s.net, n)
	// Deleted first: deleting a subnet's primary address would take the
	// new one, a secondary in the same subnet, along.
	s.Run("ip", "-n", h.NS, "addr", "del", h.Addr+"/24", "dev", "eth0")
	s.Run("ip", "-n", h.NS, "addr", "add", addr+"/24", "dev", "eth0")
	h.Addr = addr
}

// Command returns cmd to run inside h's namespace. It uses nsenter, not
// ip netns exec, which would also remount /sys for the namespace and
// hide the cgroup mounts that jobs need.
func (s *Segment) Command(h *Host, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.NS, name}, args...)...)
}

// DialContext dials from inside h's namespace, for HTTP clients.
func (s *Segment) DialContext(h *Host) func(ctx context.Context, network, addr string) (net.Conn, error) {
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { ns.Close() })
	return cnet.DialContextIn(ns, &net.Dialer{Timeout: 5 * time.Second})
}

// InOwnNetns runs the calling test again in a process of its own, in new
// network and mount namespaces, so that it can make bridges and mounts
// freely; it returns true in that process, false in the parent after
// the child passed.
func InOwnNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv("PLINTH_OWN_NETNS") == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	cmd := exec.Command("unshare", "--net", "--mount", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), "PLINTH_OWN_NETNS="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v in its own namespaces:\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("the test did not run in its own namespaces:\n%s", out)
	}
	return false
}
