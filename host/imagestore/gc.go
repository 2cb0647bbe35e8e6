package imagestore

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// GC removes the layers no image references and inUse (nil: none) does
// not report as in use, and returns their diffIDs. inUse is how GC learns
// of running jobs whose image was removed: their layers are still
// mounted and must stay.
//
// GC waits for imports and mounts in progress, and they for it.
func (s *Store) GC(inUse func(diffID string) bool) (removed []string, err error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	// No import is running, so nothing under tmp/ is wanted.
	if err := s.clearTmp(); err != nil {
		return nil, err
	}
	recs, err := s.records()
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	referenced := map[string]bool{}
	for _, r := range recs {
		for _, l := range r.Layers {
			referenced[l.DiffID] = true
		}
	}
	entries, err := os.ReadDir(s.path("layers"))
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	for _, e := range entries {
		if !isHex(e.Name()) || len(e.Name()) != 64 {
			continue
		}
		diffID := "sha256:" + e.Name()
		if referenced[diffID] || (inUse != nil && inUse(diffID)) {
			continue
		}
		// Out of layers/ first: a half-removed layer left there by a
		// crash would look complete to the next import.
		trash, err := os.MkdirTemp(s.path("tmp"), "gc-")
		if err != nil {
			return removed, fmt.Errorf("gc: %w", err)
		}
		if err := os.Rename(s.path("layers", e.Name()), filepath.Join(trash, "layer")); err != nil {
			return removed, fmt.Errorf("gc: remove layer %s: %w", diffID, err)
		}
		if err := os.RemoveAll(trash); err != nil {
			return removed, fmt.Errorf("gc: remove layer %s: %w", diffID, err)
		}
		if err := s.removeShifted(e.Name()); err != nil {
			return removed, fmt.Errorf("gc: remove copies of layer %s: %w", diffID, err)
		}
		removed = append(removed, diffID)
	}
	slices.Sort(removed)
	return removed, nil
}
