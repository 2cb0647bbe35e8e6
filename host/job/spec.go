// Package job is hostd's dyno manager: it keeps the jobs of one host
// (platform services and user apps alike) as records that survive
// restarts, runs each as a container, applies its restart policy, keeps
// its logs, reports its events, and after a hostd restart adopts the
// containers that kept running. After a reboot it starts again the jobs
// marked resurrect.
//
// It does not isolate processes (package container does), fetch images
// (package imagestore) or decide where jobs run (the scheduler does).
package job

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/imagestore"
)

// Spec is what a job's creator asks for.
type Spec struct {
	// ID is unique on the host: 1 to 64 of a-z, 0-9, '_', '.', '-',
	// starting with a letter or digit.
	ID string `json:"id"`
	// Rootfs is the job's root directory on the host, an absolute path,
	// or SystemRootfs. Give either Rootfs or Image.
	Rootfs string `json:"rootfs,omitempty"`
	// Image is an imported image (name:tag or ID): the job runs on its
	// layers with a writable layer of its own, kept until the job is
	// removed. Its Cmd, Env, WorkingDir and User fill what the spec
	// leaves empty; Create records the image's ID.
	Image string `json:"image,omitempty"`
	// Cmd is the command and its arguments.
	Cmd []string `json:"cmd"`
	// Env is KEY=value pairs.
	Env []string `json:"env,omitempty"`
	// WorkingDir inside the job; default "/".
	WorkingDir string `json:"working_dir,omitempty"`
	// User is "uid" or "uid:gid", numeric; default 0:0 (root inside the
	// container, with only container.DefaultCapabilities).
	User string `json:"user,omitempty"`
	// Resources are cgroup limits; zero values mean unlimited.
	Resources Resources `json:"resources,omitzero"`
	// Network is NetworkNone (own, empty namespace; the default),
	// NetworkHost, or NetworkBridge (an address on the host's container
	// bridge, reachable from jobs on every host over the overlay).
	Network string `json:"network,omitempty"`
	// Ports publishes host ports to a bridge job's ports.
	Ports []Port `json:"ports,omitempty"`
	// Services are the network services the job offers, with their
	// health checks, for the platform's discovery; hostd only keeps them.
	Services []Service `json:"services,omitempty"`
	// ReadonlyRootfs mounts the root read-only.
	ReadonlyRootfs bool `json:"readonly_rootfs,omitempty"`
	// UserNamespace runs the job's root as an unprivileged host ID range
	// (container.UserNSBase). An image job's layers are idmapped into the
	// range (see host/idmap); a rootfs job's directory must be open to
	// others, and its files owned by host root look owned by nobody.
	UserNamespace bool `json:"user_namespace,omitempty"`
	// PreferUserNamespace asks for UserNamespace for an image job if this
	// host can idmap its image layers, and for none if it cannot (its
	// image store is on tmpfs before Linux 6.3): the platform's default
	// for app workloads. hostd decides at create, and the job's
	// UserNamespace says what it got.
	PreferUserNamespace bool `json:"prefer_user_namespace,omitempty"`
	// Volumes are host directories bound into the job.
	Volumes []Volume `json:"volumes,omitempty"`
	// Restart says when the job is started again after it exits.
	Restart Restart `json:"restart,omitzero"`
	// Credentials gives the job TLS credentials from the cluster CA at
	// CredentialsPath, issued by hostd at every start: a certificate for
	// both serving and calling (mutual TLS between platform services),
	// readable by the job's user only.
	Credentials bool `json:"credentials,omitempty"`
	// CredentialNames are DNS names added to the job's certificate, for
	// a service that clients reach by a name of its own wherever it runs
	// (the builder's git endpoint).
	CredentialNames []string `json:"credential_names,omitempty"`
	// Resurrect starts the job again when the host boots.
	Resurrect bool `json:"resurrect,omitempty"`
	// Tags are free-form labels for the job's owner.
	Tags map[string]string `json:"tags,omitempty"`
}

// Resources are a job's limits.
type Resources struct {
	MemoryBytes int64   `json:"memory_bytes,omitempty"`
	CPUWeight   uint64  `json:"cpu_weight,omitempty"`
	CPUQuota    float64 `json:"cpu_quota,omitempty"`
	Pids        int64   `json:"pids,omitempty"`
}

// Port forwards a host port to a port of the job.
type Port struct {
	Host      int    `json:"host"`
	Container int    `json:"container"`
	Proto     string `json:"proto,omitempty"` // tcp (default) or udp
}

// Volume binds a host path into the job.
type Volume struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Restart is a job's restart policy.
type Restart struct {
	// Policy is RestartNever (default), RestartOnFailure or RestartAlways.
	Policy string `json:"policy,omitempty"`
	// MaxBackoff caps the delay between restarts, which starts at 1 s
	// and doubles; default 1 min.
	MaxBackoff Duration `json:"max_backoff,omitzero"`
}

