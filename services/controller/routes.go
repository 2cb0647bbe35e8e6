package controller

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/plinth-os/plinth/host/job"
)

func (r *Route) key() string { return r.ID }

// Route types.
const (
	RouteHTTP = "http"
	RouteTCP  = "tcp"
	RouteUDP  = "udp"
)

// Ports the platform itself listens on, on every host: a route must not
// ask the routers for them. Hosts' own gossip and API ports are added
// from the hosts collection (they are configurable).
var (
	// RouterHTTPPort and RouterHTTPSPort serve every HTTP route.
	RouterHTTPPort  = 80
	RouterHTTPSPort = 443
	// RouterAPIPort is each router's API: its routes' state and the
	// work in flight per backend.
	RouterAPIPort = 7950

	reservedTCP = []int{53, RouterHTTPPort, RouterHTTPSPort, 7946, 7947, DefaultAPIPort, DefaultRaftPort, RouterAPIPort, RegistryPort, BuilderPort}
	reservedUDP = []int{53, 7946}
)

// GitPort is the routers' port for git push, taken to the builder (which
// listens on BuilderPort) by the route GitRouteID only.
const (
	GitPort     = 7952
	BuilderPort = 7953
	GitRouteID  = "platform-git"
)

// TCPPortsSetting is the setting that holds the range TCP routes without
// a port get theirs from, as "first-last".
const TCPPortsSetting = "router.tcp_ports"

// DefaultTCPPorts is the range when the setting is absent.
const DefaultTCPPorts = "30000-32767"

// Settings that hold the routers' default certificate and key (PEM): what
// HTTPS and TLS TCP routes without their own certificate present.
const (
	DefaultCertSetting = "router.tls_cert"
	DefaultKeySetting  = "router.tls_key"
)

// Limits of a route.
const (
	maxUDPRange    = 1000 // ports in one UDP route: each is a socket on every host
	maxRouteWait   = time.Hour
	maxDomainLen   = 253
	maxRoutePath   = 1024
	maxCertPEMSize = 32 << 10
)

// checkRoute checks what a route says by itself; admitRoute checks it
// against the others when the write is applied.
func checkRoute(o object) error {
	r := o.(*Route)
	bad := func(format string, args ...any) error {
		what := "route"
		if r.ID != "" {
			what = "route " + r.ID
		}
		return fmt.Errorf("%w: %s: %s", ErrInvalid, what, fmt.Sprintf(format, args...))
	}
	if r.ID != "" && !validName(r.ID, 64) {
		return bad("id %q: use 1 to 64 of a-z, 0-9, '.', '-'", r.ID)
	}
	if !isDNSLabel(r.Service) {
		return bad("service %q: give the discovery service that serves it (a DNS label, as in the job's services)", r.Service)
	}
	for name, d := range map[string]job.Duration{"connect_timeout": r.ConnectTimeout, "timeout": r.Timeout} {
		if d.Duration < 0 || d.Duration > maxRouteWait {
			return bad("%s %s: use 0 (the default) to %s", name, d.Duration, maxRouteWait)
		}
	}
	switch r.Type {
	case RouteHTTP:
		return checkHTTPRoute(r, bad)
	case RouteTCP:
		switch {
		case r.Domain != "" || r.Path != "" || r.Sticky:
			return bad("domain, path and sticky are for http routes")
		case r.Port < 0 || r.Port > 65535:
			return bad("port %d: use 1 to 65535, or none to get one from the router's range", r.Port)
		case r.PortEnd != 0:
			return bad("a tcp route listens on one port; port ranges are for udp routes")
		case !r.TLS && r.TLSCert != "":
			return bad("a certificate without tls: add tls to terminate TLS with it")
		}
		return checkRouteCert(r, "", bad)
	case RouteUDP:
		switch {
		case r.Domain != "" || r.Path != "" || r.Sticky:
			return bad("domain, path and sticky are for http routes")
		case r.TLS || r.TLSCert != "" || r.Leader || r.ProxyProtocol:
			return bad("tls, leader and proxy_protocol are for tcp routes")
		case r.Port < 1 || r.Port > 65535:
			return bad("port %d: a udp route needs its port (1 to 65535)", r.Port)
		case r.PortEnd != 0 && (r.PortEnd < r.Port || r.PortEnd > 65535):
			return bad("port range %d-%d: the last port must be at least the first, at most 65535", r.Port, r.PortEnd)
		case r.PortEnd-r.Port >= maxUDPRange:
			return bad("port range %d-%d is over %d ports", r.Port, r.PortEnd, maxUDPRange)
		}
		return nil
	}
	return bad("type %q: use http, tcp or udp", r.Type)
}

