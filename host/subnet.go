package host

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/plinth-os/plinth/host/cnet"
)

// subnetFile keeps the host's container subnet in StateDir: jobs keep
// their addresses across restarts and reboots only if it stays.
const subnetFile = "container-subnet"

// subnetBits is the size of each host's slice: 253 jobs.
const subnetBits = 24

// pickSubnet returns the host's container subnet: the configured one, the
// one kept in dir, or a new one. A new one starts at a slice chosen by a
// hash of the node ID and skips the slices in taken (the members this
// host knows). Two hosts that start at the same moment, knowing nothing
// of each other, can still pick the same slice (with 256 slices, about a
// 1 in 6 chance for 10 hosts); hostd logs such a conflict when gossip
// shows it, and a configured subnet avoids it. A lease from the
// controller will replace this.
func pickSubnet(cfg Config, nodeID string, taken []string) (netip.Prefix, error) {
	rng := cfg.containerRange()
	if cfg.ContainerSubnet.IsValid() {
		return cfg.ContainerSubnet, nil
	}
	path := filepath.Join(cfg.StateDir, subnetFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		p, err := netip.ParsePrefix(strings.TrimSpace(string(data)))
		if err != nil || !rng.Contains(p.Addr()) {
			return netip.Prefix{}, fmt.Errorf("%s: %q is not a subnet of %v; remove the file to pick a new one (the host's jobs get new addresses)", path, data, rng)
		}
		return p, nil
	case !errors.Is(err, fs.ErrNotExist):
		return netip.Prefix{}, err
	}
	if rng.Bits() > subnetBits {
		return netip.Prefix{}, fmt.Errorf("container range %v is smaller than one /%d", rng, subnetBits)
	}
	slices := 1 << (subnetBits - rng.Bits())
	h := fnv.New32a()
	h.Write([]byte(nodeID))
	start := int(h.Sum32() % uint32(slices))
	used := map[string]bool{}
	for _, t := range taken {
		used[t] = true
	}
	for i := range slices {
		p := slice(rng, (start+i)%slices)
		if !used[p.String()] {
			if err := writeFileAtomic(path, []byte(p.String()+"\n"), 0o644); err != nil {
				return netip.Prefix{}, err
			}
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("every /%d of %v is taken", subnetBits, rng)
}

// slice returns the i-th /24 of rng.
func slice(rng netip.Prefix, i int) netip.Prefix {
	a := rng.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n += uint32(i) << (32 - subnetBits)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), subnetBits)
}

// containerRange is the configured container range, or the default one.
func (c Config) containerRange() netip.Prefix {
	if c.ContainerRange.IsValid() {
		return c.ContainerRange
	}
	return cnet.DefaultRange
}
