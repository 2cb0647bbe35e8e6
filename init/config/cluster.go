package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/labels"
	"github.com/plinth-os/plinth/netd"
)

// Cluster is the [cluster] section, for hostd: how this machine finds and
// joins its cluster.
type Cluster struct {
	// Bundle is where the cluster bundle (made by `plinth cluster init`) is
	// read from: an absolute path, or BundleFWCfg. Empty: the machine joins
	// no cluster (hostd runs alone, without gossip encryption keys it cannot
	// join anything).
	Bundle string
	// Token is the cluster's join token (`plinth cluster token`), the
	// alternative to Bundle for machines that should carry less: hostd
	// fetches the bundle from a Join seed's host API, verified against the
	// CA the token names, and keeps it on the machine.
	Token string
	// Join lists seed hosts to join: "host" or "host:port", where host is an
	// IP address ("[IPv6]:port" with a port) or a DNS name; port defaults to
	// GossipPort. At most 64, no duplicates.
	Join []string
	// Advertise picks the address other hosts reach this one at: an
	// interface name ("lan0"), a CIDR ("10.0.0.0/24": the address inside
	// it), or an IP. Empty: the address of the link with the default route,
	// else the first global one.
	Advertise string
	// GossipPort is the Serf port (UDP and TCP). Default 7946.
	GossipPort int
	// APIPort is the host API's HTTPS port. Default 7947.
	APIPort int
	// Roles are labels this host advertises ("controller", "router", ...):
	// lowercase letters, digits and '-', 1 to 32 characters. At most 16, no
	// duplicates.
	Roles []string
	// Labels are key=value facts about this host ("zone=eu-1",
	// "disk=ssd") that formations' constraints match: at most 8, keys of
	// lowercase letters, digits, '-', '_' and '.', values without ',' or
	// '=' (package host/labels has the rules).
	Labels []string
	// BootstrapExpect, when not 0 (the default), has this host bootstrap
	// the platform
	// by itself (`plinth cluster bootstrap --auto`) once that many hosts
	// are alive, if it is the controller host with the lowest node ID and
	// the cluster is not bootstrapped yet. Give every host the same value.
	BootstrapExpect int
}

// BundleFWCfg as Cluster.Bundle reads the bundle from QEMU's firmware config
// entry opt/plinth/bundle.
const BundleFWCfg = "fw_cfg"

// Limits of Cluster's lists. Seeds are only a way in; once joined, gossip
// finds the other hosts.
const (
	maxSeeds    = 64
	maxRoles    = 16
	maxRoleName = 32
	// maxBootstrapExpect bounds how many hosts a bootstrap waits for:
	// more is a typo, and the rest join later anyway.
	maxBootstrapExpect = 1000
)

// clusterField is the [cluster] section. Once its keys decode without
// problems, the rules that span keys run, each reported at the key it is
// about.
func clusterField(c *Cluster) field {
	fields := clusterFields(c)
	return field{
		key: "cluster",
		decode: func(d *decoder, at path, p toml.Primitive) {
			keys, ok := d.table(at, p)
			if !ok {
				return
			}
			n := len(d.problems)
			d.fields(at, keys, fields, "known keys in [cluster]")
			if len(d.problems) > n {
				return
			}
			switch {
			case c.Token != "" && c.Bundle != "":
				d.keyProblem(at, p, keys, "token", "give either bundle or token, not both; the token only fetches the bundle")
			case c.Token != "" && len(c.Join) == 0:
				d.keyProblem(at, p, keys, "token", "a join token needs seed hosts in cluster.join to fetch the bundle from")
			case len(c.Join) > 0 && c.Bundle == "" && c.Token == "":
				d.keyProblem(at, p, keys, "join", "joining a cluster needs cluster.bundle, which holds the gossip encryption key, or cluster.token; "+
					"set bundle to the path of the bundle `plinth cluster init` made, or to %q", BundleFWCfg)
			}
			if _, err := labels.FromList(c.Labels); err != nil {
				d.keyProblem(at, p, keys, "labels", "%v", err)
			}
			if c.APIPort == c.GossipPort {
				d.keyProblem(at, p, keys, "api_port", "%d is also gossip_port; give the host API and gossip different ports", c.APIPort)
			}
		},
		encode: func() any { return encodeTable(fields) },
	}
}

func clusterFields(c *Cluster) []field {
	return []field{
		textField("bundle", &c.Bundle, plainString(checkBundle)),
		textField("token", &c.Token, plainString(checkToken)),
		setField("join", &c.Join, plainString(checkSeed), maxSeeds),
		textField("advertise", &c.Advertise, plainString(checkAdvertise)),
		intField("gossip_port", &c.GossipPort, 1, 65535),
		intField("api_port", &c.APIPort, 1, 65535),
		setField("roles", &c.Roles, plainString(checkRole), maxRoles),
		setField("labels", &c.Labels, plainString(checkLabel), labels.MaxLabels),
		intField("bootstrap_expect", &c.BootstrapExpect, 0, maxBootstrapExpect),
	}
}

