// Package cnet is the container network of one host: a bridge with the
// host's slice of the cluster's container range, one network namespace
// and veth pair per job, an address for each job, ports published from
// the host to jobs, and a VXLAN overlay that joins the bridges of all
// hosts into one L2 segment, so that jobs on different hosts reach each
// other by address.
//
// It does not choose the host's slice or learn the other hosts: hostd
// does, from Serf, and calls SetPeers.
package cnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Config says how the host's container network is laid out.
type Config struct {
	// Bridge is the bridge's name. Default "plinth0".
	Bridge string
	// Range is the cluster's container range, the same on every host.
	// Default 10.200.0.0/16.
	Range netip.Prefix
	// Subnet is this host's slice of Range, unique in the cluster: its
	// jobs get addresses in it, the bridge its first address.
	Subnet netip.Prefix
	// NetnsDir holds the jobs' network namespaces (bind mounts; a tmpfs).
	NetnsDir string
	// VTEP is this host's address for the overlay's VXLAN packets; zero
	// disables the overlay.
	VTEP netip.Addr
	// VNI and Port are the overlay's VXLAN network identifier and UDP
	// port. Defaults 4200 and 4789.
	VNI, Port int
}

// DefaultRange is the cluster's container range unless configured.
var DefaultRange = netip.MustParsePrefix("10.200.0.0/16")

// vxlanName is the overlay device, a port of the bridge.
const vxlanName = "plinth-vx"

// Network is a host's container network.
type Network struct {
	cfg Config
	gw  netip.Addr

	mu    sync.Mutex
	peers map[netip.Addr]bool
}

// New creates (or finds, after a hostd restart) the bridge and the
// overlay device and turns on forwarding.
func New(cfg Config) (*Network, error) {
	if cfg.Bridge == "" {
		cfg.Bridge = "plinth0"
	}
	if !cfg.Range.IsValid() {
		cfg.Range = DefaultRange
	}
	if cfg.VNI == 0 {
		cfg.VNI = 4200
	}
	if cfg.Port == 0 {
		cfg.Port = 4789
	}
	if !cfg.Subnet.IsValid() || !cfg.Range.Contains(cfg.Subnet.Addr()) || cfg.Subnet.Bits() < cfg.Range.Bits() || cfg.Subnet.Bits() > 30 {
		return nil, fmt.Errorf("container subnet %v must lie inside %v and hold at least 4 addresses", cfg.Subnet, cfg.Range)
	}
	if err := os.MkdirAll(cfg.NetnsDir, 0o755); err != nil {
		return nil, err
	}
	n := &Network{cfg: cfg, gw: cfg.Subnet.Masked().Addr().Next(), peers: map[netip.Addr]bool{}}
	br, err := n.bridge()
	if err != nil {
		return nil, err
	}
	if cfg.VTEP.IsValid() {
		if err := n.vxlan(br); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return nil, fmt.Errorf("enable forwarding: %w", err)
	}
	return n, nil
}

// Gateway is the bridge's address, the jobs' default route.
func (n *Network) Gateway() netip.Addr { return n.gw }

// bridge makes the bridge with the gateway address. The address's prefix
// is the whole range: jobs on other hosts are neighbours on the overlay.
func (n *Network) bridge() (netlink.Link, error) {
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = n.cfg.Bridge
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", n.cfg.Bridge, err)
		}
		if br, err = netlink.LinkByName(n.cfg.Bridge); err != nil {
			return nil, err
		}
	}
	// A bridge without a MAC of its own takes its ports' lowest, so every
	// job started or stopped could change the gateway's MAC, and jobs
	// here and hosts across the overlay would send to the old one until
	// their neighbour entries went stale: seconds of lost replies. Set,
	// it stays; derived from the gateway's address, it is the same after
	// a reboot too.
	if mac := MACFor(n.gw); !bytes.Equal(br.Attrs().HardwareAddr, mac) {
		if err := netlink.LinkSetHardwareAddr(br, mac); err != nil {
			return nil, fmt.Errorf("set %s's MAC: %w", n.cfg.Bridge, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.gw.AsSlice(), Mask: net.CIDRMask(n.cfg.Range.Bits(), 32)}}
	if err := netlink.AddrReplace(br, addr); err != nil {
		return nil, fmt.Errorf("address %s on %s: %w", addr, n.cfg.Bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, err
	}
	return br, nil
}

// vxlan makes the overlay device and puts it on the bridge. Learning is
// off: the other hosts' VTEPs are given by SetPeers, and frames for
// unknown destinations go to all of them.
func (n *Network) vxlan(br netlink.Link) error {
	vx, err := netlink.LinkByName(vxlanName)
	if err == nil {
		if v, ok := vx.(*netlink.Vxlan); !ok || !v.SrcAddr.Equal(n.cfg.VTEP.AsSlice()) || v.VxlanId != n.cfg.VNI {
			// The host's address changed since: make it again.
			netlink.LinkDel(vx)
			err = errors.New("recreate")
		}
	}
	if err != nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = vxlanName
		attrs.MTU = overlayMTU(n.cfg.VTEP)
		if err := netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: attrs, VxlanId: n.cfg.VNI, SrcAddr: n.cfg.VTEP.AsSlice(),
			Port: n.cfg.Port, Learning: false}); err != nil {
			return fmt.Errorf("create overlay device: %w", err)
		}
		if vx, err = netlink.LinkByName(vxlanName); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetMaster(vx, br); err != nil {
		return fmt.Errorf("overlay device on %s: %w", n.cfg.Bridge, err)
	}
	return netlink.LinkSetUp(vx)
}

