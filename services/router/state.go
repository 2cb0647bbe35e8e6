package router

import (
	"crypto/tls"
	"fmt"
	"slices"
	"sort"

	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/router/backend"
	"github.com/plinth-os/plinth/services/router/httpproxy"
)

// state is what the router last heard from the controller, and the
// certificates parsed from it.
type state struct {
	routes    []controller.Route
	instances []controller.Instance
	services  []controller.Service
	settings  map[string]string
	loaded    [4]bool // routes, instances, services, settings
	certs     *certs
	// table is the HTTP table serving; tableErr is why the last one
	// could not be built (the one before it still serves).
	table    *httpproxy.Table
	tableErr string
}

// isLoaded: every collection has been heard once.
func (s *state) isLoaded() bool { return s.loaded == [4]bool{true, true, true, true} }

func (r *Router) setRoutes(v []controller.Route) {
	r.update(func(s *state) { s.routes, s.loaded[0] = v, true })
}

func (r *Router) setInstances(v []controller.Instance) {
	r.update(func(s *state) { s.instances, s.loaded[1] = v, true })
}

func (r *Router) setServices(v []controller.Service) {
	r.update(func(s *state) { s.services, s.loaded[2] = v, true })
}

func (r *Router) setSettings(v []controller.Setting) {
	m := make(map[string]string, len(v))
	for _, s := range v {
		m[s.Key] = s.Value
	}
	r.update(func(s *state) { s.settings, s.loaded[3] = m, true })
}

// update changes the state and, once every collection is loaded,
// rebuilds what serves from it.
func (r *Router) update(change func(*state)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	change(&r.state)
	if r.stopping || !r.state.isLoaded() {
		return
	}
	r.rebuild()
	select {
	case <-r.built:
	default:
		close(r.built)
	}
}

// rebuild makes new backend sets, a new HTTP table and the TCP and UDP
// listeners the routes ask for. A table that cannot be built leaves the
// one serving in place.
func (r *Router) rebuild() {
	s := &r.state
	if s.certs == nil {
		s.certs = newCerts(r.log)
	}
	s.certs.update(s.routes, s.settings)
	sets := buildSets(&r.pool, s.instances, s.services)
	r.sets.Replace(sets)
	r.pool.Prune(func(b *backend.Backend) bool { return inSets(sets, b) })

	table, err := httpproxy.NewTable(httpRoutes(s.routes, s.certs), s.certs.fallback())
	if err != nil {
		s.tableErr = err.Error()
		r.log.Error("HTTP routes not applied; the table before them still serves", "err", err)
	} else {
		s.table, s.tableErr = table, ""
		if r.http != nil {
			r.http.SetTable(table)
		}
	}
	r.l4.apply(s.routes, s.certs)
}

// udpSet is the key of a service's UDP instances among the sets: a
// service may have TCP and UDP instances (SIP), and a route of each kind
// must get only its own.
func udpSet(service string) string { return service + "/udp" }

// buildSets makes the backend set of every service from its instances
// that serve (healthy, not draining), with its leader when that one
// serves. Backends come from pool, so their counts carry over.
func buildSets(pool *backend.Pool, instances []controller.Instance, services []controller.Service) map[string]*backend.Set {
	leaders := map[string]string{}
	for _, s := range services {
		leaders[s.Name] = s.Leader
	}
	byKey := map[string][]controller.Instance{}
	for _, i := range instances {
		if !i.Healthy || i.Draining {
			continue
		}
		key := i.Service
		if i.Proto == "udp" {
			key = udpSet(i.Service)
		}
		byKey[key] = append(byKey[key], i)
	}
	sets := make(map[string]*backend.Set, len(byKey))
	for key, is := range byKey {
		// A stable order: round robin and retries should not depend on
		// the order of the controller's answer.
		sort.Slice(is, func(a, b int) bool { return is[a].ID < is[b].ID })
		set := &backend.Set{Service: key}
		var oldest *controller.Instance
		for _, i := range is {
			b := pool.Get(i.ID, i.Addr)
			set.Backends = append(set.Backends, b)
			if leaders[i.Service] == i.ID {
				set.Leader = b
			}
			if oldest == nil || i.CreateIndex < oldest.CreateIndex {
				oldest = &i
			}
		}
		// The service's leader may be an instance of the other protocol
		// (a service with TCP and UDP instances): this set's leader is
		// then its oldest instance, the controller's rule, which every
		// router applies alike.
		if set.Leader == nil && leaders[is[0].Service] != "" {
			set.Leader = pool.Get(oldest.ID, oldest.Addr)
		}
		sets[key] = set
	}
	return sets
}

