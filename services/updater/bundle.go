package updater

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/services/controller"
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

// BundleImage makes an upgrade bundle a registry image (its one layer
// is the bundle) and reads the version it carries. The hosts check the
// signature; a file that is no bundle is refused here already.
func BundleImage(data []byte) (v1.Image, image.Manifest, error) {
	var m image.Manifest
	_, err := image.ReadBundle(bytes.NewReader(data), int64(len(data)), func(man, _ []byte) error {
		return json.Unmarshal(man, &m)
	})
	if err != nil {
		return nil, m, err
	}
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(data, types.MediaType(BundleMediaType)))
	return img, m, err
}

// BundleTag is the registry tag of a bundle of version v.
func BundleTag(v string) string {
	out := []rune{}
	for _, r := range v {
		if r == '.' || r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			out = append(out, r)
		} else {
			out = append(out, '-')
		}
	}
	return strings.TrimLeft(string(out), ".-")
}

// NewUpgrade is the record that starts an upgrade to m, whose bundle
// image (pushed to BundleRepo) has digest.
func NewUpgrade(m image.Manifest, digest string, allowDowngrade bool, now time.Time) controller.Upgrade {
	return controller.Upgrade{
		ID:             BundleTag(m.Version) + "-" + now.UTC().Format("20060102T150405"),
		Version:        m.Version,
		Serial:         m.Serial,
		Bundle:         BundleRepo + "@" + digest,
		AllowDowngrade: allowDowngrade,
		State:          controller.UpgradeRunning,
	}
}

// Writer writes an upgrade record.
type Writer interface {
	PutUpgrade(ctx context.Context, u controller.Upgrade, cas *uint64) (controller.Upgrade, error)
	Upgrade(ctx context.Context, id string, q controller.QueryOptions) (controller.Upgrade, controller.QueryMeta, error)
}

// Start records a new upgrade, trying again while the controller is
// between leaders (a write may then have happened or not: a conflict on
// a later try is this same upgrade when the record names its bundle).
func Start(ctx context.Context, c Writer, up controller.Upgrade) (controller.Upgrade, error) {
	zero := uint64(0)
	for try := 0; ; try++ {
		out, err := c.PutUpgrade(ctx, up, &zero)
		if err == nil {
			return out, nil
		}
		if try > 0 && controller.IsConflict(err) {
			if cur, _, gerr := c.Upgrade(ctx, up.ID, controller.QueryOptions{Consistent: true}); gerr == nil && cur.Bundle == up.Bundle {
				return cur, nil
			}
		}
		var apiErr *controller.APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable || try >= 30 {
			return controller.Upgrade{}, err
		}
		select {
		case <-ctx.Done():
			return controller.Upgrade{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