// overlayMTU is the jobs' MTU over a VTEP of vtep's family: 1500 less
// VXLAN's encapsulation (Ethernet, VXLAN and UDP headers, 30 bytes) and
// the outer IP header (20 bytes for IPv4, 40 for IPv6).
func overlayMTU(vtep netip.Addr) int {
	if vtep.Is6() && !vtep.Is4In6() {
		return 1430
	}
	return 1450
}

// SetVTEP moves the overlay to a new local address (the host's advertised
// address changed): the VXLAN device is made again, and the peers must be
// set again after.
func (n *Network) SetVTEP(vtep netip.Addr) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if vtep == n.cfg.VTEP {
		return nil
	}
	n.cfg.VTEP = vtep
	n.peers = map[netip.Addr]bool{}
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		return err
	}
	return n.vxlan(br)
}

// SetPeers makes the overlay reach exactly these hosts (their VTEP
// addresses): one all-zero FDB entry each, so broadcast and unknown
// frames are copied to every peer.
func (n *Network) SetPeers(vteps []netip.Addr) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.cfg.VTEP.IsValid() {
		return nil
	}
	vx, err := netlink.LinkByName(vxlanName)
	if err != nil {
		return err
	}
	want := map[netip.Addr]bool{}
	for _, v := range vteps {
		if v != n.cfg.VTEP {
			want[v] = true
		}
	}
	var errs []error
	fdb := func(v netip.Addr) *netlink.Neigh {
		return &netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: v.AsSlice(), HardwareAddr: net.HardwareAddr{0, 0, 0, 0, 0, 0}}
	}
	for v := range want {
		if !n.peers[v] {
			if err := netlink.NeighAppend(fdb(v)); err != nil && !errors.Is(err, unix.EEXIST) {
				errs = append(errs, fmt.Errorf("overlay peer %s: %w", v, err))
				continue
			}
			n.peers[v] = true
		}
	}
	for v := range n.peers {
		if !want[v] {
			netlink.NeighDel(fdb(v))
			delete(n.peers, v)
		}
	}
	return errors.Join(errs...)
}

