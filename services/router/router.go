// Package router is the router service: on every host it follows the
// controller's routes, instances and services and carries HTTP (ports 80
// and 443), TCP and UDP traffic to the healthy instances of each route's
// service, counting the work in flight on each instance so that drains
// can wait for it to end.
//
// The data paths are its subpackages (httpproxy, l4) and the backend
// sets they share (backend); this package owns what ties them to the
// controller: building the tables, opening and closing listeners as
// routes come and go, and the router's API.
package router

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/router/accesslog"
	"github.com/plinth-os/plinth/services/router/backend"
	"github.com/plinth-os/plinth/services/router/httpproxy"
)

// Config is what a router needs; DefaultConfig fills the rest.
type Config struct {
	// Controller is where routes, instances and services come from.
	Controller *controller.Client
	// HTTPAddr and HTTPSAddr serve every HTTP route; APIAddr the
	// router's API.
	HTTPAddr, HTTPSAddr, APIAddr string
	// BindIP is the address TCP and UDP routes listen on; empty means
	// every address of the host.
	BindIP string
	// APITLS serves the API; nil serves it in plain HTTP (tests).
	APITLS *tls.Config
	// WatchWait is each blocking query's wait on the controller.
	WatchWait time.Duration
	// AccessLog logs one line per HTTP request, to AccessLogOut; nil
	// means stderr, the job's log.
	AccessLog    bool
	AccessLogOut io.Writer
	// RetryListen is how often a route whose port could not be opened
	// is tried again.
	RetryListen time.Duration
	// ShutdownGrace is how long requests and connections in flight may
	// take to end when the router stops.
	ShutdownGrace time.Duration
	Logger        *slog.Logger
}

// DefaultConfig is a router on the platform's ports.
func DefaultConfig() Config {
	return Config{
		HTTPAddr:      ":" + strconv.Itoa(controller.RouterHTTPPort),
		HTTPSAddr:     ":" + strconv.Itoa(controller.RouterHTTPSPort),
		APIAddr:       ":" + strconv.Itoa(controller.RouterAPIPort),
		WatchWait:     controller.MaxWait,
		AccessLog:     true,
		RetryListen:   5 * time.Second,
		ShutdownGrace: 10 * time.Second,
	}
}

// StickyKeySetting holds the key that signs sticky-session cookies: the
// same on every router, so a client keeps its instance whichever host
// it reaches. The first router to start writes it.
const StickyKeySetting = "router.sticky_key"

// Router is one host's router.
type Router struct {
	cfg  Config
	log  *slog.Logger
	pool backend.Pool
	sets backend.Sets
	http *httpproxy.Server

	mu       sync.Mutex
	state    state
	stopping bool
	l4       *listeners
	built    chan struct{} // closed after the first build
}

