package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// OptionConfigURL is the site-specific DHCP option (RFC 2132 section 2
// leaves 128-254 to sites) whose string value is the URL of the machine's
// plinth config.
const OptionConfigURL = 224

// defaultLeaseTime stands in for a lease time the server left out of its
// ACK (RFC 2131 requires it). busybox udhcpc picks the same hour.
const defaultLeaseTime = time.Hour

// Lease is an address and its configuration, as a server acknowledged it.
type Lease struct {
	Interface string
	MAC       net.HardwareAddr
	// Address is the leased address (yiaddr) with the subnet mask's length.
	Address    netip.Prefix
	Router     netip.Addr
	DNS        []netip.Addr
	DomainName string
	Search     []string
	Hostname   string
	MTU        int
	NextServer netip.Addr
	BootFile   string
	// ConfigURL is option OptionConfigURL.
	ConfigURL string
	// Server is the server identifier: renewals go to it.
	Server netip.Addr

	// Acquired is when the REQUEST that the server acknowledged was sent;
	// the durations count from it (RFC 2131 section 4.4.1).
	Acquired time.Time
	Duration time.Duration
	Renew    time.Duration // T1
	Rebind   time.Duration // T2
}

// Expires is when the address must no longer be used.
func (l Lease) Expires() time.Time { return l.Acquired.Add(l.Duration) }

// RenewAt is when the client asks the server that granted the lease to
// extend it.
func (l Lease) RenewAt() time.Time { return l.Acquired.Add(l.Renew) }

// RebindAt is when the client gives up on that server and asks any server.
func (l Lease) RebindAt() time.Time { return l.Acquired.Add(l.Rebind) }

// leaseFromACK reads a lease out of a server's ACK to a REQUEST sent at sent.
func leaseFromACK(iface string, mac net.HardwareAddr, ack *dhcpv4.DHCPv4, sent time.Time) (Lease, error) {
	addr, ok := addrFrom(ack.YourIPAddr)
	if !ok || addr.IsUnspecified() {
		return Lease{}, errors.New("ACK carries no address")
	}
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	ones, bits := mask.Size()
	if bits != 32 {
		return Lease{}, fmt.Errorf("ACK for %s has a non-contiguous subnet mask %s", addr, net.IP(mask))
	}
	l := Lease{
		Interface:  iface,
		MAC:        mac,
		Address:    netip.PrefixFrom(addr, ones),
		DomainName: ack.DomainName(),
		Hostname:   ack.HostName(),
		BootFile:   ack.BootFileNameOption(),
		ConfigURL:  strings.TrimRight(dhcpv4.GetString(dhcpv4.GenericOptionCode(OptionConfigURL), ack.Options), "\x00"),
		Acquired:   sent,
		Duration:   ack.IPAddressLeaseTime(defaultLeaseTime),
	}
	if routers := ack.Router(); len(routers) > 0 {
		l.Router, _ = addrFrom(routers[0])
	}
	for _, ip := range ack.DNS() {
		if a, ok := addrFrom(ip); ok {
			l.DNS = append(l.DNS, a)
		}
	}
	if search := ack.DomainSearch(); search != nil {
		l.Search = search.Labels
	}
	if mtu, err := dhcpv4.GetUint16(dhcpv4.OptionInterfaceMTU, ack.Options); err == nil {
		l.MTU = int(mtu)
	}
	if next, ok := addrFrom(ack.ServerIPAddr); ok && !next.IsUnspecified() {
		l.NextServer = next
	}
	if l.BootFile == "" {
		l.BootFile = ack.BootFileName
	}
	l.Server, _ = addrFrom(ack.ServerIdentifier())

	// RFC 2131 section 4.4.5 defaults; also used when the server's T1 and
	// T2 would not come in order before the lease ends.
	l.Renew = ack.IPAddressRenewalTime(l.Duration / 2)
	l.Rebind = ack.IPAddressRebindingTime(l.Duration / 8 * 7)
	if l.Renew <= 0 || l.Renew > l.Rebind || l.Rebind > l.Duration {
		l.Renew, l.Rebind = l.Duration/2, l.Duration/8*7
	}
	return l, nil
}

func addrFrom(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip.To4())
	return a, ok
}

// leaseFile is the persisted form of a Lease: JSON, with the MAC readable.
type leaseFile struct {
	Lease
	MAC string
}

// saveLease writes l to path so that a crash leaves either the old file or
// the new one, never a torn one.
func saveLease(path string, l Lease) error {
	b, err := json.MarshalIndent(leaseFile{Lease: l, MAC: l.MAC.String()}, "", "\t")
	if err != nil {
		return fmt.Errorf("encode lease: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create lease dir: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("create lease file: %w", err)
	}
	defer os.Remove(f.Name()) // fails harmlessly after the rename
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	// Without the sync, a power cut after the rename can leave an empty file.
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("replace lease file: %w", err)
	}
	return nil
}

// loadLease reads a lease saved by saveLease; it returns nil when there is
// none.
func loadLease(path string) (*Lease, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lease: %w", err)
	}
	var f leaseFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("decode lease %s: %w", path, err)
	}
	mac, err := net.ParseMAC(f.MAC)
	if err != nil {
		return nil, fmt.Errorf("decode lease %s: %w", path, err)
	}
	f.Lease.MAC = mac
	return &f.Lease, nil
}
