package job

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/plinth-os/plinth/host/container"
)

// CredentialsPath is where a job with Spec.Credentials finds its TLS
// credentials: a credentials file as package bundle writes and loads it.
const CredentialsPath = "/run/plinth/credentials.toml"

// filesDir holds the files hostd makes for job id at each start, bound
// into its container. It is under RunDir, because they belong to one
// boot's runs, in a directory whose name no job ID can take (IDs start
// with a letter or digit), beside the containers' state directories.
func (m *Manager) filesDir(id string) string { return filepath.Join(m.cfg.RunDir, ".files", id) }

// jobFiles makes the files s asks hostd for and returns the mounts that
// bind them into the job. It runs before every start, so each run gets
// fresh ones.
func (m *Manager) jobFiles(s Spec) ([]container.Mount, error) {
	if !s.Credentials {
		return nil, nil
	}
	if m.cfg.Credentials == nil {
		return nil, fmt.Errorf("job %s: this host issues no credentials", s.ID)
	}
	dir := m.filesDir(s.ID)
	// Traversable, not listable: a user-namespaced job's mounts are made
	// by its own unprivileged root.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("job %s: files: %w", s.ID, err)
	}
	data, err := m.cfg.Credentials(s.ID)
	if err != nil {
		return nil, fmt.Errorf("job %s: issue credentials: %w", s.ID, err)
	}
	path := filepath.Join(dir, "credentials.toml")
	uid, gid := s.hostIDs()
	// Only the job's own user may read its key.
	if err := writeFile(path, data, 0o600, uid, gid); err != nil {
		return nil, fmt.Errorf("job %s: credentials: %w", s.ID, err)
	}
	return []container.Mount{{Source: path, Target: CredentialsPath, ReadOnly: true}}, nil
}

// writeFile replaces path with a file of data, mode and owner: a new
// inode, so a container that still has the old one bound keeps it whole.
func writeFile(path string, data []byte, mode os.FileMode, uid, gid int) error {
	tmp := path + ".tmp"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chown(uid, gid)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
