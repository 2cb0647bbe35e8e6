package imagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// Import imports every image in the archive at path: a `docker save`
// archive, or an OCI image layout (a directory, or a tar of one). Of a
// multi-platform image it imports the linux variant for this machine's
// architecture. A layer the store already has is not read again.
//
// Import is all or nothing: if any layer of any image fails (its content
// does not match the image's config, it tries to leave its directory…),
// the store is left as it was.
func (s *Store) Import(ctx context.Context, path string) ([]Image, error) {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()

	srcs, cleanup, err := openArchive(path, s.path("tmp"))
	if err != nil {
		return nil, err
	}
	defer cleanup()

	imp := &importer{store: s, pending: map[string]pendingLayer{}}
	defer imp.discard()
	var recs []*record
	for _, src := range srcs {
		r, err := imp.prepare(ctx, src)
		if err != nil {
			return nil, fmt.Errorf("import %s: %s: %w", path, src.what, err)
		}
		recs = append(recs, r)
	}
	if err := imp.commit(); err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	imgs, err := s.addRecords(recs)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	return imgs, nil
}

// source is one image of an archive.
type source struct {
	img   v1.Image
	names []string
	// what names the image in errors.
	what string
}

// importer unpacks the new layers of one archive's images into tmp/ and
// moves them under layers/ once all are verified.
type importer struct {
	store   *Store
	pending map[string]pendingLayer // by diffID
	// sizes of the layers already in the store, from its image records;
	// loaded when first needed.
	sizes map[string]int64
}

type pendingLayer struct {
	dir  string
	size int64
}

// prepare unpacks the layers of src the store lacks and returns its
// record.
func (imp *importer) prepare(ctx context.Context, src source) (*record, error) {
	raw, err := src.img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	sum := sha256.Sum256(raw)
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if (cfg.OS != "" && cfg.OS != "linux") || (cfg.Architecture != "" && cfg.Architecture != runtime.GOARCH) {
		return nil, fmt.Errorf("image is for %s/%s and this host is linux/%s: import the linux/%s variant", cfg.OS, cfg.Architecture, runtime.GOARCH, runtime.GOARCH)
	}
	layers, err := src.img.Layers()
	if err != nil {
		return nil, fmt.Errorf("list layers: %w", err)
	}
	diffIDs := cfg.RootFS.DiffIDs
	if len(layers) != len(diffIDs) {
		return nil, fmt.Errorf("manifest lists %d layers but the config %d: the archive is corrupt; export the image again", len(layers), len(diffIDs))
	}
	r := &record{
		ID:    "sha256:" + hex.EncodeToString(sum[:]),
		Names: src.names,
		Config: ImageConfig{
			Env:        cfg.Config.Env,
			Entrypoint: cfg.Config.Entrypoint,
			Cmd:        cfg.Config.Cmd,
			WorkingDir: cfg.Config.WorkingDir,
			User:       cfg.Config.User,
		},
	}
	for i, l := range layers {
		d := diffIDs[i]
		if d.Algorithm != "sha256" || len(d.Hex) != 64 || !isHex(d.Hex) {
			return nil, fmt.Errorf("layer %d: unsupported diffID %q (only sha256 is)", i+1, d)
		}
		size, err := imp.layer(ctx, d.String(), l)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i+1, d, err)
		}
		r.Layers = append(r.Layers, layerRecord{DiffID: d.String(), Size: size})
	}
	return r, nil
}

// layer makes sure the layer with diffID is in the store or pending, and
// returns its size.
func (imp *importer) layer(ctx context.Context, diffID string, l v1.Layer) (int64, error) {
	if p, ok := imp.pending[diffID]; ok {
		return p.size, nil
	}
	if size, ok, err := imp.existing(diffID); err != nil || ok {
		return size, err
	}
	dir, err := os.MkdirTemp(imp.store.path("tmp"), "layer-")
	if err != nil {
		return 0, err
	}
	imp.pending[diffID] = pendingLayer{dir: dir} // so discard removes it
	// MkdirTemp made it 0700; the layer's root is every job's "/"
	// ancestor in lowerdir.
	if err := os.Chmod(dir, 0o755); err != nil {
		return 0, err
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return 0, fmt.Errorf("open: %w", err)
	}
	defer rc.Close()
	got, size, err := unpack(ctx, dir, rc)
	if err != nil {
		return 0, err
	}
	if got != diffID {
		return 0, fmt.Errorf("content has diffID %s, not the %s the image's config lists: the archive is corrupt or was tampered with; export the image again", got, diffID)
	}
	imp.pending[diffID] = pendingLayer{dir: dir, size: size}
	return size, nil
}

