package router

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/router/backend"
	"github.com/plinth-os/plinth/services/router/l4"
)

// listeners are the TCP and UDP routes' sockets on this host. A route
// that changes keeps its sockets (and their connections and sessions)
// unless its port changes; a route that goes closes them for new work,
// and its TCP connections run on until they end.
type listeners struct {
	bindIP string
	sets   *backend.Sets
	log    *slog.Logger
	// mu is the router's: every use of the maps below holds it.
	mu *sync.Mutex

	tcp map[string]*tcpListener
	udp map[string]*udpListener
	// errs are the routes whose sockets could not be opened, and why.
	errs map[string]string
	// closing are the TCP proxies of removed routes whose connections
	// are still open: a shutdown waits for them too.
	closing sync.WaitGroup
}

type tcpListener struct {
	port  int
	proxy *l4.TCPProxy
}

type udpListener struct {
	first, last int
	proxy       *l4.UDPProxy
}

func newListeners(bindIP string, sets *backend.Sets, log *slog.Logger, mu *sync.Mutex) *listeners {
	return &listeners{bindIP: bindIP, sets: sets, log: log, mu: mu,
		tcp: map[string]*tcpListener{}, udp: map[string]*udpListener{}, errs: map[string]string{}}
}

func (l *listeners) failing() bool { return len(l.errs) > 0 }

// apply makes the sockets match routes.
func (l *listeners) apply(routes []controller.Route, c *certs) {
	want := map[string]controller.Route{}
	for _, rt := range routes {
		if rt.Type == controller.RouteTCP || rt.Type == controller.RouteUDP {
			want[rt.ID] = rt
		}
	}
	for id, t := range l.tcp {
		if rt, ok := want[id]; !ok || rt.Type != controller.RouteTCP || rt.Port != t.port {
			l.closeTCP(id, t)
		}
	}
	for id, u := range l.udp {
		if rt, ok := want[id]; !ok || rt.Type != controller.RouteUDP || rt.Port != u.first || rt.LastPort() != u.last {
			u.proxy.Close()
			delete(l.udp, id)
		}
	}
	clear(l.errs)
	for id, rt := range want {
		var err error
		if rt.Type == controller.RouteTCP {
			err = l.applyTCP(rt, c)
		} else {
			err = l.applyUDP(rt)
		}
		if err != nil {
			l.errs[id] = err.Error()
		}
	}
}

func (l *listeners) applyTCP(rt controller.Route, c *certs) error {
	route := &l4.TCPRoute{ID: rt.ID, Service: rt.Service, Leader: rt.Leader, ProxyProtocol: rt.ProxyProtocol,
		ConnectTimeout: rt.ConnectTimeout.Duration, IdleTimeout: rt.Timeout.Duration}
	if rt.TLS {
		cert := c.route(rt.ID)
		if cert == nil {
			cert = c.fallback()
		}
		if cert == nil {
			return fmt.Errorf("tls: no certificate for route %s", rt.ID)
		}
		route.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert}}
	}
	if t, ok := l.tcp[rt.ID]; ok {
		t.proxy.SetRoute(route)
		return nil
	}
	ln, err := l4.ListenTCP(context.Background(), net.JoinHostPort(l.bindIP, strconv.Itoa(rt.Port)))
	if err != nil {
		l.log.Error("tcp route cannot listen", "route", rt.ID, "port", rt.Port, "err", err)
		return err
	}
	p := &l4.TCPProxy{Backends: l.sets, Logger: l.log}
	p.SetRoute(route)
	t := &tcpListener{port: rt.Port, proxy: p}
	l.tcp[rt.ID] = t
	go func() {
		if err := p.Serve(ln); err != nil && !errors.Is(err, l4.ErrClosed) {
			l.log.Error("tcp route stopped accepting; opening it again", "route", rt.ID, "err", err)
			l.failed(rt.ID, err, func() bool {
				if l.tcp[rt.ID] != t {
					return false
				}
				delete(l.tcp, rt.ID)
				p.Close()
				return true
			})
		}
	}()
	l.log.Info("tcp route listening", "route", rt.ID, "port", rt.Port, "service", rt.Service)
	return nil
}

// failed records that a route's socket failed, if forget (run under the
// router's lock) says it is still the route's: the route is served no
// more, says why, and the retry opens it again.
func (l *listeners) failed(id string, err error, forget func() bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if forget() {
		l.errs[id] = err.Error()
	}
}

// closeTCP stops a route's listener; its open connections go on, and a
// shutdown of the router waits for them.
func (l *listeners) closeTCP(id string, t *tcpListener) {
	delete(l.tcp, id)
	t.proxy.Close()
	l.closing.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
		defer cancel()
		t.proxy.Shutdown(ctx)
	})
}

func (l *listeners) applyUDP(rt controller.Route) error {
	route := &l4.UDPRoute{ID: rt.ID, Service: udpSet(rt.Service), IdleTimeout: rt.Timeout.Duration}
	if u, ok := l.udp[rt.ID]; ok {
		u.proxy.SetRoute(route)
		return nil
	}
	last := rt.LastPort()
	var conns []*net.UDPConn
	for port := rt.Port; port <= last; port++ {
		addr, err := net.ResolveUDPAddr("udp", net.JoinHostPort(l.bindIP, strconv.Itoa(port)))
		if err == nil {
			var c *net.UDPConn
			if c, err = net.ListenUDP("udp", addr); err == nil {
				conns = append(conns, c)
				continue
			}
		}
		for _, c := range conns {
			c.Close()
		}
		l.log.Error("udp route cannot listen", "route", rt.ID, "port", port, "err", err)
		return err
	}
	p := &l4.UDPProxy{Backends: l.sets, Logger: l.log}
	p.SetRoute(route)
	u := &udpListener{first: rt.Port, last: last, proxy: p}
	l.udp[rt.ID] = u
	for _, c := range conns {
		go func() {
			if err := p.Serve(c); err != nil && !errors.Is(err, l4.ErrClosed) {
				l.log.Error("udp route stopped; opening it again", "route", rt.ID, "err", err)
				l.failed(rt.ID, err, func() bool {
					if l.udp[rt.ID] != u {
						return false
					}
					delete(l.udp, rt.ID)
					p.Close()
					return true
				})
			}
		}()
	}
	l.log.Info("udp route listening", "route", rt.ID, "ports", rt.Ports(), "service", rt.Service)
	return nil
}

// shutdown stops every listener and waits, until ctx ends, for the TCP
// connections to end.
func (l *listeners) shutdown(ctx context.Context) {
	var wg sync.WaitGroup
	for id, t := range l.tcp {
		delete(l.tcp, id)
		wg.Go(func() { t.proxy.Shutdown(ctx) })
	}
	for id, u := range l.udp {
		delete(l.udp, id)
		u.proxy.Close()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { l.closing.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// selfSigned makes the certificate HTTPS presents while the cluster has
// no default one.
func selfSigned() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "plinth router"},
		DNSNames: []string{"plinth-router.invalid"}, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
