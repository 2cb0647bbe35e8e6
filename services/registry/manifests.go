package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/plinth-os/plinth/services/controller"
)

// maxManifest bounds a manifest's size, as registries commonly do.
const maxManifest = 4 << 20

// regError is an error of the distribution API, as its clients read
// them.
type regError struct {
	status  int
	code    string
	message string
}

func (e *regError) write(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": e.code, "message": e.message}}})
}

func (e *regError) Error() string { return e.code + ": " + e.message }

func manifestUnknown(ref string) *regError {
	return &regError{http.StatusNotFound, "MANIFEST_UNKNOWN", "no manifest " + ref}
}

// splitManifestPath cuts "/v2/<repo>/manifests/<ref>" (or tags/list).
func splitPath(p, marker string) (repo, rest string, ok bool) {
	p, ok = strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", false
	}
	i := strings.LastIndex(p, "/"+marker+"/")
	if i <= 0 {
		return "", "", false
	}
	return p[:i], p[i+len(marker)+2:], true
}

// serveManifest serves the manifests of the distribution API: their
// bytes are blobs, their names (tags) and which repository holds them
// are the controller's.
func (s *Registry) serveManifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	var err error
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		err = s.getManifest(w, r, repo, ref)
	case http.MethodPut:
		err = s.putManifest(w, r, repo, ref)
	case http.MethodDelete:
		err = s.deleteManifest(w, r, repo, ref)
	default:
		err = &regError{http.StatusMethodNotAllowed, "UNSUPPORTED", r.Method + " on a manifest"}
	}
	s.answerError(w, r, err)
}

func (s *Registry) answerError(w http.ResponseWriter, r *http.Request, err error) {
	if err == nil {
		return
	}
	var re *regError
	if !errors.As(err, &re) {
		s.log.Warn("registry request", "method", r.Method, "path", r.URL.Path, "err", err)
		re = &regError{http.StatusInternalServerError, "UNKNOWN", err.Error()}
	}
	re.write(w)
}

// resolve finds the image ref names in repo: a digest, or a tag. A read
// that misses is tried again at the leader: the push may be a moment
// old.
func (s *Registry) resolve(ctx context.Context, repo, ref string) (controller.Image, error) {
	digest := ref
	if !strings.HasPrefix(ref, "sha256:") {
		t, err := s.tag(ctx, controller.TagID(repo, ref))
		if err != nil {
			return controller.Image{}, err
		}
		digest = t.Digest
	}
	img, err := s.cfg.Controller.Image(ctx, controller.ImageID(repo, digest), controller.QueryOptions{})
	if controller.IsNotFound(err) {
		img, err = s.cfg.Controller.Image(ctx, controller.ImageID(repo, digest), controller.QueryOptions{Consistent: true})
	}
	if controller.IsNotFound(err) {
		return img, manifestUnknown(repo + "@" + digest)
	}
	return img, err
}

func (s *Registry) tag(ctx context.Context, id string) (controller.Tag, error) {
	t, err := s.cfg.Controller.Tag(ctx, id, controller.QueryOptions{})
	if controller.IsNotFound(err) {
		t, err = s.cfg.Controller.Tag(ctx, id, controller.QueryOptions{Consistent: true})
	}
	if controller.IsNotFound(err) {
		return t, manifestUnknown(id)
	}
	return t, err
}

