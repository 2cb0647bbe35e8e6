package updater

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// BundleMediaType marks an upgrade bundle stored in the cluster's
// registry: an image whose one layer is the bundle, as it is (a tar).
const BundleMediaType = "application/vnd.plinth.upgrade-bundle.v1.tar"

// BundleRepo is the registry repository upgrade bundles are pushed to.
const BundleRepo = "plinth-upgrades"

// RegistryBundles opens bundles from the registry at addr (host:port)
// through tr.
func RegistryBundles(addr string, tr http.RoundTripper) func(ctx context.Context, ref string) (io.ReadCloser, error) {
	return func(ctx context.Context, ref string) (io.ReadCloser, error) {
		r, err := name.ParseReference(addr + "/" + ref)
		if err != nil {
			return nil, err
		}
		img, err := remote.Image(r, remote.WithContext(ctx), remote.WithTransport(tr))
		if err != nil {
			return nil, err
		}
		layers, err := img.Layers()
		if err != nil {
			return nil, err
		}
		if len(layers) != 1 {
			return nil, fmt.Errorf("%s has %d layers; an upgrade bundle image has one", ref, len(layers))
		}
		return layers[0].Compressed()
	}
}