func inSets(sets map[string]*backend.Set, b *backend.Backend) bool {
	for _, s := range sets {
		if slices.Contains(s.Backends, b) {
			return true
		}
	}
	return false
}

// httpRoutes are the HTTP routes as the proxy takes them.
func httpRoutes(routes []controller.Route, c *certs) []httpproxy.Route {
	var out []httpproxy.Route
	for _, rt := range routes {
		if rt.Type != controller.RouteHTTP {
			continue
		}
		out = append(out, httpproxy.Route{
			ID: rt.ID, Domain: rt.Domain, Path: rt.Path, Service: rt.Service, Sticky: rt.Sticky,
			ConnectTimeout: rt.ConnectTimeout.Duration, Timeout: rt.Timeout.Duration,
			Cert: c.route(rt.ID),
		})
	}
	return out
}

// certs holds the parsed certificates of the routes, and the default
// one, parsed again only when their route changes.
type certs struct {
	log      logger
	byRoute  map[string]parsedCert
	def      parsedCert
	selfSign *tls.Certificate
}

type logger interface {
	Warn(msg string, args ...any)
	Error(msg string, args ...any)
}

type parsedCert struct {
	pem  string // cert + key, to tell a change
	cert *tls.Certificate
	err  error
}

func newCerts(log logger) *certs { return &certs{log: log, byRoute: map[string]parsedCert{}} }

func (c *certs) update(routes []controller.Route, settings map[string]string) {
	seen := map[string]bool{}
	for _, rt := range routes {
		if rt.TLSCert == "" {
			continue
		}
		seen[rt.ID] = true
		c.byRoute[rt.ID] = c.parse(c.byRoute[rt.ID], rt.TLSCert, rt.TLSKey, "route "+rt.ID)
	}
	for id := range c.byRoute {
		if !seen[id] {
			delete(c.byRoute, id)
		}
	}
	cert, key := settings[controller.DefaultCertSetting], settings[controller.DefaultKeySetting]
	if cert == "" && key == "" {
		c.def = parsedCert{}
		return
	}
	c.def = c.parse(c.def, cert, key, "default certificate (settings "+controller.DefaultCertSetting+", "+controller.DefaultKeySetting+")")
}

// parse parses a certificate and key that changed. A pair that does not
// parse keeps the last one that did: the default certificate and its key
// are two settings, written one after the other.
func (c *certs) parse(old parsedCert, certPEM, keyPEM, what string) parsedCert {
	if old.pem == certPEM+keyPEM {
		return old
	}
	p := parsedCert{pem: certPEM + keyPEM}
	pair, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		p.err = fmt.Errorf("%s: %w", what, err)
		p.cert = old.cert
		c.log.Error("certificate not usable; the last good one serves", "what", what, "err", err)
		return p
	}
	p.cert = &pair
	return p
}

// route is the route's own certificate, nil when it has none (or none
// that parses).
func (c *certs) route(id string) *tls.Certificate { return c.byRoute[id].cert }

// fallback is the cluster's default certificate or, without one, a
// self-signed certificate made once: HTTPS answers either way, and the
// operator sets a real one with plinth routes default-cert.
func (c *certs) fallback() *tls.Certificate {
	if c.def.cert != nil {
		return c.def.cert
	}
	if c.selfSign == nil {
		cert, err := selfSigned()
		if err != nil {
			c.log.Error("no default certificate, and none could be made", "err", err)
			return nil
		}
		c.log.Warn("no default certificate: HTTPS without a route certificate presents a self-signed one (set one with plinth routes default-cert)")
		c.selfSign = cert
	}
	return c.selfSign
}
