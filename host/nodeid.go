package host

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// nodeIDFile holds the node ID inside Config.StateDir.
const nodeIDFile = "node-id"

// nodeIDEncoding writes IDs in lowercase letters and digits only, so an ID
// is also a valid DNS label and Serf node name.
var nodeIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// nodeIDBytes of randomness (80 bits) make 16-character IDs; collisions
// are not a concern at any cluster size plinth targets.
const nodeIDBytes = 10

// NewNodeID returns a fresh random node ID.
func NewNodeID() string {
	b := make([]byte, nodeIDBytes)
	rand.Read(b) // never fails (crypto/rand)
	return nodeIDEncoding.EncodeToString(b)
}

// CheckNodeID reports whether id has the shape NewNodeID makes.
func CheckNodeID(id string) error {
	b, err := nodeIDEncoding.DecodeString(id)
	if err != nil || len(b) != nodeIDBytes {
		return fmt.Errorf("node ID %q: want %d characters of a-z and 2-7", id, nodeIDEncoding.EncodedLen(nodeIDBytes))
	}
	return nil
}

// loadOrCreateNodeID returns the node ID kept in dir, making and storing
// one on first use. A damaged file is an error rather than a new ID: a
// silent new identity would make the cluster see a stranger.
func loadOrCreateNodeID(dir string) (id string, created bool, err error) {
	path := filepath.Join(dir, nodeIDFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(data))
		if err := CheckNodeID(id); err != nil {
			return "", false, fmt.Errorf("%s: %w; remove the file to give this host a new identity", path, err)
		}
		return id, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", false, fmt.Errorf("read node ID: %w", err)
	}
	id = NewNodeID()
	if err := writeFileAtomic(path, []byte(id+"\n"), 0o644); err != nil {
		return "", false, fmt.Errorf("store node ID: %w", err)
	}
	return id, true, nil
}

// writeFileAtomic replaces path with data so that a crash leaves either
// the old or the new content, never a torn file.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
