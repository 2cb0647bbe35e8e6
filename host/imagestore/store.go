// Package imagestore is a host's content-addressed store of container
// images under /var: it imports images from `docker save` archives and OCI
// image layouts, unpacks each layer once (whichever images share it),
// assembles a job's root filesystem from an image's layers with overlayfs,
// and garbage-collects layers no image or job uses any more.
//
// It does not run containers (package container does) and does not talk
// to registries: images arrive as files.
//
// On disk, under the store's directory:
//
//	layers/<hex>/      a layer unpacked, named by its diffID (the sha256 of
//	                   the uncompressed layer tar); overlayfs whiteouts and
//	                   opaque directories already in overlay form
//	images/<hex>.json  an image record, named by the image ID (the sha256
//	                   of the image's config): its names, layers and the
//	                   parts of its config that say how to run it
//	tmp/               work in progress, emptied by Open and GC
//
// A layer appears under layers/ only once it is completely unpacked and
// its content matched its diffID, and an image record only once all its
// layers are there, so a crash leaves at worst unreferenced layers (for
// GC) and junk under tmp/. One Store at a time may use a directory.
package imagestore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
)

// ErrNotFound is returned (wrapped) by Get, Remove and Mount for a
// reference that names no imported image.
var ErrNotFound = errors.New("image not found")

// Image is an imported image.
type Image struct {
	// ID is "sha256:" and the hex sha256 of the image's config.
	ID string `json:"id"`
	// Names are the name:tag references the image was imported under; a
	// name belongs to one image at a time, the latest imported under it.
	Names []string `json:"names"`
	// Layers are the image's layer diffIDs ("sha256:…"), base first.
	Layers []string `json:"layers"`
	// Config says how to run the image.
	Config ImageConfig `json:"config"`
	// Size is the sum of the sizes of the regular files in its layers.
	Size int64 `json:"size"`
}