func checkHTTPRoute(r *Route, bad func(string, ...any) error) error {
	r.Domain = strings.ToLower(strings.TrimSuffix(r.Domain, "."))
	switch {
	case r.Port != 0 || r.PortEnd != 0 || r.Leader || r.ProxyProtocol || r.TLS:
		return bad("port, leader, proxy_protocol and tls are for tcp and udp routes; an http route is served on ports %d and %d (TLS with its certificate, or the default one)", RouterHTTPPort, RouterHTTPSPort)
	case !validDomain(r.Domain):
		return bad("domain %q: give a host name such as example.com, or *.example.com for its subdomains", r.Domain)
	}
	if r.Path == "" {
		r.Path = "/"
	}
	switch {
	case len(r.Path) > maxRoutePath || !strings.HasPrefix(r.Path, "/"):
		return bad("path %q: start it with '/' (at most %d bytes)", r.Path, maxRoutePath)
	case strings.ContainsAny(r.Path, "?#% \t"):
		return bad("path %q: a prefix of the request's path, without query, fragment, escapes or spaces", r.Path)
	}
	r.Path = path.Clean(r.Path)
	return checkRouteCert(r, r.Domain, bad)
}

// checkRouteCert checks a route's certificate: a pair whose halves match,
// valid now, and naming domain when there is one.
func checkRouteCert(r *Route, domain string, bad func(string, ...any) error) error {
	switch {
	case r.TLSCert == "" && r.TLSKey == "":
		return nil
	case r.TLSCert == "" || r.TLSKey == "":
		return bad("give both the certificate and its key")
	case len(r.TLSCert) > maxCertPEMSize || len(r.TLSKey) > maxCertPEMSize:
		return bad("certificate or key over %d bytes", maxCertPEMSize)
	}
	leaf, err := ParseCertificate(r.TLSCert, r.TLSKey)
	if err != nil {
		return bad("%v", err)
	}
	if domain != "" {
		if err := certNames(leaf, domain); err != nil {
			return bad("%v", err)
		}
	}
	return nil
}

// ParseCertificate checks a PEM certificate (chain) and key: that they
// are a pair and that the certificate is valid now. It returns the leaf.
func ParseCertificate(certPEM, keyPEM string) (*x509.Certificate, error) {
	pair, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %v (give the PEM certificate chain and its own private key)", err)
	}
	leaf := pair.Leaf
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		return nil, fmt.Errorf("certificate expired on %s", leaf.NotAfter.UTC().Format(time.DateOnly))
	case now.Before(leaf.NotBefore):
		return nil, fmt.Errorf("certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return leaf, nil
}

// certNames checks that leaf is a certificate for domain: for a wildcard
// domain, the same wildcard must be among its names.
func certNames(leaf *x509.Certificate, domain string) error {
	if strings.HasPrefix(domain, "*.") {
		if slices.Contains(leaf.DNSNames, domain) {
			return nil
		}
	} else if leaf.VerifyHostname(domain) == nil {
		return nil
	}
	return fmt.Errorf("certificate is for %s, not %s", strings.Join(leaf.DNSNames, ", "), domain)
}

