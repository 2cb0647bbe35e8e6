package registry

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/plinth-os/plinth/services/controller"
)

// peerHeader marks a request one registry makes of another: the asked
// registry answers from its own disk only, so that a blob no host has
// is not looked for in circles.
const peerHeader = "X-Plinth-Registry-Peer"

type peerKey struct{}

// fromPeer reports whether the request being served is a peer's.
func fromPeer(ctx context.Context) bool {
	v, _ := ctx.Value(peerKey{}).(bool)
	return v
}

// peers are the other hosts' registries, as the controller lists the
// alive hosts.
type peers struct {
	ctrl      *controller.Client
	self      string // this host's ID
	port      int
	transport http.RoundTripper
	log       *slog.Logger

	mu      sync.Mutex
	hosts   []controller.Host
	fetched time.Time
}

type peer struct {
	id, name, addr string
}

// hostsTTL is how long the list of hosts is used before it is read again.
const hostsTTL = 2 * time.Second

func (p *peers) list(ctx context.Context) []peer {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.fetched) > hostsTTL {
		hosts, _, err := p.ctrl.Hosts(ctx, controller.QueryOptions{})
		if err != nil {
			p.log.Warn("list hosts for peer registries", "err", err)
		} else {
			p.hosts, p.fetched = hosts, time.Now()
		}
	}
	var out []peer
	for _, h := range p.hosts {
		if h.ID == p.self || h.Status != controller.HostAlive {
			continue
		}
		ip, _, err := net.SplitHostPort(h.Addr)
		if err != nil {
			continue
		}
		out = append(out, peer{id: h.ID, name: cmp.Or(h.Hostname, h.ID), addr: net.JoinHostPort(ip, strconv.Itoa(p.port))})
	}
	return out
}

// replicasFor are the n peers that hold copies of digest besides this
// host: the highest of a hash of each host's ID and the digest
// (rendezvous hashing), so every registry picks the same hosts and a
// host's leaving moves only its own share.
func replicasFor(all []peer, digest string, n int) []peer {
	sorted := controller.Rendezvous(all, func(p peer) string { return p.id }, digest)
	return sorted[:min(n, len(sorted))]
}

func (p *peers) ref(pe peer, repo string, h v1.Hash) (name.Digest, error) {
	return name.NewDigest(pe.addr + "/" + repo + "@" + h.String())
}

func (p *peers) options(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithTransport(p.transport)}
}

// get opens blob h on peer pe.
func (p *peers) get(ctx context.Context, pe peer, repo string, h v1.Hash) (io.ReadCloser, error) {
	ref, err := p.ref(pe, repo, h)
	if err != nil {
		return nil, err
	}
	l, err := remote.Layer(ref, p.options(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("blob %s on %s: %w", h, pe.name, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("blob %s on %s: %w", h, pe.name, err)
	}
	return rc, nil
}

// push copies blob h to peer pe, unless pe has it already.
func (p *peers) push(ctx context.Context, pe peer, repo string, h v1.Hash, b *blobStore) error {
	size, ok := b.has(h)
	if !ok {
		return fmt.Errorf("blob %s is not on this host", h)
	}
	ref, err := p.ref(pe, repo, h)
	if err != nil {
		return err
	}
	l, err := partial.CompressedToLayer(localBlob{store: b, hash: h, size: size})
	if err != nil {
		return err
	}
	if err := remote.WriteLayer(ref.Context(), l, p.options(ctx)...); err != nil {
		return fmt.Errorf("copy blob %s to %s: %w", h, pe.name, err)
	}
	return nil
}

// peerTransport marks the requests it carries as a peer's.
type peerTransport struct {
	next http.RoundTripper
	self string
}

func (t peerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(peerHeader, t.self)
	return t.next.RoundTrip(r)
}

// localBlob is a blob of the store as a layer to push: only its bytes,
// digest and size are known, which is all a push needs.
type localBlob struct {
	store *blobStore
	hash  v1.Hash
	size  int64
}

func (l localBlob) Digest() (v1.Hash, error)            { return l.hash, nil }
func (l localBlob) Size() (int64, error)                { return l.size, nil }
func (l localBlob) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l localBlob) Compressed() (io.ReadCloser, error) {
	return l.store.Get(withPeer(context.Background()), "", l.hash)
}
func withPeer(ctx context.Context) context.Context { return context.WithValue(ctx, peerKey{}, true) }