// SystemRootfs as Spec.Rootfs runs the job on the host's own root
// filesystem (on a plinth machine, the system image) read-only, without
// what is mounted on top of it (/run, /var, /proc...), and with the
// plinth binary: how platform services run.
const SystemRootfs = "system"

// Restart policies.
const (
	RestartNever     = "never"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// Networks.
const (
	NetworkNone   = "none"
	NetworkHost   = "host"
	NetworkBridge = "bridge"
)

// Duration is a time.Duration written in JSON as "1m30s".
type Duration struct{ time.Duration }

// MarshalText writes d as time.Duration's String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads "1m30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// Default restart backoff bounds.
const (
	firstBackoff      = time.Second
	defaultMaxBackoff = time.Minute
)

// Check reports the first problem with s, phrased for the API's caller.
func (s *Spec) Check() error {
	switch {
	case !container.ValidID(s.ID):
		return fmt.Errorf("id %q: use 1 to 64 of a-z, 0-9, '_', '.', '-', starting with a letter or digit", s.ID)
	case (s.Rootfs == "") == (s.Image == ""):
		return fmt.Errorf("give either rootfs (a directory, or %q) or image", SystemRootfs)
	case s.Rootfs != "" && !filepath.IsAbs(s.Rootfs) && s.Rootfs != SystemRootfs:
		return fmt.Errorf("rootfs %q: give an absolute path to the job's root directory, or %q", s.Rootfs, SystemRootfs)
	case len(s.Cmd) == 0 || s.Cmd[0] == "":
		return fmt.Errorf("cmd is empty: give the command to run (or an image that has one)")
	}
	switch s.Network {
	case "", NetworkNone, NetworkHost, NetworkBridge:
	default:
		return fmt.Errorf("network %q: use %q, %q or %q", s.Network, NetworkNone, NetworkHost, NetworkBridge)
	}
	if len(s.Ports) > 0 && s.Network != NetworkBridge {
		return fmt.Errorf("ports are published to bridge jobs only; set network to %q", NetworkBridge)
	}
	seen := map[string]bool{}
	for _, p := range s.Ports {
		proto := cmp.Or(p.Proto, "tcp")
		key := proto + "/" + strconv.Itoa(p.Host)
		switch {
		case p.Host < 1 || p.Host > 65535 || p.Container < 1 || p.Container > 65535:
			return fmt.Errorf("port %d:%d: ports are 1 to 65535", p.Host, p.Container)
		case proto != "tcp" && proto != "udp":
			return fmt.Errorf("port %d: proto %q: use tcp or udp", p.Host, p.Proto)
		case seen[key]:
			return fmt.Errorf("host port %s is published twice", key)
		}
		seen[key] = true
	}
	if err := CheckServices(s.Services, s.Network); err != nil {
		return err
	}
	switch s.Restart.Policy {
	case "", RestartNever, RestartOnFailure, RestartAlways:
	default:
		return fmt.Errorf("restart.policy %q: use %q, %q or %q", s.Restart.Policy, RestartNever, RestartOnFailure, RestartAlways)
	}
	if s.Restart.MaxBackoff.Duration < 0 {
		return fmt.Errorf("restart.max_backoff cannot be negative")
	}
	if _, _, err := s.user(); err != nil {
		return err
	}
	c := s.container("", "/")
	return c.Check()
}

// user parses User.
func (s *Spec) user() (uid, gid uint32, err error) {
	if s.User == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(s.User, ":")
	uv, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: want a numeric uid or uid:gid", s.User)
	}
	gv := uv
	if hasGroup {
		if gv, err = strconv.ParseUint(g, 10, 32); err != nil {
			return 0, 0, fmt.Errorf("user %q: want a numeric uid or uid:gid", s.User)
		}
	}
	return uint32(uv), uint32(gv), nil
}

// hostIDs are the host's IDs of the job's user: shifted by
// container.UserNSBase in a user namespace.
func (s *Spec) hostIDs() (uid, gid int) {
	u, g, _ := s.user()
	if s.UserNamespace {
		u, g = u+container.UserNSBase, g+container.UserNSBase
	}
	return int(u), int(g)
}