// validDomain: DNS labels of a-z, 0-9, '-', at least two, the first of
// which may be "*".
func validDomain(d string) bool {
	if len(d) > maxDomainLen {
		return false
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return false
	}
	for i, l := range labels {
		if i == 0 && l == "*" {
			continue
		}
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}

func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// admitRoute checks a route against the state it is written into, as
// the write is applied, so that two writes racing cannot both take a
// port: its service must be known, and its domain and path, or its
// ports, must be free. A TCP route without a port gets the lowest free
// one of the range; a route without an ID gets "<type>-<index>".
func admitRoute(txn *memdb.Txn, index uint64, _ time.Time, o object) error {
	r := o.(*Route)
	if r.ID == "" {
		r.ID = fmt.Sprintf("%s-%d", r.Type, index)
	}
	known, err := serviceKnown(txn, r.Service)
	if err != nil {
		return err
	}
	if !known {
		return fmt.Errorf("%w: route %s: no service %q: no instance or formation declares it (see plinth services); deploy it first, or check the name", ErrInvalid, r.ID, r.Service)
	}
	routes, err := list[*Route](txn, "routes")
	if err != nil {
		return err
	}
	others := slices.DeleteFunc(routes, func(o *Route) bool { return o.ID == r.ID })
	switch r.Type {
	case RouteHTTP:
		for _, o := range others {
			if o.Type == RouteHTTP && o.Domain == r.Domain && o.Path == r.Path {
				return fmt.Errorf("%w: route %s: %s%s is route %s's already (plinth routes remove %s first, or pick another path)", ErrConflict, r.ID, r.Domain, r.Path, o.ID, o.ID)
			}
		}
		return nil
	case RouteTCP:
		return admitTCPPort(txn, r, others)
	}
	return admitUDPPorts(txn, r, others)
}

func admitTCPPort(txn *memdb.Txn, r *Route, others []*Route) error {
	used, err := hostPorts(txn, reservedTCP, true)
	if err != nil {
		return err
	}
	if r.ID != GitRouteID {
		used[GitPort] = true
	}
	owner := map[int]string{}
	for _, o := range others {
		if o.Type == RouteTCP {
			owner[o.Port] = o.ID
		}
	}
	if r.Port != 0 {
		if id, ok := owner[r.Port]; ok {
			return fmt.Errorf("%w: route %s: tcp port %d is route %s's already: pick another port, or none to get a free one", ErrConflict, r.ID, r.Port, id)
		}
		if used[r.Port] {
			return fmt.Errorf("%w: route %s: tcp port %d is the platform's own on every host: pick another port, or none to get a free one", ErrConflict, r.ID, r.Port)
		}
		return nil
	}
	first, last, err := tcpPortRange(txn)
	if err != nil {
		return err
	}
	for p := first; p <= last; p++ {
		if _, taken := owner[p]; !taken && !used[p] {
			r.Port = p
			return nil
		}
	}
	return fmt.Errorf("%w: route %s: every port of the range %d-%d (setting %s) is taken: give a port, or widen the range", ErrConflict, r.ID, first, last, TCPPortsSetting)
}

func admitUDPPorts(txn *memdb.Txn, r *Route, others []*Route) error {
	used, err := hostPorts(txn, reservedUDP, false)
	if err != nil {
		return err
	}
	last := r.LastPort()
	for p := r.Port; p <= last; p++ {
		if used[p] {
			return fmt.Errorf("%w: route %s: udp port %d is the platform's own on every host: pick other ports", ErrConflict, r.ID, p)
		}
	}
	for _, o := range others {
		if o.Type == RouteUDP && r.Port <= o.LastPort() && o.Port <= last {
			return fmt.Errorf("%w: route %s: udp ports %s overlap route %s's (%s): pick ports outside it", ErrConflict, r.ID, r.Ports(), o.ID, o.Ports())
		}
	}
	return nil
}

// LastPort is a TCP or UDP route's last port: PortEnd for a UDP range,
// else Port.
func (r *Route) LastPort() int { return max(r.PortEnd, r.Port) }

// Ports is a TCP or UDP route's port, or its range as "N-M".
func (r *Route) Ports() string {
	if r.LastPort() == r.Port {
		return strconv.Itoa(r.Port)
	}
	return fmt.Sprintf("%d-%d", r.Port, r.PortEnd)
}

// hostPorts are the ports the platform listens on: the fixed ones and,
// from the hosts collection, each host's gossip port (TCP and UDP) and
// API port (TCP).
func hostPorts(txn *memdb.Txn, fixed []int, tcp bool) (map[int]bool, error) {
	used := map[int]bool{}
	for _, p := range fixed {
		used[p] = true
	}
	hosts, err := list[*Host](txn, "hosts")
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		addrs := []string{h.Addr}
		if tcp {
			addrs = append(addrs, h.API)
		}
		for _, a := range addrs {
			if _, port, err := net.SplitHostPort(a); err == nil {
				if p, err := strconv.Atoi(port); err == nil {
					used[p] = true
				}
			}
		}
	}
	return used, nil
}

// tcpPortRange reads the range setting, or gives the default.
func tcpPortRange(txn *memdb.Txn) (first, last int, err error) {
	v := DefaultTCPPorts
	raw, err := txn.First("settings", "id", TCPPortsSetting)
	if err != nil {
		return 0, 0, err
	}
	if raw != nil {
		v = raw.(*Setting).Value
	}
	first, last, err = ParsePortRange(v)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: setting %s: %v", ErrInvalid, TCPPortsSetting, err)
	}
	return first, last, nil
}

// ParsePortRange reads "N" or "N-M".
func ParsePortRange(s string) (first, last int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	first, err = strconv.Atoi(a)
	last = first
	if err == nil && isRange {
		last, err = strconv.Atoi(b)
	}
	if err != nil || first < 1 || last > 65535 || last < first {
		return 0, 0, fmt.Errorf("port range %q: give N or N-M, ports 1 to 65535", s)
	}
	return first, last, nil
}

// serviceKnown: the controller has the service, an instance of it, or a
// formation whose job declares it (deployed, not yet running).
func serviceKnown(txn *memdb.Txn, name string) (bool, error) {
	if raw, err := txn.First("services", "id", name); err != nil || raw != nil {
		return raw != nil, err
	}
	if raw, err := txn.First("instances", "service", name); err != nil || raw != nil {
		return raw != nil, err
	}
	formations, err := list[*Formation](txn, "formations")
	if err != nil {
		return false, err
	}
	for _, f := range formations {
		for _, s := range f.Job.Services {
			if s.Name == name {
				return true, nil
			}
		}
	}
	return false, nil
}

// keepRoutePort keeps a TCP route's port over a write that gives none,
// so that changing another field does not move the route.
func keepRoutePort(old, obj object) {
	o, r := old.(*Route), obj.(*Route)
	if r.Type == RouteTCP && o.Type == RouteTCP && r.Port == 0 {
		r.Port = o.Port
	}
}
