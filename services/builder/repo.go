package builder

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/storage"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// An app's git repository lives on the builder's host as a cache; what
// makes it durable is the registry, where every push's pack is a blob
// (replicated as image layers are) and the image tagged <app>:git lists
// the packs in order with the refs as a label. A builder that starts on
// another host, or finds its copy older than the registry's, makes the
// repository again from there.

const (
	// RepoTag is the tag, in the app's repository, of the image that
	// holds its git repository.
	RepoTag   = "git"
	refsLabel = "dev.plinth.git.refs"
	packsDir  = "plinth-packs"
)

// packMediaType marks a layer that is a git pack, not a tar.
const packMediaType types.MediaType = "application/vnd.plinth.git.pack"

// repos are the builder's repositories, one push or fetch of an app at a
// time.
type repos struct {
	dir      string
	registry string
	opts     []remote.Option

	mu    sync.Mutex
	locks map[string]chan struct{}
}

// repo is one app's repository, locked while it is used.
type repo struct {
	app    string
	dir    string
	storer storer.Storer
	rs     *repos
	// packs are the digests of the pushes' packs, oldest first.
	packs   []string
	changed bool
}

// lock takes app's lock; wait says whether to wait for it.
func (rs *repos) lock(ctx context.Context, app string, wait bool) error {
	for {
		rs.mu.Lock()
		held, ok := rs.locks[app]
		if !ok {
			rs.locks[app] = make(chan struct{})
			rs.mu.Unlock()
			return nil
		}
		rs.mu.Unlock()
		if !wait {
			return refuse(409, "another push to %s is being built: one at a time per app; push again once it ends (plinth builds -a %s)", app, app)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-held:
		}
	}
}

func (r *repo) unlock() {
	r.rs.mu.Lock()
	defer r.rs.mu.Unlock()
	close(r.rs.locks[r.app])
	delete(r.rs.locks, r.app)
}

// open locks app's repository for a fetch, waiting for a push that holds it.
func (rs *repos) open(ctx context.Context, app string) (*repo, error) {
	return rs.openLocked(ctx, app, true)
}

// tryOpen locks app's repository for a push, refused while another holds it.
func (rs *repos) tryOpen(ctx context.Context, app string) (*repo, error) {
	return rs.openLocked(ctx, app, false)
}

func (rs *repos) openLocked(ctx context.Context, app string, wait bool) (*repo, error) {
	if err := rs.lock(ctx, app, wait); err != nil {
		return nil, err
	}
	r := &repo{app: app, dir: filepath.Join(rs.dir, app+".git"), rs: rs}
	if err := r.load(ctx); err != nil {
		r.unlock()
		return nil, err
	}
	return r, nil
}

// looseStorer hides the filesystem storage's pack writer, so that a
// pushed pack is unpacked into objects (its deltas resolved, also those
// against objects of earlier pushes: git sends thin packs) rather than
// kept as a pack that needs others to be read.
type looseStorer struct{ storage.Storer }