// existing reports whether the store has the layer diffID, and its size.
func (imp *importer) existing(diffID string) (int64, bool, error) {
	dir := imp.store.layerDir(diffID)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	} else if err != nil {
		return 0, false, err
	}
	if imp.sizes == nil {
		recs, err := imp.store.records()
		if err != nil {
			return 0, false, err
		}
		imp.sizes = map[string]int64{}
		for _, r := range recs {
			for _, l := range r.Layers {
				imp.sizes[l.DiffID] = l.Size
			}
		}
	}
	if size, ok := imp.sizes[diffID]; ok {
		return size, true, nil
	}
	// A layer no image references any more, left for GC.
	size, err := treeSize(dir)
	return size, err == nil, err
}

// treeSize sums the sizes of the regular files under dir, counting
// hardlinked files once.
func treeSize(dir string) (int64, error) {
	var size int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if ino := info.Sys().(*syscall.Stat_t).Ino; !seen[ino] {
			seen[ino] = true
			size += info.Size()
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("size of layer %s: %w", dir, err)
	}
	return size, nil
}

// commit moves the pending layers under layers/.
func (imp *importer) commit() error {
	if len(imp.pending) == 0 {
		return nil
	}
	// A layer must not appear under layers/ before its files are on disk:
	// after a crash, it would look complete.
	if err := syncFS(imp.store.path("tmp")); err != nil {
		return err
	}
	for diffID, p := range imp.pending {
		err := os.Rename(p.dir, imp.store.layerDir(diffID))
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			continue // a concurrent import got there first; discard removes ours
		}
		if err != nil {
			return fmt.Errorf("add layer %s: %w", diffID, err)
		}
		delete(imp.pending, diffID)
	}
	return nil
}

// discard removes the layers that were not committed.
func (imp *importer) discard() {
	for _, p := range imp.pending {
		os.RemoveAll(p.dir)
	}
}

func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// addRecords writes the records of newly imported images and returns the
// images. An image imported before keeps its names and gains the new
// ones; a name moves to the image imported under it last.
func (s *Store) addRecords(recs []*record) ([]Image, error) {
	s.recordMu.Lock()
	defer s.recordMu.Unlock()
	existing, err := s.records()
	if err != nil {
		return nil, err
	}
	byID := map[string]*record{}
	for _, r := range existing {
		byID[r.ID] = r
	}
	changed := map[string]bool{}
	var order []string
	for _, r := range recs {
		for _, other := range byID {
			if other.ID == r.ID {
				continue
			}
			kept := slices.DeleteFunc(slices.Clone(other.Names), func(n string) bool { return hasName(r.Names, n) })
			if len(kept) != len(other.Names) {
				other.Names = kept
				changed[other.ID] = true
			}
		}
		if old, ok := byID[r.ID]; ok {
			for _, n := range old.Names {
				if !hasName(r.Names, n) {
					r.Names = append(r.Names, n)
				}
			}
		}
		byID[r.ID] = r
		changed[r.ID] = true
		if !slices.Contains(order, r.ID) {
			order = append(order, r.ID)
		}
	}
	for id := range changed {
		if err := s.writeRecord(byID[id]); err != nil {
			return nil, err
		}
	}
	imgs := make([]Image, 0, len(order))
	for _, id := range order {
		imgs = append(imgs, byID[id].image())
	}
	return imgs, nil
}

func hasName(names []string, n string) bool {
	return slices.ContainsFunc(names, func(m string) bool { return canonicalName(m) == canonicalName(n) })
}
