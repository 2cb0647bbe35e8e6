package bootstrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// State keeps the outputs of the steps' last successful runs, so that a
// run of some steps can use the outputs of steps run before.
type State interface {
	// Load returns the saved outputs by step ID; none when nothing was saved.
	Load(ctx context.Context) (map[string]map[string]string, error)
	// Save records the outputs of step's successful run, replacing those of
	// its previous run.
	Save(ctx context.Context, step string, outputs map[string]string) error
}

// FileState keeps the state as a JSON object in a file, step ID → outputs.
// It is for one runner at a time.
type FileState struct {
	Path string
}

// Load reads the file; a file that does not exist holds no state.
func (s FileState) Load(context.Context) (map[string]map[string]string, error) {
	data, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read bootstrap state: %w", err)
	}
	st := map[string]map[string]string{}
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("read bootstrap state %s: %v; it is safe to delete it and run every step again", s.Path, err)
	}
	return st, nil
}

// Save rewrites the file with step's outputs replaced.
func (s FileState) Save(ctx context.Context, step string, outputs map[string]string) error {
	st, err := s.Load(ctx)
	if err != nil {
		return err
	}
	st[step] = outputs
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("save bootstrap state: %w", err)
	}
	if err := writeAtomic(s.Path, append(data, '\n')); err != nil {
		return fmt.Errorf("save bootstrap state: %w", err)
	}
	return nil
}

// writeAtomic replaces the file at path with data such that a crash leaves
// either the old file or the new one, never a part: the data goes to a
// temporary file in the same directory, is synced, and is renamed over the
// old file; syncing the directory then makes the rename itself durable.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