func (s *Registry) getManifest(w http.ResponseWriter, r *http.Request, repo, ref string) error {
	img, err := s.resolve(r.Context(), repo, ref)
	if err != nil {
		return err
	}
	h, _ := v1.NewHash(img.Digest)
	rc, err := s.blobs.Get(r.Context(), repo, h)
	if err != nil {
		return &regError{http.StatusNotFound, "MANIFEST_UNKNOWN", fmt.Sprintf("manifest %s is recorded but no registry has its bytes: push it again", img.ID)}
	}
	defer rc.Close()
	w.Header().Set("Content-Type", img.MediaType)
	w.Header().Set("Docker-Content-Digest", img.Digest)
	w.Header().Set("Content-Length", strconv.FormatInt(img.Size, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		io.Copy(w, rc)
	}
	return nil
}

// putManifest stores a manifest whose blobs are all here (or on a
// peer), copies it and them to the replicas, records it, and tags it.
func (s *Registry) putManifest(w http.ResponseWriter, r *http.Request, repo, ref string) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxManifest+1))
	if err != nil {
		return err
	}
	if len(body) > maxManifest {
		return &regError{http.StatusRequestEntityTooLarge, "MANIFEST_INVALID", fmt.Sprintf("manifest over %d bytes", maxManifest)}
	}
	sum := sha256.Sum256(body)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	if strings.HasPrefix(ref, "sha256:") && ref != digest {
		return &regError{http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("manifest sent as %s has digest %s", ref, digest)}
	}
	mediaType, blobs, err := manifestBlobs(r.Header.Get("Content-Type"), body)
	if err != nil {
		return &regError{http.StatusBadRequest, "MANIFEST_INVALID", err.Error()}
	}
	for _, b := range blobs {
		h, err := v1.NewHash(b)
		if err == nil {
			_, err = s.blobs.Stat(r.Context(), repo, h)
		}
		if err != nil {
			return &regError{http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN", fmt.Sprintf("blob %s: push the image's blobs before its manifest", b)}
		}
	}
	h, _ := v1.NewHash(digest)
	if err := s.blobs.write(h, bytes.NewReader(body)); err != nil {
		return err
	}
	if err := s.replicate(r.Context(), repo, append(slices.Clone(blobs), digest)); err != nil {
		return &regError{http.StatusServiceUnavailable, "UNAVAILABLE", err.Error()}
	}
	img := controller.Image{
		ID: controller.ImageID(repo, digest), Repo: repo, Digest: digest, MediaType: string(mediaType),
		Size: int64(len(body)), Blobs: blobs, Pushed: time.Now().UTC(),
	}
	if _, err := s.cfg.Controller.PutImage(r.Context(), img); err != nil {
		return fmt.Errorf("record image %s: %w", img.ID, err)
	}
	if !strings.HasPrefix(ref, "sha256:") {
		t := controller.Tag{ID: controller.TagID(repo, ref), Repo: repo, Tag: ref, Digest: digest}
		if _, err := s.cfg.Controller.PutTag(r.Context(), t); err != nil {
			if controller.IsInvalid(err) {
				return &regError{http.StatusBadRequest, "TAG_INVALID", err.Error()}
			}
			return fmt.Errorf("record tag %s: %w", t.ID, err)
		}
	}
	s.log.Info("manifest pushed", "repo", repo, "ref", ref, "digest", digest)
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Location", "/v2/"+repo+"/manifests/"+digest)
	w.WriteHeader(http.StatusCreated)
	return nil
}

// manifestBlobs returns a manifest's media type and the digests it
// refers to.
func manifestBlobs(contentType string, body []byte) (types.MediaType, []string, error) {
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		return "", nil, fmt.Errorf("not JSON: %v", err)
	}
	mt := types.MediaType(contentType)
	if mt == "" || mt == "application/octet-stream" {
		mt = probe.MediaType
	}
	var blobs []string
	switch {
	case mt.IsIndex():
		idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			return "", nil, err
		}
		for _, m := range idx.Manifests {
			blobs = append(blobs, m.Digest.String())
		}
	case mt.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(body))
		if err != nil {
			return "", nil, err
		}
		blobs = append(blobs, m.Config.Digest.String())
		for _, l := range m.Layers {
			if l.MediaType.IsDistributable() {
				blobs = append(blobs, l.Digest.String())
			}
		}
	default:
		return "", nil, fmt.Errorf("media type %q: push an image manifest or an index (OCI or Docker v2)", mt)
	}
	return mt, blobs, nil
}

// replicate copies blobs to the peers that hold copies besides this
// host, all at once; with fewer peers alive than wanted, it copies to
// those there are.
func (s *Registry) replicate(ctx context.Context, repo string, blobs []string) error {
	n := s.replicas(ctx) - 1
	if n <= 0 {
		return nil
	}
	all := s.peers.list(ctx)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, b := range blobs {
		h, err := v1.NewHash(b)
		if err != nil {
			return err
		}
		for _, pe := range replicasFor(all, b, n) {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				if err := s.peers.push(ctx, pe, repo, h, s.blobs); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("keep copies on %d other hosts: %w", n, errors.Join(errs...))
	}
	return nil
}

func (s *Registry) deleteManifest(w http.ResponseWriter, r *http.Request, repo, ref string) error {
	var err error
	if strings.HasPrefix(ref, "sha256:") {
		err = s.cfg.Controller.DeleteImage(r.Context(), controller.ImageID(repo, ref))
	} else {
		err = s.cfg.Controller.DeleteTag(r.Context(), controller.TagID(repo, ref))
	}
	if controller.IsNotFound(err) {
		return manifestUnknown(repo + ":" + ref)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// serveTags lists a repository's tags.
func (s *Registry) serveTags(w http.ResponseWriter, r *http.Request, repo string) {
	tags, _, err := s.cfg.Controller.Tags(r.Context(), controller.QueryOptions{})
	if err != nil {
		s.answerError(w, r, err)
		return
	}
	names := []string{}
	for _, t := range tags {
		if t.Repo == repo {
			names = append(names, t.Tag)
		}
	}
	slices.Sort(names)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"name": repo, "tags": names})
}
