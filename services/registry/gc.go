package registry

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/services/controller"
)

// HostImages is what the registry uses of its host's API to remove the
// images the host pulled and no image record names any more;
// *host.Client has it.
type HostImages interface {
	Images(ctx context.Context) ([]imagestore.Image, error)
	RemoveImage(ctx context.Context, ref string) error
}

var _ HostImages = (*host.Client)(nil)

// gcEvery is how often the registry collects when no image record
// changed.
const gcEvery = 10 * time.Minute

// collect removes garbage each time the image records change: the
// blobs here no record refers to, untouched for registry.gc_grace (a
// push in progress has no record yet), and the images the host pulled
// from its registry that no record names (the host keeps those its jobs
// run).
func (s *Registry) collect(ctx context.Context) {
	changed := make(chan struct{}, 1)
	var images []controller.Image
	loaded := make(chan struct{})
	go controller.Follow(ctx, controller.FollowConfig{What: "images", Log: s.log}, s.cfg.Controller.Images, func(imgs []controller.Image) {
		s.mu.Lock()
		images = imgs
		s.mu.Unlock()
		select {
		case <-loaded:
		default:
			close(loaded)
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	select {
	case <-ctx.Done():
		return
	case <-loaded:
	}
	for {
		s.mu.Lock()
		current := images
		s.mu.Unlock()
		wait := gcEvery
		if busy := s.gc(ctx, current); busy {
			wait = gcRetry
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(wait):
		}
	}
}

// gcRetry is how soon a collection that found an unused image still run
// by a job (being stopped, say) looks again.
const gcRetry = 30 * time.Second

// gc collects once; busy says an image to remove was still in use.
func (s *Registry) gc(ctx context.Context, images []controller.Image) (busy bool) {
	referenced := map[string]bool{}
	named := map[string]bool{}
	for _, img := range images {
		referenced[img.Digest] = true
		for _, b := range img.Blobs {
			referenced[b] = true
		}
		named[controller.RegistryImage(img.ID)] = true
	}
	grace := controller.DefaultGCGrace
	if v, err := time.ParseDuration(s.setting(ctx, controller.GCGraceSetting)); err == nil {
		grace = v
	}
	blobs, err := s.blobs.list()
	if err != nil {
		s.log.Warn("gc: list blobs", "err", err)
	}
	removed := 0
	for _, h := range blobs {
		if referenced[h.String()] || s.blobs.touchedWithin(h, grace) {
			continue
		}
		if err := os.Remove(s.blobs.path(h)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("gc: remove blob", "digest", h.String(), "err", err)
			continue
		}
		removed++
	}
	if removed > 0 {
		s.log.Info("gc: blobs removed", "count", removed)
	}
	if s.cfg.Host == nil {
		return false
	}
	pulled, err := s.cfg.Host.Images(ctx)
	if err != nil {
		s.log.Warn("gc: list the host's images", "err", err)
		return true
	}
	prefix := controller.RegistryImage("")
	for _, img := range pulled {
		for _, n := range img.Names {
			if !strings.HasPrefix(n, prefix) || named[n] {
				continue
			}
			err := s.cfg.Host.RemoveImage(ctx, img.ID)
			var apiErr *host.APIError
			switch {
			case errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusConflict:
				// A job runs it: it goes when the job does.
				busy = true
			case err != nil:
				s.log.Warn("gc: remove the host's image", "image", n, "err", err)
			default:
				s.log.Info("gc: host image removed", "image", n)
			}
			break
		}
	}
	return busy
}

// touchedWithin reports whether blob h was written or asked for within
// d.
func (b *blobStore) touchedWithin(h v1.Hash, d time.Duration) bool {
	fi, err := os.Stat(b.path(h))
	return err == nil && time.Since(fi.ModTime()) < d
}

// touch marks blob h as asked for: a push that found it here refers to
// it before its manifest arrives.
func (b *blobStore) touch(h v1.Hash) {
	now := time.Now()
	os.Chtimes(b.path(h), now, now)
}