// New checks cfg and makes a router; Run starts it.
func New(cfg Config) (*Router, error) {
	def := DefaultConfig()
	if cfg.Controller == nil {
		return nil, errors.New("router: no controller client")
	}
	if cfg.HTTPAddr == "" || cfg.HTTPSAddr == "" || cfg.APIAddr == "" {
		return nil, errors.New("router: give the HTTP, HTTPS and API addresses")
	}
	if cfg.WatchWait <= 0 {
		cfg.WatchWait = def.WatchWait
	}
	if cfg.RetryListen <= 0 {
		cfg.RetryListen = def.RetryListen
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = def.ShutdownGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.AccessLogOut == nil {
		cfg.AccessLogOut = os.Stderr
	}
	r := &Router{cfg: cfg, log: cfg.Logger, built: make(chan struct{})}
	r.l4 = newListeners(cfg.BindIP, &r.sets, cfg.Logger, &r.mu)
	return r, nil
}

// Run serves until ctx ends: it gets the cluster's sticky key, follows
// the controller, and once it has every collection opens the HTTP
// listeners and a listener per TCP and UDP route. The API serves from
// the start, saying whether the router is loaded.
func (r *Router) Run(ctx context.Context) error {
	api, err := net.Listen("tcp", r.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("router API: listen on %s: %w (is another router running?)", r.cfg.APIAddr, err)
	}
	apiAddr := api.Addr().String()
	if r.cfg.APITLS != nil {
		api = tls.NewListener(api, r.cfg.APITLS)
	}
	apiSrv := &http.Server{Handler: r.apiHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go func() {
		if err := apiSrv.Serve(api); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("router API stopped", "err", err)
		}
	}()
	defer apiSrv.Close()

	key, err := r.stickyKey(ctx)
	if err != nil {
		return err
	}
	r.http = &httpproxy.Server{Backends: &r.sets, StickyKey: key}
	if r.cfg.AccessLog {
		alog := accesslog.New(accesslog.Config{Out: r.cfg.AccessLogOut})
		defer alog.Close() // after wg.Wait: the listeners' last requests are logged
		r.http.AccessLog = func(e httpproxy.AccessEntry) { alog.Log(accesslog.Entry(e)) }
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	wctx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	c := r.cfg.Controller
	follow := func(what string) controller.FollowConfig {
		return controller.FollowConfig{What: what, Wait: r.cfg.WatchWait, Log: r.log}
	}
	wg.Go(func() { controller.Follow(wctx, follow("routes"), c.Routes, r.setRoutes) })
	wg.Go(func() { controller.Follow(wctx, follow("instances"), c.Instances, r.setInstances) })
	wg.Go(func() { controller.Follow(wctx, follow("services"), c.Services, r.setServices) })
	wg.Go(func() { controller.Follow(wctx, follow("settings"), c.Settings, r.setSettings) })

	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-r.built:
	}
	plain, secure, err := r.listenHTTP()
	if err != nil {
		r.stop(stopWatches, 0)
		return fmt.Errorf("router: %w", err)
	}
	wg.Go(func() { r.serve("http", func() error { return r.http.ServeHTTP1(plain) }) })
	wg.Go(func() { r.serve("https", func() error { return r.http.ServeTLS(secure) }) })
	r.log.Info("router serving", "http", plain.Addr().String(), "https", secure.Addr().String(), "api", apiAddr)
	r.retryListens(ctx)
	r.stop(stopWatches, r.cfg.ShutdownGrace)
	return ctx.Err()
}

func (r *Router) listenHTTP() (plain, secure net.Listener, err error) {
	if plain, err = net.Listen("tcp", r.cfg.HTTPAddr); err != nil {
		return nil, nil, fmt.Errorf("listen on %s for HTTP: %w", r.cfg.HTTPAddr, err)
	}
	if secure, err = net.Listen("tcp", r.cfg.HTTPSAddr); err != nil {
		plain.Close()
		return nil, nil, fmt.Errorf("listen on %s for HTTPS: %w", r.cfg.HTTPSAddr, err)
	}
	return plain, secure, nil
}

// stop ends the router: no new work; what is in flight gets grace. No
// change of the routes may open a listener from now on.
func (r *Router) stop(stopWatches func(), grace time.Duration) {
	stopWatches()
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { r.http.Shutdown(ctx) })
	wg.Go(func() { r.l4.shutdown(ctx) })
	wg.Wait()
}

func (r *Router) serve(what string, serve func() error) {
	if err := serve(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
		r.log.Error("listener stopped", "listener", what, "err", err)
	}
}

// retryListens tries the ports of routes that could not listen again,
// every RetryListen, until ctx ends: another process may have let the
// port go.
func (r *Router) retryListens(ctx context.Context) {
	t := time.NewTicker(r.cfg.RetryListen)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		if r.l4.failing() {
			r.l4.apply(r.state.routes, r.state.certs)
		}
		r.mu.Unlock()
	}
}

// stickyKey reads the cluster's sticky-session key, writing a new one if
// there is none (only one router's write wins: compare-and-set on its
// absence).
func (r *Router) stickyKey(ctx context.Context) ([]byte, error) {
	c := r.cfg.Controller
	for failures := 1; ; failures++ {
		s, _, err := c.Setting(ctx, StickyKeySetting, controller.QueryOptions{})
		if err == nil {
			return hex.DecodeString(s.Value)
		}
		if controller.IsNotFound(err) {
			key := make([]byte, 32)
			rand.Read(key)
			zero := uint64(0)
			if _, err = c.PutSetting(ctx, StickyKeySetting, hex.EncodeToString(key), &zero); err == nil || controller.IsConflict(err) {
				continue // read what was stored, ours or another router's
			}
		}
		if failures == 1 {
			r.log.Warn("controller unreachable; waiting to read the sticky-session key", "err", err)
		}
		if !controller.Sleep(ctx, controller.Backoff(failures, time.Second, 10*time.Second)) {
			return nil, ctx.Err()
		}
	}
}
