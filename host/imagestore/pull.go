package imagestore

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// FromRegistry reports whether ref names an image in a registry that
// Pull can fetch: its first component is a registry's host (it has a
// port or a dot), as in "10.0.0.1:7951/app@sha256:…".
func FromRegistry(ref string) bool {
	first, _, ok := strings.Cut(ref, "/")
	return ok && strings.ContainsAny(first, ".:")
}

// Pull imports the image ref names from its registry by the OCI
// distribution protocol, unless the store has it under that name
// already, and returns it. Of a multi-platform image it pulls the linux
// variant for this machine. opts are go-containerregistry's remote
// options: the transport that holds the registry's credentials.
//
// Like Import it is all or nothing, and layers the store has are not
// fetched again.
func (s *Store) Pull(ctx context.Context, ref string, opts ...remote.Option) (Image, error) {
	if img, err := s.Get(ref); err == nil {
		return img, nil
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	// One pull at a time: two jobs of one image starting together fetch
	// it once.
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	if img, err := s.Get(ref); err == nil {
		return img, nil
	}
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	opts = append(opts, remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
	img, err := remote.Image(r, opts...)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	imp := &importer{store: s, pending: map[string]pendingLayer{}}
	defer imp.discard()
	rec, err := imp.prepare(ctx, source{img: img, names: []string{ref}, what: ref})
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := imp.commit(); err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	imgs, err := s.addRecords([]*record{rec})
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	return imgs[0], nil
}

// TLSTransport is a registry client's transport that always speaks TLS
// with conf: go-containerregistry speaks plain HTTP to registries named
// by a private or loopback address, and the platform's registries serve
// TLS only.
func TLSTransport(conf *tls.Config) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = conf
	return HTTPSOnly(t)
}

// HTTPSOnly makes next's plain-HTTP requests HTTPS ones: next must hold
// the TLS config (TLSTransport makes one).
func HTTPSOnly(next http.RoundTripper) http.RoundTripper { return httpsOnly{next} }

type httpsOnly struct{ next http.RoundTripper }

func (h httpsOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "http" {
		r = r.Clone(r.Context())
		r.URL.Scheme = "https"
	}
	return h.next.RoundTrip(r)
}