// Allocate returns a free job address in the host's subnet: not the
// network, gateway or broadcast address, nor one in used.
func (n *Network) Allocate(used []netip.Addr) (netip.Addr, error) {
	taken := map[netip.Addr]bool{}
	for _, a := range used {
		taken[a] = true
	}
	sub := n.cfg.Subnet.Masked()
	for a := n.gw.Next(); sub.Contains(a); a = a.Next() {
		if !sub.Contains(a.Next()) {
			break // the broadcast address
		}
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("container subnet %v is full", sub)
}

// NetnsPath is where job id's network namespace is mounted.
func (n *Network) NetnsPath(id string) string { return filepath.Join(n.cfg.NetnsDir, id) }

// Attach makes job id's network namespace with eth0 at ip on the bridge
// (through a veth pair) and a default route through the gateway, and
// returns its path for the container runtime. An existing one is kept.
func (n *Network) Attach(id string, ip netip.Addr) (string, error) {
	path := n.NetnsPath(id)
	if isMount(path) {
		return path, nil
	}
	if err := n.attach(id, path, ip); err != nil {
		n.Detach(id)
		return "", fmt.Errorf("job %s network: %w", id, err)
	}
	return path, nil
}

func (n *Network) attach(id, path string, ip netip.Addr) error {
	ns, err := newNamedNetns(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		return err
	}
	host, peer := vethName(id), vethName(id)+"p"
	attrs := netlink.NewLinkAttrs()
	n.mu.Lock()
	mtu := overlayMTU(n.cfg.VTEP)
	n.mu.Unlock()
	attrs.Name, attrs.MasterIndex, attrs.MTU = host, br.Attrs().Index, mtu
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peer, PeerNamespace: netlink.NsFd(ns)}); err != nil {
		return fmt.Errorf("create veth %s: %w", host, err)
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // only rtnetlink: the image has no xfrm
	if err != nil {
		return err
	}
	defer h.Close()
	pl, err := h.LinkByName(peer)
	if err != nil {
		return err
	}
	if err := h.LinkSetName(pl, "eth0"); err != nil {
		return err
	}
	// The MAC follows from the address: a job that gets the address of
	// one just removed also gets its MAC, so the neighbour entries other
	// hosts and jobs keep for the address stay right. With a random MAC
	// they would send to the old one until their entry went stale (about
	// 5 s of lost connections after each deploy).
	if err := h.LinkSetHardwareAddr(pl, MACFor(ip)); err != nil {
		return fmt.Errorf("set eth0's MAC: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(n.cfg.Range.Bits(), 32)}}
	if err := h.AddrAdd(pl, addr); err != nil {
		return err
	}
	lo, err := h.LinkByName("lo")
	if err == nil {
		h.LinkSetUp(lo)
	}
	if err := h.LinkSetUp(pl); err != nil {
		return err
	}
	return h.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: n.gw.AsSlice()})
}

// MACFor is the MAC of a job's eth0 at ip, and of the bridge at the
// gateway's: locally administered, unicast, 02:42 and the address's
// four bytes.
func MACFor(ip netip.Addr) net.HardwareAddr {
	b := ip.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
}

// Detach deletes job id's namespace and, with it, its veth pair.
func (n *Network) Detach(id string) error {
	netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vethName(id)}})
	path := n.NetnsPath(id)
	unix.Unmount(path, unix.MNT_DETACH)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// vethName is the host side of a job's veth: "pj" and 11 hex digits of
// a hash of the id, within the 15-character limit of link names.
func vethName(id string) string {
	var h uint64 = 14695981039346656037 // FNV-1a
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return fmt.Sprintf("pj%011x", h&0xfffffffffff)
}

// newNamedNetns makes a job's network namespace and keeps it at path with
// a bind mount, without moving the calling goroutine's thread into it for
// longer than the unshare and its setup. The namespace is the job's alone,
// so any of its processes may bind any port: a user-namespaced job's root
// could not otherwise bind below 1024, its capabilities counting only in
// namespaces its user namespace owns, and this one is the host's.
func newNamedNetns(path string) (netns.NsHandle, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return 0, err
	}
	f.Close()
	var ns netns.NsHandle
	err = inNamespace(func() (err error) {
		ns, err = netns.New() // unshares this thread's network namespace
		return err
	}, func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte("0"), 0o644); err != nil {
			return fmt.Errorf("open low ports: %w", err)
		}
		return unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "", unix.MS_BIND, "")
	})
	if err != nil {
		if ns != 0 {
			ns.Close()
		}
		os.Remove(path)
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return ns, nil
}

// DialContextIn returns a DialContext function that dials with d from
// inside the network namespace ns. A socket belongs to the namespace it
// was made in, whichever thread uses it later, so only the dial needs a
// thread switched into ns.
func DialContextIn(ns netns.NsHandle, d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNamespace(func() error { return netns.Set(ns) }, func() (err error) {
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// inNamespace runs f on a thread of its own that enter has moved into
// another network namespace, then moves the thread back. A thread that
// cannot be moved back (or whose enter failed half-way) stays locked and
// ends with its goroutine, so no other goroutine runs in the wrong
// namespace.
func inNamespace(enter, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			errc <- err
			return
		}
		err = f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// isMount reports whether path is a mount point (a kept namespace).
func isMount(path string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(path, &st) != nil || unix.Stat(filepath.Dir(path), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
