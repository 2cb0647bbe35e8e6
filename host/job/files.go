package job

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

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

// jobFile is one file hostd makes for a job and binds into it.
type jobFile struct {
	name, target string
	data         []byte
	mode         os.FileMode
	uid, gid     int
}

// jobFiles makes the files hostd gives s's job (its credentials, its
// resolv.conf) and returns the mounts that bind them in. It runs before
// every start, so each run gets fresh ones.
func (m *Manager) jobFiles(s Spec) ([]container.Mount, error) {
	var files []jobFile
	if s.Credentials {
		if m.cfg.Credentials == nil {
			return nil, fmt.Errorf("job %s: this host issues no credentials", s.ID)
		}
		data, err := m.cfg.Credentials(s.ID, s.CredentialNames)
		if err != nil {
			return nil, fmt.Errorf("job %s: issue credentials: %w", s.ID, err)
		}
		uid, gid := s.hostIDs()
		// Only the job's own user may read its key.
		files = append(files, jobFile{name: "credentials.toml", target: CredentialsPath, data: data, mode: 0o600, uid: uid, gid: gid})
	}
	if m.cfg.JobDNS && (s.Network == NetworkHost || s.Network == NetworkBridge) {
		data, err := m.resolvConf(s.Network)
		if err != nil {
			return nil, fmt.Errorf("job %s: resolv.conf: %w", s.ID, err)
		}
		files = append(files, jobFile{name: "resolv.conf", target: "/etc/resolv.conf", data: data, mode: 0o644})
	}
	if len(files) == 0 {
		return nil, nil
	}
	dir := m.filesDir(s.ID)
	// Traversable, not listable: a user-namespaced job's mounts are made
	// by its own unprivileged root.
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("job %s: files: %w", s.ID, err)
	}
	var mounts []container.Mount
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if err := writeFile(path, f.data, f.mode, f.uid, f.gid); err != nil {
			return nil, fmt.Errorf("job %s: %s: %w", s.ID, f.name, err)
		}
		mounts = append(mounts, container.Mount{Source: path, Target: f.target, ReadOnly: true})
	}
	return mounts, nil
}

// Host resolver files, netd's first.
var hostResolvConfs = []string{"/run/plinth/resolv.conf", "/etc/resolv.conf"}

// resolvConf is the resolv.conf of a job on network: this host first (a
// DNS server on it listens on every address), then the host's own
// nameservers, search domains and options. A bridge job reaches the host
// at its gateway and cannot reach the host's loopback resolvers.
func (m *Manager) resolvConf(network string) ([]byte, error) {
	self := netip.MustParseAddr("127.0.0.1")
	if network == NetworkBridge {
		n := m.network.Load()
		if n == nil {
			return nil, fmt.Errorf("%w: the container network is not ready yet", ErrUnavailable)
		}
		self = n.Gateway()
	}
	var host []byte
	var err error
	paths := hostResolvConfs
	if m.cfg.HostResolvConf != "" {
		paths = []string{m.cfg.HostResolvConf}
	}
	for _, path := range paths {
		if host, err = os.ReadFile(path); !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("# written by plinth hostd for this job: this host first, then the host's resolvers\n")
	fmt.Fprintf(&b, "nameserver %s\n", self)
	for line := range strings.Lines(string(host)) {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			ip, err := netip.ParseAddr(fields[1])
			if err != nil || ip == self || network == NetworkBridge && ip.IsLoopback() {
				continue
			}
			fmt.Fprintf(&b, "nameserver %s\n", ip)
		case "search", "domain", "options":
			b.WriteString(strings.Join(fields, " ") + "\n")
		}
	}
	return b.Bytes(), nil
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