// load opens the local copy, made again from the registry when it is not
// the registry's latest.
func (r *repo) load(ctx context.Context) error {
	latest, err := r.rs.latest(ctx, r.app)
	if err != nil {
		return err
	}
	// A copy that is not the registry's latest (older, or of an app
	// destroyed since) is made again; one never saved is kept as it is.
	data, _ := os.ReadFile(filepath.Join(r.dir, packsDir, "saved"))
	stale := string(data) != latest
	if stale {
		if err := os.RemoveAll(r.dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(r.dir, packsDir), 0o700); err != nil {
		return err
	}
	r.storer = looseStorer{filesystem.NewStorage(osfs.New(r.dir), cache.NewObjectLRUDefault())}
	if _, err := r.storer.Reference(plumbing.HEAD); errors.Is(err, plumbing.ErrReferenceNotFound) {
		if err := r.storer.SetReference(plumbing.NewSymbolicReference(plumbing.HEAD, "refs/heads/main")); err != nil {
			return err
		}
	}
	r.packs = readLines(filepath.Join(r.dir, packsDir, "list"))
	if stale && latest != "" {
		return r.restore(ctx, latest)
	}
	return nil
}

// latest is the digest of the registry's image of app's repository, ""
// when there is none.
func (rs *repos) latest(ctx context.Context, app string) (string, error) {
	ref, err := name.ParseReference(rs.registry + "/" + app + ":" + RepoTag)
	if err != nil {
		return "", err
	}
	desc, err := remote.Head(ref, append(rs.opts, remote.WithContext(ctx))...)
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == 404 {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s's repository from the registry: %w", app, err)
	}
	return desc.Digest.String(), nil
}

// restore makes the repository from the registry's image digest.
func (r *repo) restore(ctx context.Context, digest string) error {
	ref, err := name.ParseReference(r.rs.registry + "/" + r.app + "@" + digest)
	if err != nil {
		return err
	}
	img, err := remote.Image(ref, append(r.rs.opts, remote.WithContext(ctx))...)
	if err != nil {
		return fmt.Errorf("fetch %s's repository from the registry: %w", r.app, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	r.packs = nil
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("fetch pack %s: %w", d, err)
		}
		err = r.addPack(rc, d.Hex)
		rc.Close()
		if err != nil {
			return fmt.Errorf("pack %s of %s's repository: %w", d, r.app, err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	refs := map[string]string{}
	if err := json.Unmarshal([]byte(cfg.Config.Labels[refsLabel]), &refs); err != nil {
		return fmt.Errorf("refs of %s's repository: %w", r.app, err)
	}
	for n, h := range refs {
		if err := r.storer.SetReference(plumbing.NewHashReference(plumbing.ReferenceName(n), plumbing.NewHash(h))); err != nil {
			return err
		}
	}
	return r.markSaved(digest)
}

// addPack unpacks a pack into the repository and keeps it, named by its
// sha256, for the registry.
func (r *repo) addPack(rd io.Reader, digest string) error {
	dst := filepath.Join(r.dir, packsDir, digest+".pack")
	tmp, err := os.CreateTemp(filepath.Join(r.dir, packsDir), "recv-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), rd); err != nil {
		return err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if digest != "" && got != digest {
		return fmt.Errorf("pack digest %s, want %s", got, digest)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := packfile.UpdateObjectStorage(r.storer, bufio.NewReader(tmp)); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(filepath.Dir(dst), got+".pack")); err != nil {
		return err
	}
	if !slices.Contains(r.packs, got) {
		r.packs = append(r.packs, got)
	}
	return os.WriteFile(filepath.Join(r.dir, packsDir, "list"), []byte(strings.Join(r.packs, "\n")+"\n"), 0o600)
}

// receive takes a push's pack; one larger than limit is refused with
// nothing kept.
func (r *repo) receive(ctx context.Context, pack io.Reader, counted *limitReader, limit int64) error {
	err := r.addPack(pack, "")
	if counted.over || errors.Is(err, errTooLarge) {
		size := fmt.Sprintf("%d MB", limit>>20)
		if limit < 1<<20 {
			size = fmt.Sprintf("%d bytes", limit)
		}
		return fmt.Errorf("the push is over %s (setting %s): keep large files out of the repository", size, MaxPushSetting)
	}
	if err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	r.changed = true
	return ctx.Err()
}

// ref is where name points, the zero hash when it does not exist.
func (r *repo) ref(n plumbing.ReferenceName) (plumbing.Hash, error) {
	ref, err := r.storer.Reference(n)
	if errors.Is(err, plumbing.ErrReferenceNotFound) {
		return plumbing.ZeroHash, nil
	}
	if err != nil {
		return plumbing.ZeroHash, err
	}
	return ref.Hash(), nil
}

// setRef points name at h, or removes it for the zero hash. HEAD
// follows the deploy branch pushed last (main or master), so that a
// clone checks out what serves.
func (r *repo) setRef(n plumbing.ReferenceName, h plumbing.Hash) error {
	r.changed = true
	if h.IsZero() {
		return r.storer.RemoveReference(n)
	}
	if err := r.storer.SetReference(plumbing.NewHashReference(n, h)); err != nil {
		return err
	}
	if isDeployBranch(n) {
		return r.storer.SetReference(plumbing.NewSymbolicReference(plumbing.HEAD, n))
	}
	return nil
}

func (r *repo) hasObject(h plumbing.Hash) bool {
	return r.storer.HasEncodedObject(h) == nil
}

func (r *repo) hasCommit(h plumbing.Hash) bool {
	_, err := object.GetCommit(r.storer, h)
	return err == nil
}

// isAncestor reports whether old is in new's history.
func (r *repo) isAncestor(old, new plumbing.Hash) bool {
	o, err := object.GetCommit(r.storer, old)
	if err != nil {
		return false
	}
	n, err := object.GetCommit(r.storer, new)
	if err != nil {
		return false
	}
	ok, err := o.IsAncestor(n)
	return err == nil && ok
}

// save pushes the repository (its packs and refs) to the registry when
// this push changed it.
func (r *repo) save(ctx context.Context) error {
	if !r.changed {
		return nil
	}
	refs := map[string]string{}
	iter, err := r.storer.IterReferences()
	if err != nil {
		return err
	}
	iter.ForEach(func(ref *plumbing.Reference) error {
		if ref.Type() == plumbing.HashReference {
			refs[ref.Name().String()] = ref.Hash().String()
		}
		return nil
	})
	data, _ := json.Marshal(refs)
	img := empty.Image
	for _, p := range r.packs {
		b, err := os.ReadFile(filepath.Join(r.dir, packsDir, p+".pack"))
		if err != nil {
			return err
		}
		if img, err = mutate.AppendLayers(img, static.NewLayer(b, packMediaType)); err != nil {
			return err
		}
	}
	img, err = mutate.Config(img, v1.Config{Labels: map[string]string{refsLabel: string(data)}})
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(r.rs.registry + "/" + r.app + ":" + RepoTag)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img, append(r.rs.opts, remote.WithContext(ctx))...); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	return r.markSaved(d.String())
}

func (r *repo) markSaved(digest string) error {
	r.changed = false
	return os.WriteFile(filepath.Join(r.dir, packsDir, "saved"), []byte(digest), 0o600)
}

func readLines(p string) []string {
	data, _ := os.ReadFile(p)
	return strings.Fields(string(data))
}
