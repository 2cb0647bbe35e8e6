// Package registry is the platform's image registry: on every host, an
// OCI distribution API (push and pull, as docker, podman, skopeo and
// crane speak it) whose blobs are files on the host's data partition,
// content-addressed, copied at push to the registries of other hosts
// (setting registry.replicas, default 2 copies in all), and fetched by
// digest from a peer that has them when asked for one this host lacks.
// Manifests are blobs too; which repository holds which manifest, and
// the tags, are the controller's.
//
// The protocol's blob side (uploads, ranges) is go-containerregistry's
// registry package; this package gives it the store and serves the
// manifests itself. Hosts pull their jobs' images from their own
// registry.
package registry

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/services/controller"
)

// Settings the registry reads.
const (
	// ReplicasSetting is how many hosts keep each blob (this one
	// included); default DefaultReplicas.
	ReplicasSetting = "registry.replicas"
	// TokenSetting holds the hex SHA-256 of the token that lets clients
	// without a cluster certificate in (docker login with any user
	// name and the token as password).
	TokenSetting = "registry.token_sha256"
)

// DefaultReplicas is how many hosts keep each blob without the setting.
const DefaultReplicas = 2

// Config is what a registry needs; DefaultConfig fills the rest.
type Config struct {
	Controller *controller.Client
	// HostID is this host's node ID: it is not its own peer.
	HostID string
	// Addr is where the registry listens.
	Addr string
	// Dir holds the blobs.
	Dir string
	// TLS serves the API: its ClientCAs let cluster certificates in,
	// and clients without one may give the token.
	TLS *tls.Config
	// PeerTLS calls the other hosts' registries (a certificate of the
	// cluster CA).
	PeerTLS *tls.Config
	// Host, when set, is this host's API: the images it pulled from the
	// registry that no image record names any more are removed.
	Host   HostImages
	Logger *slog.Logger
}

// DefaultConfig listens on the registry's port.
func DefaultConfig() Config {
	return Config{
		Addr: ":" + strconv.Itoa(controller.RegistryPort),
		Dir:  "/var/lib/plinth/registry",
	}
}

// Registry is one host's registry.
type Registry struct {
	cfg   Config
	log   *slog.Logger
	blobs *blobStore
	peers *peers
	proto http.Handler // go-containerregistry's, for blobs
	sets  *controller.SettingsCache

	mu sync.Mutex // guards what collect shares
}

// New checks cfg and makes a registry.
func New(cfg Config) (*Registry, error) {
	if cfg.Controller == nil || cfg.HostID == "" || cfg.TLS == nil || cfg.PeerTLS == nil {
		return nil, errors.New("registry: Config needs Controller, HostID, TLS and PeerTLS")
	}
	def := DefaultConfig()
	cfg.Addr = cmp.Or(cfg.Addr, def.Addr)
	cfg.Dir = cmp.Or(cfg.Dir, def.Dir)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	_, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("registry: address %q: %w", cfg.Addr, err)
	}
	p, _ := strconv.Atoi(port)
	if p == 0 {
		p = controller.RegistryPort
	}
	s := &Registry{cfg: cfg, log: logger, sets: &controller.SettingsCache{Controller: cfg.Controller, TTL: settingsTTL, Log: logger}}
	s.peers = &peers{
		ctrl: cfg.Controller, self: cfg.HostID, port: p, log: logger,
		transport: peerTransport{next: imagestore.TLSTransport(cfg.PeerTLS), self: cfg.HostID},
	}
	s.blobs = &blobStore{dir: cfg.Dir, peers: s.peers}
	s.proto = ggcr.New(ggcr.WithBlobHandler(s.blobs), ggcr.Logger(log.New(slogWriter{logger}, "", 0)))
	return s, nil
}

// Run serves until ctx ends.
func (s *Registry) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("registry: listen on %s: %w", s.cfg.Addr, err)
	}
	conf := s.cfg.TLS.Clone()
	// Cluster certificates get in by their chain; other clients give
	// the token.
	conf.ClientAuth = tls.VerifyClientCertIfGiven
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: log.New(slogWriter{s.log}, "", 0)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(tls.NewListener(ln, conf)) }()
	go s.collect(ctx)
	s.log.Info("registry serving", "addr", ln.Addr().String(), "dir", s.cfg.Dir)
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return ctx.Err()
	case err := <-done:
		return fmt.Errorf("registry: %w", err)
	}
}

// Handler is the registry's HTTP API, for a server whose TLS config asks
// for client certificates.
func (s *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		byCert := r.TLS != nil && len(r.TLS.VerifiedChains) > 0
		if !byCert && !s.tokenOK(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="plinth registry"`)
			(&regError{http.StatusUnauthorized, "UNAUTHORIZED", "give a cluster certificate, or the registry token as the password (plinth registry token)"}).write(w)
			return
		}
		if byCert && r.Header.Get(peerHeader) != "" {
			r = r.WithContext(withPeer(r.Context()))
		}
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		if repo, ref, ok := splitPath(r.URL.Path, "manifests"); ok {
			s.serveManifest(w, r, repo, ref)
			return
		}
		if repo, rest, ok := splitPath(r.URL.Path, "tags"); ok && rest == "list" {
			s.serveTags(w, r, repo)
			return
		}
		s.proto.ServeHTTP(w, r)
	})
}

// tokenOK checks a request's basic-auth password against the token's
// hash in the settings.
func (s *Registry) tokenOK(r *http.Request) bool {
	_, pass, ok := r.BasicAuth()
	return ok && s.sets.TokenOK(r.Context(), TokenSetting, pass)
}

// replicas is how many hosts keep each blob.
func (s *Registry) replicas(ctx context.Context) int {
	n, err := strconv.Atoi(s.setting(ctx, ReplicasSetting))
	if err != nil || n < 1 {
		return DefaultReplicas
	}
	return n
}

// settingsTTL is how long settings read are used.
const settingsTTL = 5 * time.Second

func (s *Registry) setting(ctx context.Context, key string) string { return s.sets.Get(ctx, key) }

// slogWriter passes go-containerregistry's log lines to slog at debug.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}
