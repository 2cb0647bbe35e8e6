package job

import (
	"fmt"
	"path/filepath"
)

// ChangesDir returns the directory that holds what image job id wrote on
// top of its image (its overlay's upper directory): how a build job's
// output becomes an image layer (imagestore.WriteLayer). The job must
// have ended, so that the directory is what it left and not a moment of
// its writing.
func (m *Manager) ChangesDir(id string) (string, error) {
	e, err := m.entry(id)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	spec, state := e.job.Spec, e.job.Status.State
	m.mu.Unlock()
	switch {
	case spec.Image == "":
		return "", fmt.Errorf("%w: job %s runs on a root directory, not an image: it has no layer of its own", ErrInvalid, id)
	case state != StateExited && state != StateStopped:
		return "", fmt.Errorf("%w: job %s is %s: its changes are read once it has ended", ErrRunning, id, state)
	}
	return filepath.Join(m.imageDir(id), "upper"), nil
}
