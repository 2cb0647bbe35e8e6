package netd

import (
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/plinth-os/plinth/netd/dhcp"
	"github.com/plinth-os/plinth/netd/dhcp6"
)

// ResolvConfName is the file netd writes in RunDir; the image's
// /etc/resolv.conf links to it.
const ResolvConfName = "resolv.conf"

// writeResolvConf writes the configured DNS servers and search domains,
// then those of the DHCPv4 and then DHCPv6 leases (each in link-name
// order), then those routers
// advertised (in link-index order), without duplicates. The file is
// replaced atomically and only when its contents change.
func (d *Daemon) writeResolvConf(leases map[string]dhcp.Lease, leases6 map[string]dhcp6.Lease, ra raState) error {
	servers, search := d.resolvers(leases, leases6, ra)
	var b bytes.Buffer
	b.WriteString("# written by plinth netd\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(search) > 0 {
		b.WriteString("search")
		for _, s := range search {
			b.WriteString(" " + s)
		}
		b.WriteString("\n")
	}
	path := filepath.Join(d.cfg.RunDir, ResolvConfName)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, b.Bytes()) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	d.log.Info("resolv.conf written", "servers", len(servers), "search", len(search))
	return nil
}

func (d *Daemon) resolvers(leases map[string]dhcp.Lease, leases6 map[string]dhcp6.Lease, ra raState) (servers []netip.Addr, search []string) {
	servers = slices.Clone(d.cfg.DNS)
	search = slices.Clone(d.cfg.Search)
	names := make([]string, 0, len(leases))
	for n := range leases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		l := leases[n]
		for _, s := range l.DNS {
			if !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
		domains := l.Search
		if l.DomainName != "" {
			domains = append([]string{l.DomainName}, domains...)
		}
		for _, s := range domains {
			if !slices.Contains(search, s) {
				search = append(search, s)
			}
		}
	}
	for _, n := range slices.Sorted(maps.Keys(leases6)) {
		l := leases6[n]
		for _, s := range l.DNS {
			if !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
		for _, s := range l.Search {
			if !slices.Contains(search, s) {
				search = append(search, s)
			}
		}
	}
	raServers, raSearch := ra.snapshot()
	for _, s := range raServers {
		if !slices.Contains(servers, s) {
			servers = append(servers, s)
		}
	}
	for _, s := range raSearch {
		if !slices.Contains(search, s) {
			search = append(search, s)
		}
	}
	return servers, search
}