// ImageConfig is the part of an image's config that says how to run it.
type ImageConfig struct {
	Env        []string `json:"env,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// record is an image as images/<hex>.json holds it.
type record struct {
	ID     string        `json:"id"`
	Names  []string      `json:"names,omitempty"`
	Layers []layerRecord `json:"layers"`
	Config ImageConfig   `json:"config"`
}

type layerRecord struct {
	DiffID string `json:"diffID"`
	// Size is the sum of the sizes of the layer's regular files.
	Size int64 `json:"size"`
}

func (r *record) image() Image {
	img := Image{ID: r.ID, Names: slices.Clone(r.Names), Config: r.Config}
	for _, l := range r.Layers {
		img.Layers = append(img.Layers, l.DiffID)
		img.Size += l.Size
	}
	return img
}

// Store is an image store in one directory. Its methods may be called
// concurrently.
type Store struct {
	dir string

	// gcMu is held shared by everything that reads or adds layers and
	// exclusively by GC, so GC never removes a layer an import or a
	// mount is about to use.
	gcMu sync.RWMutex
	// recordMu serialises changes to image records (names move between
	// records, so a change may touch several).
	recordMu sync.Mutex
	// pullMu serialises pulls.
	pullMu sync.Mutex
	// shiftMu serialises making layer copies for user namespaces.
	shiftMu sync.Mutex
}

// Open opens the store in dir (for example /var/lib/plinth/images),
// creating it if needed, and clears what an interrupted import left in
// tmp/.
func Open(dir string) (*Store, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store directory: %w", err)
	}
	// The directory ends up in overlayfs mount options, where these
	// characters are separators.
	if strings.ContainsAny(dir, ",:\\") {
		return nil, fmt.Errorf("image store directory %s: choose a path without ',', ':' or '\\'", dir)
	}
	s := &Store{dir: dir}
	for _, d := range []string{dir, s.path("layers"), s.path("images"), s.path("tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	// Layers hold images' setuid binaries and device nodes: only root
	// may reach them, whatever the directory's mode was before.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	if err := s.clearTmp(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

// layerDir is where the layer with diffID "sha256:<hex>" is unpacked.
func (s *Store) layerDir(diffID string) string {
	return s.path("layers", strings.TrimPrefix(diffID, "sha256:"))
}

func (s *Store) recordPath(id string) string {
	return s.path("images", strings.TrimPrefix(id, "sha256:")+".json")
}

func (s *Store) clearTmp() error {
	entries, err := os.ReadDir(s.path("tmp"))
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(s.path("tmp", e.Name())); err != nil {
			return fmt.Errorf("image store: clear leftovers: %w", err)
		}
	}
	return nil
}

// Get returns the image ref names: its ID ("sha256:<hex>" or the bare
// hex), a unique prefix of at least 12 hex digits of it, or a name:tag
// it was imported under ("busybox" means "busybox:latest").
func (s *Store) Get(ref string) (Image, error) {
	r, err := s.find(ref)
	if err != nil {
		return Image{}, err
	}
	return r.image(), nil
}

// List returns all imported images, ordered by ID.
func (s *Store) List() ([]Image, error) {
	recs, err := s.records()
	if err != nil {
		return nil, err
	}
	imgs := make([]Image, 0, len(recs))
	for _, r := range recs {
		imgs = append(imgs, r.image())
	}
	return imgs, nil
}

// Remove forgets the image ref names, with all its names. Its layers stay
// until GC finds them unused.
func (s *Store) Remove(ref string) error {
	s.recordMu.Lock()
	defer s.recordMu.Unlock()
	r, err := s.find(ref)
	if err != nil {
		return err
	}
	if err := os.Remove(s.recordPath(r.ID)); err != nil {
		return fmt.Errorf("remove image %s: %w", r.ID, err)
	}
	return nil
}

// find resolves ref as Get documents: a full ID first, then a name, then
// an ID prefix.
func (s *Store) find(ref string) (*record, error) {
	recs, err := s.records()
	if err != nil {
		return nil, err
	}
	hex := strings.TrimPrefix(ref, "sha256:")
	if isHex(hex) && len(hex) == 64 {
		for _, r := range recs {
			if r.ID == "sha256:"+hex {
				return r, nil
			}
		}
		return nil, fmt.Errorf("image %s: %w", ref, ErrNotFound)
	}
	want := canonicalName(ref)
	for _, r := range recs {
		for _, n := range r.Names {
			if canonicalName(n) == want {
				return r, nil
			}
		}
	}
	if !isHex(hex) || len(hex) < 12 {
		return nil, fmt.Errorf("image %q: %w (give a name:tag it was imported under, or at least 12 hex digits of its ID)", ref, ErrNotFound)
	}
	var match *record
	for _, r := range recs {
		if strings.HasPrefix(r.ID, "sha256:"+hex) {
			if match != nil {
				return nil, fmt.Errorf("image ID prefix %s is ambiguous: give more digits", ref)
			}
			match = r
		}
	}
	if match == nil {
		return nil, fmt.Errorf("image %s: %w", ref, ErrNotFound)
	}
	return match, nil
}

// canonicalName returns the fully qualified form of a name:tag, so that
// "busybox" and "docker.io/library/busybox:latest" compare equal. Strings
// that are no image reference compare as they are.
func canonicalName(s string) string {
	t, err := name.NewTag(s)
	if err != nil {
		return s
	}
	return t.Name()
}

func isHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}

// records reads all image records, ordered by ID.
func (s *Store) records() ([]*record, error) {
	entries, err := os.ReadDir(s.path("images"))
	if err != nil {
		return nil, fmt.Errorf("read image records: %w", err)
	}
	var recs []*record
	for _, e := range entries {
		hex, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !isHex(hex) || len(hex) != 64 {
			continue
		}
		r, err := s.readRecord("sha256:" + hex)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since ReadDir
		}
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
	}
	return recs, nil
}

func (s *Store) readRecord(id string) (*record, error) {
	p := s.recordPath(id)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("image record %s: %w (remove the file and import the image again)", p, err)
	}
	if r.ID != id {
		return nil, fmt.Errorf("image record %s holds image %s (remove the file and import the image again)", p, r.ID)
	}
	return &r, nil
}

// writeRecord replaces the record of r.ID atomically.
func (s *Store) writeRecord(r *record) error {
	b, err := json.MarshalIndent(r, "", "\t")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.path("tmp"), "image-*.json")
	if err != nil {
		return fmt.Errorf("write image record: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write image record: %w", err)
	}
	// The record must not reach images/ before its bytes reach the disk.
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write image record: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write image record: %w", err)
	}
	if err := os.Rename(f.Name(), s.recordPath(r.ID)); err != nil {
		return fmt.Errorf("write image record: %w", err)
	}
	return nil
}
