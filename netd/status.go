package netd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"sort"
	"time"

	"github.com/plinth-os/plinth/netd/dhcp6"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// SocketName is the status socket's file name in Config.RunDir.
const SocketName = "netd.sock"

// ShutdownMarker is the file init creates in Config.RunDir before it stops
// services for a poweroff or reboot. A netd that stops while it exists
// releases its DHCP leases; one that stops without it (a restart, an
// upgrade) keeps them for its successor.
const ShutdownMarker = "shutting-down"

// Status is what netd reports: GET /v1/status on its socket.
type Status struct {
	Ready         bool         `json:"ready"`
	Links         []LinkStatus `json:"links"`
	DNS           []string     `json:"dns"`
	Search        []string     `json:"search"`
	Reconciles    int          `json:"reconciles"`
	LastReconcile time.Time    `json:"last_reconcile"`
	LastError     string       `json:"last_error,omitempty"`
}

// LinkStatus is one managed link.
type LinkStatus struct {
	Name      string       `json:"name"`
	Kind      string       `json:"kind"` // interface, vlan, bond, bridge
	Present   bool         `json:"present"`
	MAC       string       `json:"mac,omitempty"`
	Up        bool         `json:"up"`      // administratively
	Carrier   bool         `json:"carrier"` // lower layer up
	MTU       int          `json:"mtu,omitempty"`
	Master    string       `json:"master,omitempty"`
	Addresses []string     `json:"addresses"`
	Required  bool         `json:"required,omitempty"`
	DHCP      *DHCPStatus  `json:"dhcp,omitempty"`
	DHCP6     *DHCP6Status `json:"dhcp6,omitempty"`
	Error     string       `json:"error,omitempty"`

	addr Addressing // as the reconcile pass applied it, for readiness
}

// DHCPStatus is a link's DHCP client state.
type DHCPStatus struct {
	State       string    `json:"state"`
	Address     string    `json:"address,omitempty"`
	Router      string    `json:"router,omitempty"`
	Server      string    `json:"server,omitempty"`
	DNS         []string  `json:"dns,omitempty"`
	ConfigURL   string    `json:"config_url,omitempty"`
	Expires     time.Time `json:"expires,omitzero"`
	RenewAt     time.Time `json:"renew_at,omitzero"`
	Attempts    int       `json:"attempts,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// DHCP6Status is a link's DHCPv6 client state.
type DHCP6Status = dhcp6.Status

// Status returns a copy of the current status.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	st := d.status
	st.Links = append([]LinkStatus(nil), d.status.Links...)
	clients := d.clients
	clients6 := maps.Clone(d.client6)
	d.mu.Unlock()
	for i := range st.Links {
		if c := clients6[st.Links[i].Name]; c != nil {
			s := c.Status()
			st.Links[i].DHCP6 = &s
		}
		c := clients[st.Links[i].Name]
		if c == nil {
			continue
		}
		cs := c.Status()
		ds := &DHCPStatus{State: string(cs.State), Attempts: cs.Attempts, LastError: cs.LastError, NextAttempt: cs.NextAttempt}
		if l := cs.Lease; l != nil {
			ds.Address, ds.Router, ds.Server = l.Address.String(), addrString(l.Router), addrString(l.Server)
			ds.ConfigURL, ds.Expires, ds.RenewAt = l.ConfigURL, l.Expires(), l.RenewAt()
			for _, s := range l.DNS {
				ds.DNS = append(ds.DNS, s.String())
			}
		}
		st.Links[i].DHCP = ds
	}
	return st
}

func (d *Daemon) recordReconcile(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status.Reconciles++
	d.status.LastReconcile = time.Now()
	d.status.LastError = ""
	if err != nil {
		d.status.LastError = err.Error()
	}
}

// updateStatus records the links as the reconcile pass left them.
func (d *Daemon) updateStatus(ms []*managed) {
	masters := map[int]string{}
	for _, m := range ms {
		if m.link != nil {
			masters[m.link.Attrs().Index] = m.name
		}
	}
	links := make([]LinkStatus, 0, len(ms))
	for _, m := range ms {
		ls := LinkStatus{Name: m.name, Kind: m.kind, Required: m.addr.Required, Master: m.master, Addresses: []string{}, addr: m.addr}
		if m.err != nil {
			ls.Error = m.err.Error()
		}
		if m.link != nil {
			if l, err := d.nl.LinkByIndex(m.link.Attrs().Index); err == nil {
				a := l.Attrs()
				ls.Present, ls.MAC, ls.MTU = true, a.HardwareAddr.String(), a.MTU
				ls.Up = a.Flags&net.FlagUp != 0
				ls.Carrier = a.RawFlags&unix.IFF_LOWER_UP != 0
				if addrs, err := d.nl.AddrList(l, netlink.FAMILY_ALL); err == nil {
					for _, ad := range addrs {
						// An IPv6 address still in (or failed) duplicate
						// address detection cannot be used yet: the kernel
						// neither sends from it nor binds to it.
						if ad.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
							continue
						}
						if p, ok := toPrefix(ad.IPNet); ok && p.Addr().IsGlobalUnicast() {
							ls.Addresses = append(ls.Addresses, p.String())
						}
					}
				}
			}
		}
		links = append(links, ls)
	}
	sort.SliceStable(links, func(i, j int) bool { return links[i].Name < links[j].Name })
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status.Links = links
	servers, search := d.resolvers(d.leases, d.leases6, d.ra)
	d.status.DNS, d.status.Search = nil, search
	for _, s := range servers {
		d.status.DNS = append(d.status.DNS, s.String())
	}
}

// serveStatus serves the status API on a unix socket, readable by root
// only (it names addresses and the config URL).
func (d *Daemon) serveStatus(path string) (stop func(), err error) {
	os.Remove(path) // a stale socket from a previous run
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d.Status())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return func() { srv.Close(); os.Remove(path) }, nil
}

// Client reads a netd's status over its socket.
type Client struct {
	hc *http.Client
}

// NewClient returns a client for the netd socket at path (usually
// /run/plinth/netd.sock).
func NewClient(path string) *Client {
	return &Client{hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://netd/v1/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ECONNREFUSED) {
			return st, fmt.Errorf("netd is not running (%w)", err)
		}
		return st, fmt.Errorf("netd status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("netd status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decode netd status: %w", err)
	}
	return st, nil
}

func addrString(a interface {
	IsValid() bool
	String() string
}) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
