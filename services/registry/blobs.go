package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// blobStore keeps blobs by digest under dir/sha256/<hex>, and fetches a
// blob it lacks from a peer that has it (unless the request is a peer's:
// peers ask each other for what they hold, never on).
//
// It is go-containerregistry's registry's BlobHandler: the registry
// protocol (uploads, ranges, errors) is that package's.
type blobStore struct {
	dir   string
	peers *peers
}

var (
	_ ggcr.BlobHandler       = (*blobStore)(nil)
	_ ggcr.BlobStatHandler   = (*blobStore)(nil)
	_ ggcr.BlobPutHandler    = (*blobStore)(nil)
	_ ggcr.BlobDeleteHandler = (*blobStore)(nil)
)

func (b *blobStore) path(h v1.Hash) string {
	return filepath.Join(b.dir, h.Algorithm, h.Hex)
}

// has reports whether the blob is here, and its size.
func (b *blobStore) has(h v1.Hash) (int64, bool) {
	fi, err := os.Stat(b.path(h))
	if err != nil {
		return 0, false
	}
	return fi.Size(), true
}

func (b *blobStore) Stat(ctx context.Context, repo string, h v1.Hash) (int64, error) {
	if err := checkHash(h); err != nil {
		return 0, err
	}
	if size, ok := b.has(h); ok {
		b.touch(h)
		return size, nil
	}
	if fromPeer(ctx) {
		return 0, ggcr.ErrNotFound
	}
	if err := b.fetch(ctx, repo, h); err != nil {
		return 0, err
	}
	size, _ := b.has(h)
	return size, nil
}

func (b *blobStore) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	if err := checkHash(h); err != nil {
		return nil, err
	}
	f, err := os.Open(b.path(h))
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, fs.ErrNotExist) || fromPeer(ctx) {
		return nil, ggcr.ErrNotFound
	}
	if err := b.fetch(ctx, repo, h); err != nil {
		return nil, err
	}
	return os.Open(b.path(h))
}

// Put stores a blob, refusing one whose bytes do not have its digest.
func (b *blobStore) Put(_ context.Context, _ string, h v1.Hash, rc io.ReadCloser) error {
	defer rc.Close()
	return b.write(h, rc)
}

func (b *blobStore) Delete(_ context.Context, _ string, h v1.Hash) error {
	if err := checkHash(h); err != nil {
		return err
	}
	if err := os.Remove(b.path(h)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ggcr.ErrNotFound
		}
		return err
	}
	return nil
}

// errDigest: a blob's bytes do not hash to the digest it was sent as.
var errDigest = errors.New("digest mismatch")

// write stores r's bytes as blob h: into a temporary file, checked,
// synced, then renamed, so a blob under its name is always whole.
func (b *blobStore) write(h v1.Hash, r io.Reader) error {
	if err := checkHash(h); err != nil {
		return err
	}
	if _, ok := b.has(h); ok {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	dir := filepath.Join(b.dir, h.Algorithm)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".upload-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	sum := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, sum), r); err != nil {
		return fmt.Errorf("store blob %s: %w", h, err)
	}
	if got := hexSum(sum); got != h.Hex {
		return fmt.Errorf("blob sent as %s has digest sha256:%s: %w", h, got, errDigest)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), b.path(h))
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

// fetch copies blob h from the first peer that has it.
func (b *blobStore) fetch(ctx context.Context, repo string, h v1.Hash) error {
	var errs []error
	for _, p := range b.peers.list(ctx) {
		rc, err := b.peers.get(ctx, p, repo, h)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = b.write(h, rc)
		rc.Close()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", p.name, err))
	}
	if len(errs) > 0 {
		b.peers.log.Debug("blob on no peer", "digest", h.String(), "err", errors.Join(errs...))
	}
	return ggcr.ErrNotFound
}

// checkHash refuses digests the store cannot name files by.
func checkHash(h v1.Hash) error {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return fmt.Errorf("digest %s: only sha256 is supported", h)
	}
	if _, err := hex.DecodeString(h.Hex); err != nil {
		return fmt.Errorf("digest %s: not hex", h)
	}
	return nil
}

// list returns the digests of every blob here.
func (b *blobStore) list() ([]v1.Hash, error) {
	entries, err := os.ReadDir(filepath.Join(b.dir, "sha256"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []v1.Hash
	for _, e := range entries {
		if h, err := v1.NewHash("sha256:" + e.Name()); err == nil && checkHash(h) == nil {
			out = append(out, h)
		}
	}
	return out, nil
}