// container is the container spec of the job, with init (may be empty)
// as its PID 1, on rootfs (the directory Rootfs or Image resolved to).
func (s *Spec) container(init, rootfs string) container.Spec {
	uid, gid, _ := s.user()
	readonly := s.ReadonlyRootfs || s.Rootfs == SystemRootfs
	c := container.Spec{
		ID: s.ID, Rootfs: rootfs, Args: s.Cmd, Env: s.Env, Cwd: s.WorkingDir,
		UID: uid, GID: gid, ReadonlyRootfs: readonly, HostNetwork: s.Network == NetworkHost, UserNS: s.UserNamespace,
		Init: init,
		Resources: container.Resources{
			MemoryBytes: s.Resources.MemoryBytes, CPUWeight: s.Resources.CPUWeight,
			CPUQuota: s.Resources.CPUQuota, Pids: s.Resources.Pids,
		},
	}
	if s.Rootfs == SystemRootfs {
		// The system root is read-only all through, so nothing can be
		// bound where it has no file or directory yet. Every Linux root
		// has /run and /var (on a plinth machine /var is the host's data
		// partition): empty ones of the job's own let volumes and hostd's
		// files be bound below them.
		c.Mounts = append(c.Mounts, container.Mount{Target: "/run", Tmpfs: true}, container.Mount{Target: "/var", Tmpfs: true})
	}
	for _, v := range s.Volumes {
		c.Mounts = append(c.Mounts, container.Mount{Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly})
	}
	return c
}

// makeVolumes creates the missing source directories of s's volumes,
// 0700 and owned by the job's user, so a job is given an empty data
// directory rather than refused (after a reboot emptied a tmpfs, say).
func (s *Spec) makeVolumes() error {
	uid, gid := s.hostIDs()
	for _, v := range s.Volumes {
		if _, err := os.Lstat(v.Source); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := os.MkdirAll(v.Source, 0o700); err != nil {
			return fmt.Errorf("volume %s: %w", v.Source, err)
		}
		if err := os.Chown(v.Source, uid, gid); err != nil {
			return fmt.Errorf("volume %s: %w", v.Source, err)
		}
	}
	return nil
}

// restarts reports whether a job that ended with exit is started again.
func (s *Spec) restarts(exit container.Exit) bool {
	switch s.Restart.Policy {
	case RestartAlways:
		return true
	case RestartOnFailure:
		return exit.Code != 0 || exit.Signal != "" || exit.OOMKilled
	}
	return false
}

// maxBackoff is the cap of the restart delay.
func (s *Spec) maxBackoff() time.Duration {
	if s.Restart.MaxBackoff.Duration > 0 {
		return s.Restart.MaxBackoff.Duration
	}
	return defaultMaxBackoff
}

// findCommand checks that Cmd[0] names an executable file inside the
// rootfs, looked up in the job's PATH as the container would, so that a
// typo is refused at create rather than reported as exit status 127. The
// lookup stays inside the rootfs even through symlinks.
func (s *Spec) findCommand(rootfs string) error {
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("rootfs %s: %w", rootfs, err)
	}
	defer unix.Close(root)
	// Symbolic links resolve as they will for the container: an absolute
	// one from the rootfs's root, none out of it.
	isExec := func(p string) bool {
		rel := strings.TrimPrefix(path.Clean(p), "/")
		how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT}
		fd, err := unix.Openat2(root, rel, how)
		// The kernel gives up a lookup through ".." when something was
		// renamed or mounted meanwhile, anywhere; it asks to be retried.
		for try := 0; err == unix.EAGAIN && try < 8; try++ {
			fd, err = unix.Openat2(root, rel, how)
		}
		if err != nil {
			return false
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0
	}
	cmd := s.Cmd[0]
	if strings.Contains(cmd, "/") {
		if !path.IsAbs(cmd) {
			cmd = path.Join(cmp.Or(s.WorkingDir, "/"), cmd)
		}
		if isExec(cmd) {
			return nil
		}
		return fmt.Errorf("cmd %q: no executable file at that path in the rootfs", s.Cmd[0])
	}
	pathVar := container.DefaultPath
	for _, e := range s.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathVar = v
		}
	}
	for _, dir := range filepath.SplitList(pathVar) {
		if path.IsAbs(dir) && isExec(path.Join(dir, cmd)) {
			return nil
		}
	}
	return fmt.Errorf("cmd %q: not found in the rootfs's PATH (%s)", cmd, pathVar)
}

// withImage fills what s leaves empty from the image's config and pins
// the image by ID.
func (s *Spec) withImage(img imagestore.Image) error {
	s.Image = img.ID
	if len(s.Cmd) == 0 {
		s.Cmd = append(slices.Clone(img.Config.Entrypoint), img.Config.Cmd...)
	}
	s.Env = append(slices.Clone(img.Config.Env), s.Env...)
	if s.WorkingDir == "" {
		s.WorkingDir = img.Config.WorkingDir
	}
	if s.User == "" && img.Config.User != "" {
		s.User = img.Config.User
		if _, _, err := s.user(); err != nil {
			return fmt.Errorf("image user %q: only numeric uid[:gid] is supported; set user in the job spec", img.Config.User)
		}
	}
	return nil
}
