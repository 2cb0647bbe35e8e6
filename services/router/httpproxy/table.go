package httpproxy

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Route sends the requests for one domain and path prefix to a service.
type Route struct {
	// ID names the route in logs.
	ID string
	// Domain is a host name ("example.com") or a wildcard ("*.example.com")
	// that matches one or more labels below example.com, not example.com
	// itself.
	Domain string
	// Path is a prefix that ends at a segment boundary: "/api" matches
	// "/api", "/api/x" and "/api?q", not "/apix". Empty means "/".
	Path string
	// Service names the backend set, from Server.Backends.
	Service string
	// Sticky keeps a client on one instance with a signed cookie.
	Sticky bool
	// ConnectTimeout bounds a connection to a backend; 0 means 5s.
	ConnectTimeout time.Duration
	// Timeout bounds the wait for the response head and then every wait
	// for more of the response body; 0 means 60s.
	Timeout time.Duration
	// Cert, when set, is served for Domain on TLS listeners. Of several
	// routes of one domain, the first in NewTable's list that has one
	// gives the domain's certificate.
	Cert *tls.Certificate
}

const (
	defaultConnectTimeout = 5 * time.Second
	defaultTimeout        = 60 * time.Second
)

// Table is an immutable set of routes, matched by host and path.
type Table struct {
	exact map[string]*domainRoutes
	// wild is keyed by the suffix below the "*.", e.g. "example.com".
	wild        map[string]*domainRoutes
	defaultCert *tls.Certificate
}

// domainRoutes are one domain's routes, longest prefix first.
type domainRoutes struct {
	routes []*entry
	cert   *tls.Certificate
}

// entry is a route with its path prefix kept without a trailing slash,
// so that "/" and "/api/" compare as prefixes at segment boundaries.
type entry struct {
	route  Route
	prefix string
}

// NewTable checks routes and indexes them. defaultCert, when set, is
// served to TLS clients whose server name no route's certificate covers.
func NewTable(routes []Route, defaultCert *tls.Certificate) (*Table, error) {
	t := &Table{exact: map[string]*domainRoutes{}, wild: map[string]*domainRoutes{}, defaultCert: defaultCert}
	for i := range routes {
		r := routes[i]
		domain, wildcard, err := normalizeDomain(r.Domain)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r.ID, err)
		}
		if r.Path == "" {
			r.Path = "/"
		}
		if !validPath(r.Path) {
			return nil, fmt.Errorf("route %q: path %q: want an absolute path without query, spaces or control characters", r.ID, r.Path)
		}
		e := &entry{prefix: strings.TrimSuffix(r.Path, "/")}
		if r.ConnectTimeout <= 0 {
			r.ConnectTimeout = defaultConnectTimeout
		}
		if r.Timeout <= 0 {
			r.Timeout = defaultTimeout
		}
		m := t.exact
		if wildcard {
			m = t.wild
		}
		d := m[domain]
		if d == nil {
			d = &domainRoutes{}
			m[domain] = d
		}
		for _, o := range d.routes {
			if o.prefix == e.prefix {
				return nil, fmt.Errorf("route %q: %s%s is already routed by %q", r.ID, r.Domain, r.Path, o.route.ID)
			}
		}
		if d.cert == nil {
			d.cert = r.Cert
		}
		e.route = r
		d.routes = append(d.routes, e)
	}
	for _, m := range []map[string]*domainRoutes{t.exact, t.wild} {
		for _, d := range m {
			slices.SortFunc(d.routes, func(a, b *entry) int { return len(b.prefix) - len(a.prefix) })
		}
	}
	return t, nil
}

func normalizeDomain(d string) (domain string, wildcard bool, err error) {
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	if rest, ok := strings.CutPrefix(d, "*."); ok {
		d, wildcard = rest, true
	}
	if d == "" || len(d) > 253 {
		return "", false, fmt.Errorf("domain %q: want a host name such as example.com or *.example.com", d)
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 {
			return "", false, fmt.Errorf("domain %q: empty or overlong label", d)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", false, fmt.Errorf("domain %q: character %q is not allowed in a host name", d, c)
			}
		}
	}
	return d, wildcard, nil
}

func validPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f || c == '?' || c == '#' {
			return false
		}
	}
	return true
}

// Match returns the route for a request to host (a port is ignored,
// case does not matter) and path, or nil. An exact domain is tried
// before wildcards, and wildcards from the most specific; the first
// domain that has a route for path wins, with the longest prefix.
func (t *Table) Match(host, path string) *Route {
	return t.match([]byte(host), []byte(path), nil)
}

// match is Match on bytes, with scratch for the lower-cased host, so
// that the request path needs no strings.
func (t *Table) match(host, path, scratch []byte) *Route {
	if t == nil {
		return nil
	}
	h := lowerHost(host, scratch)
	if d := t.exact[string(h)]; d != nil {
		if r := d.match(path); r != nil {
			return r
		}
	}
	for i := 0; i < len(h); i++ {
		if h[i] != '.' {
			continue
		}
		if d := t.wild[string(h[i+1:])]; d != nil {
			if r := d.match(path); r != nil {
				return r
			}
		}
	}
	return nil
}

func (d *domainRoutes) match(path []byte) *Route {
	if q := indexByte2(path, '?', '#'); q >= 0 {
		path = path[:q]
	}
	for _, e := range d.routes {
		if pathHasPrefix(path, e.prefix) {
			return &e.route
		}
	}
	return nil
}

// pathHasPrefix reports whether prefix (without trailing slash) covers
// path at a segment boundary.
func pathHasPrefix(path []byte, prefix string) bool {
	if len(path) < len(prefix) || string(path[:len(prefix)]) != prefix {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}

func indexByte2(b []byte, c1, c2 byte) int {
	for i, c := range b {
		if c == c1 || c == c2 {
			return i
		}
	}
	return -1
}

// lowerHost strips the port and a trailing dot from host and lower-cases
// it into scratch.
func lowerHost(host, scratch []byte) []byte {
	if len(host) > 0 && host[0] == '[' {
		if i := indexByte2(host, ']', ']'); i >= 0 {
			host = host[:i+1]
		}
	} else if i := indexByte2(host, ':', ':'); i >= 0 {
		host = host[:i]
	}
	if n := len(host); n > 0 && host[n-1] == '.' {
		host = host[:n-1]
	}
	out := scratch[:0]
	for _, c := range host {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out = append(out, c)
	}
	return out
}

// certificate picks the certificate for a TLS server name: the exact
// domain's, then the most specific wildcard's, then the default.
func (t *Table) certificate(serverName string) *tls.Certificate {
	if t == nil {
		return nil
	}
	h := lowerHost([]byte(serverName), nil)
	if d := t.exact[string(h)]; d != nil && d.cert != nil {
		return d.cert
	}
	for i := 0; i < len(h); i++ {
		if h[i] == '.' {
			if d := t.wild[string(h[i+1:])]; d != nil && d.cert != nil {
				return d.cert
			}
		}
	}
	return t.defaultCert
}