// checkBundle accepts "", BundleFWCfg and absolute clean paths. A relative
// path would depend on hostd's working directory.
func checkBundle(s string) error {
	switch {
	case s == "" || s == BundleFWCfg:
		return nil
	case !filepath.IsAbs(s):
		return fmt.Errorf("%q is not an absolute path; write one like \"/perm/cluster/bundle\", or use %q", s, BundleFWCfg)
	case filepath.Clean(s) != s:
		return fmt.Errorf("%q is not a clean path; write %q", s, filepath.Clean(s))
	}
	return nil
}

// checkToken accepts "" and well-formed join tokens. The message never
// repeats the token: it is a secret and config errors reach the console.
func checkToken(s string) error {
	if s == "" {
		return nil
	}
	if _, _, err := bundle.ParseJoinToken(s); err != nil {
		return fmt.Errorf("%v; copy it from `plinth cluster token`", err)
	}
	return nil
}

// checkSeed accepts a host to join: an IP address or DNS name, optionally
// with a port, which an IPv6 address then needs brackets for.
func checkSeed(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if strings.Contains(s, "://") {
		return fmt.Errorf(`%q is a URL; write the host alone, as "node1.example.org" or "node1.example.org:7946"`, s)
	}
	host, port := s, ""
	if strings.Contains(s, ":") {
		var err error
		if host, port, err = net.SplitHostPort(s); err != nil {
			return fmt.Errorf(`%q is not a host or host:port; write an IPv6 address as "2001:db8::1", or with a port as "[2001:db8::1]:7946"`, s)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("%q has port %q; use a port from 1 to 65535", s, port)
		}
	}
	if strings.HasPrefix(s, "[") {
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return fmt.Errorf("%q is not a valid host: only IPv6 addresses go in brackets", s)
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	return checkDNSName(s, host)
}

// checkDNSName accepts host, the host part of the seed s, if it is a DNS
// name, with or without the trailing dot. Its errors quote s, as written.
func checkDNSName(s, host string) error {
	if host == "" {
		return fmt.Errorf(`%q has no host; write one like "10.0.0.1", "node1.example.org" or "node1.example.org:7946"`, s)
	}
	name := strings.TrimSuffix(host, ".")
	if len(name) > 253 {
		return fmt.Errorf("%q is not a valid host: a DNS name has at most 253 characters", s)
	}
	if err := checkLabels(name); err != nil {
		return fmt.Errorf("%q is not a valid host: %v", s, err)
	}
	// All digits in the last label means a mistyped IPv4 address, like
	// 10.0.0.256, not a name.
	if last := name[strings.LastIndexByte(name, '.')+1:]; strings.Trim(last, "0123456789") == "" {
		return fmt.Errorf("%q is not a valid host: it is not an IP address, and a DNS name cannot end in a numeric label", s)
	}
	return nil
}

// checkAdvertise accepts "", an IP address, a CIDR and an interface name.
func checkAdvertise(s string) error {
	if s == "" {
		return nil
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf(`%q is not a CIDR; write one like "10.0.0.0/24"`, s)
		}
		if p != p.Masked() {
			return fmt.Errorf("%q has host bits set; write %q for the address inside it, or %q for that address", s, p.Masked(), p.Addr())
		}
		return nil
	}
	// IP addresses gone wrong are not interface names, though the kernel
	// would take 10.0.0.256 as one.
	if strings.Contains(s, ":") || strings.Trim(s, "0123456789.") == "" && strings.ContainsAny(s, "0123456789") {
		return fmt.Errorf(`%q is not an IP address; write it like "10.0.0.5" or "2001:db8::5"`, s)
	}
	return netd.CheckLinkName(s)
}

// checkRole accepts 1 to maxRoleName lowercase letters, digits and hyphens.
func checkRole(s string) error {
	if s == "" || len(s) > maxRoleName {
		return fmt.Errorf("%q is not a valid role: use 1 to %d characters", s, maxRoleName)
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-') {
			return fmt.Errorf("%q is not a valid role: %q is not allowed; use lowercase letters, digits and '-'", s, string(r))
		}
	}
	return nil
}

// checkLabel accepts "key=value" (FromList checks the set).
func checkLabel(s string) error {
	_, _, err := labels.Parse(s)
	return err
}

// setField is an array of at most max distinct values of kind k: a value
// listed twice is a mistake in a list of hosts or labels, not a no-op.
func setField[T comparable](name string, dst *[]T, k text[T], max int) field {
	list := textsField(name, dst, k)
	return field{
		key: name,
		decode: func(d *decoder, at path, p toml.Primitive) {
			if v, ok := d.value(p).([]any); ok && len(v) > max {
				d.problem(at, p, "%d entries; at most %d are allowed", len(v), max)
				return
			}
			n := len(d.problems)
			list.decode(d, at, p)
			if len(d.problems) > n {
				return // *dst lacks the bad entries, so its indexes are not the file's
			}
			for i, x := range *dst {
				if j := slices.Index((*dst)[:i], x); j >= 0 {
					d.problem(at.index(i, at.in), p, "%q is already listed as %s; remove one", k.format(x), at.index(j, at.in).name)
				}
			}
		},
		encode: list.encode,
	}
}
