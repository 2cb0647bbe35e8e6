// Package builder is the platform's `git push` endpoint: it serves each
// app's git repository over git's smart HTTP protocol, and a push to the
// app's main (or master) branch builds the pushed tree in a job on a
// cluster host, on a base image from the cluster's registry, then makes
// a release of the result and deploys it, with the output going back to
// the git client as it runs.
//
// It runs as the "builder" formation (one instance), reached through
// every host's router on GitPort.
package builder

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/deployer"
	"github.com/plinth-os/plinth/services/registry"
)

const (
	// ServerName is the DNS name in the builder's certificate, which
	// git remotes use wherever the builder runs (plinth git remote maps
	// it to a host's address).
	ServerName = "plinth-git"
	// Port is where the builder listens on its host; the routers take
	// GitPort to it.
	Port = controller.BuilderPort
	// GitPort is the routers' port for git.
	GitPort = controller.GitPort
	// RouteID is the route the builder keeps for itself.
	RouteID = controller.GitRouteID
	// ServiceName is the builder's discovery service.
	ServiceName = "builder"
	// MaxPushSetting bounds the bytes of one push; DefaultMaxPush when
	// absent.
	MaxPushSetting = "builder.max_push_bytes"
	DefaultMaxPush = 256 << 20
)

// HostAPI is what builds use of a host's API; *host.Client has it.
type HostAPI interface {
	deployer.HostAPI
	JobChanges(ctx context.Context, id string) (io.ReadCloser, error)
}

// Config is what a builder needs.
type Config struct {
	// Addr is where it listens; default ":7953".
	Addr string
	// Dir holds the repositories; TempDir the builds' scratch files.
	Dir, TempDir string
	// TLS serves git: a certificate for ServerName, and the cluster CA
	// for clients that give a certificate.
	TLS        *tls.Config
	Controller *controller.Client
	// Registry is the registry's address ("127.0.0.1:7951") and
	// RegistryTransport how to reach it.
	Registry          string
	RegistryTransport http.RoundTripper
	// Dial returns the API of the host at addr.
	Dial   func(addr string) HostAPI
	Logger *slog.Logger
}

// DefaultConfig is where a builder keeps things on a plinth host.
func DefaultConfig() Config {
	return Config{Addr: ":" + strconv.Itoa(Port), Dir: "/var/lib/plinth/builder", Registry: "127.0.0.1:" + strconv.Itoa(controller.RegistryPort)}
}

// Builder serves git and runs builds.
type Builder struct {
	cfg     Config
	log     *slog.Logger
	repos   *repos
	regOpts []remote.Option
	sets    *controller.SettingsCache
}

// New checks cfg and makes a builder.
func New(cfg Config) (*Builder, error) {
	if cfg.Controller == nil || cfg.TLS == nil || cfg.Dial == nil || cfg.RegistryTransport == nil {
		return nil, errors.New("builder: Config needs Controller, TLS, Dial and RegistryTransport")
	}
	def := DefaultConfig()
	cfg.Addr = cmp.Or(cfg.Addr, def.Addr)
	cfg.Dir = cmp.Or(cfg.Dir, def.Dir)
	cfg.Registry = cmp.Or(cfg.Registry, def.Registry)
	cfg.TempDir = cmp.Or(cfg.TempDir, cfg.Dir+"/tmp")
	for _, d := range []string{cfg.Dir, cfg.TempDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("builder: %w", err)
		}
	}
	logger := cmp.Or(cfg.Logger, slog.Default())
	opts := []remote.Option{remote.WithTransport(cfg.RegistryTransport)}
	return &Builder{
		cfg: cfg, log: logger, regOpts: opts,
		repos: &repos{dir: cfg.Dir, registry: cfg.Registry, opts: opts, locks: map[string]chan struct{}{}},
		sets:  &controller.SettingsCache{Controller: cfg.Controller, TTL: 5 * time.Second, Log: logger},
	}, nil
}

// Run serves until ctx ends, and keeps the routers' git route.
func (b *Builder) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", b.cfg.Addr)
	if err != nil {
		return fmt.Errorf("builder: listen on %s: %w", b.cfg.Addr, err)
	}
	conf := b.cfg.TLS.Clone()
	// Cluster certificates get in by their chain; other clients give
	// the token.
	conf.ClientAuth = tls.VerifyClientCertIfGiven
	srv := &http.Server{Handler: b.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(tls.NewListener(ln, conf)) }()
	go b.keepRoute(ctx)
	b.log.Info("builder serving", "addr", ln.Addr().String(), "dir", b.cfg.Dir)
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return ctx.Err()
	case err := <-done:
		return fmt.Errorf("builder: %w", err)
	}
}

// keepRoute makes the routers' TCP route to the builder when it is
// missing: TLS passes through the routers to the builder, which checks
// client certificates itself.
func (b *Builder) keepRoute(ctx context.Context) {
	for {
		_, err := b.cfg.Controller.Route(ctx, RouteID, controller.QueryOptions{})
		if controller.IsNotFound(err) {
			zero := uint64(0)
			_, err = b.cfg.Controller.PutRoute(ctx, controller.Route{ID: RouteID, Type: controller.RouteTCP, Service: ServiceName,
				Port: GitPort, Timeout: job.Duration{Duration: time.Hour}}, &zero)
			if controller.IsConflict(err) {
				err = nil
			}
		}
		if err == nil {
			return
		}
		b.log.Warn("git route", "err", err)
		if !controller.Sleep(ctx, 5*time.Second) {
			return
		}
	}
}

// Handler is the builder's HTTP API: git's smart HTTP protocol under
// /<app>.git/, for a cluster certificate or the token.
func (b *Builder) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.Write([]byte("ok\n"))
			return
		}
		byCert := r.TLS != nil && len(r.TLS.VerifiedChains) > 0
		if !byCert {
			_, pass, _ := r.BasicAuth()
			if !b.sets.TokenOK(r.Context(), registry.TokenSetting, pass) {
				w.Header().Set("WWW-Authenticate", `Basic realm="plinth git"`)
				http.Error(w, "give a cluster certificate, or the cluster's token as the password (plinth registry token; plinth git remote sets it up)", http.StatusUnauthorized)
				return
			}
		}
		app, rest, ok := splitGitPath(r.URL.Path)
		if !ok {
			http.Error(w, "want /<app>.git/...: plinth git remote -a APP gives the URL", http.StatusNotFound)
			return
		}
		if _, err := b.cfg.Controller.App(r.Context(), app, controller.QueryOptions{}); controller.IsNotFound(err) {
			http.Error(w, fmt.Sprintf("no app %s: create it with plinth apps create %s", app, app), http.StatusNotFound)
			return
		} else if err != nil {
			http.Error(w, "the controller does not answer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		b.serveGit(w, r, app, rest)
	})
}

// maxPush is the push size limit, read at each push (one read is little
// beside a push, and a change applies to the next one).
func (b *Builder) maxPush(ctx context.Context) int64 {
	s, _, err := b.cfg.Controller.Setting(ctx, MaxPushSetting, controller.QueryOptions{})
	if err != nil {
		return DefaultMaxPush
	}
	n, err := strconv.ParseInt(s.Value, 10, 64)
	if err != nil || n <= 0 {
		b.log.Warn("setting is not a positive number of bytes; the default applies", "setting", MaxPushSetting, "value", s.Value)
		return DefaultMaxPush
	}
	return n
}
