package job

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/cnet"
	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/fanout"
	"github.com/plinth-os/plinth/host/idmap"
	"github.com/plinth-os/plinth/host/imagestore"
)

// Job is a job's record: what was asked and what happened.
type Job struct {
	Spec   Spec   `json:"spec"`
	Status Status `json:"status"`
}

// Status is what happened to a job so far.
type Status struct {
	// State is StateRunning, StateBackoff, StateExited or StateStopped.
	State     string          `json:"state"`
	Pid       int             `json:"pid,omitempty"`
	StartedAt time.Time       `json:"started_at,omitzero"`
	ExitedAt  time.Time       `json:"exited_at,omitzero"`
	Exit      *container.Exit `json:"exit,omitempty"`
	// Restarts counts the starts after the first.
	Restarts int `json:"restarts"`
	// NextStart is when a job in StateBackoff starts again.
	NextStart time.Time `json:"next_start,omitzero"`
	// IP is a bridge job's address, kept across restarts.
	IP netip.Addr `json:"ip,omitzero"`
	// Error is why the last start failed, if it did.
	Error string `json:"error,omitempty"`
	// BootID is the kernel's boot ID when the job last started: a
	// different one at restore means the host rebooted since.
	BootID string `json:"boot_id,omitempty"`
}

// Job states.
const (
	StateRunning = "running"
	StateBackoff = "backoff" // exited; starts again at NextStart
	StateExited  = "exited"  // exited; its policy does not restart it
	StateStopped = "stopped" // stopped on request
)

// Event is a change of one job, for GET /v1/jobs/events: started,
// restarted, exited (with its Exit), oom-killed, stopped, removed.
type Event struct {
	Type string `json:"type"`
	Job  string `json:"job"`
	// Time is when it happened: for exited and oom-killed, when the run
	// ended, as the job's Status.ExitedAt says.
	Time time.Time       `json:"time"`
	Pid  int             `json:"pid,omitempty"`
	Exit *container.Exit `json:"exit,omitempty"`
	// NextStart is when an exited job starts again, if its restart
	// policy says it does.
	NextStart time.Time `json:"next_start,omitzero"`
}

// Errors the API maps to status codes.
var (
	ErrNotFound = errors.New("no such job")
	ErrExists   = errors.New("a job with this id exists")
	ErrRunning  = errors.New("job is running")
	// ErrUnavailable: the host cannot run the job yet (its container
	// network is still being set up); retry.
	ErrUnavailable = errors.New("not available yet")
	ErrInvalid     = errors.New("invalid job")
)

// Config says where a Manager keeps things.
type Config struct {
	// StateDir holds jobs.db and logs/<id>/; on the data partition, so
	// records and logs survive reboots.
	StateDir string
	// VolumeRoot, when set, is where volume sources are found: a volume
	// of /var/lib/x binds VolumeRoot/var/lib/x. Hosts that share a
	// machine (tests) need one each.
	VolumeRoot string
	// CgroupParent is the cgroup the jobs' go under; default
	// container.DefaultCgroupParent. Hosts that share a machine (tests)
	// need one each, as job IDs are unique only per host.
	CgroupParent string
	// RunDir holds the containers' runtime state; a tmpfs such as /run,
	// because it describes processes, which do not survive reboots.
	RunDir string
	// Init is the static init run as every job's PID 1 (Debian's
	// tini-static); empty runs the command itself as PID 1.
	Init string
	// Images, if set, lets jobs run on imported images (Spec.Image).
	Images *imagestore.Store
	// Network, if set, gives bridge jobs their addresses and ports; see
	// also Manager.SetNetwork.
	Network *cnet.Network
	// Credentials, if set, issues the credentials file (see package
	// bundle) of a job that asks for them (Spec.Credentials), at each of
	// its starts. Without it such jobs are refused.
	Credentials func(jobID string, names []string) ([]byte, error) `json:"-"`
	// JobDNS gives every job with a network an /etc/resolv.conf that
	// names this host first (127.0.0.1 for host-network jobs, the
	// bridge's gateway for bridge jobs), where a DNS server the platform
	// runs with the host's network answers; the host's own resolvers
	// follow.
	JobDNS bool
	// HostResolvConf is the file of the host's own resolvers; default
	// /run/plinth/resolv.conf (netd's), else /etc/resolv.conf.
	HostResolvConf string
	// StopTimeout is the default grace period between SIGTERM and SIGKILL.
	StopTimeout time.Duration
	Log         *slog.Logger
}

// Manager runs the jobs of one host.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	rt     *container.Runtime
	store  *store
	lock   *os.File // flock on RunDir/.lock
	bootID string

	// network is the container network, set when it is ready;
	// networkReady closes then.
	network      atomic.Pointer[cnet.Network]
	networkReady chan struct{}

	userns      idmap.Namespaces // for image jobs' idmapped layers
	idmapOnce   sync.Once
	idmapOK     bool
	walkMu      sync.Mutex
	walked      bool // walkable has opened the path to image jobs' roots
	sysrootOnce sync.Once
	sysrootDir  string
	sysrootErr  error

	closing chan struct{} // closed by Close

	mu     sync.Mutex
	jobs   map[string]*entry
	subs   *fanout.Fanout[Event]
	closed bool
	wg     sync.WaitGroup
}

// entry is the live side of one job.
type entry struct {
	job  Job
	c    *container.Container
	log  *jobLog
	stop chan struct{} // closed by Stop and Remove: no more restarts
	// ran is closed and replaced when a run ends, for Wait.
	ran chan struct{}
	// copying counts the output copiers of the current run; a run has
	// ended once they have read everything.
	copying sync.WaitGroup
	gone    chan struct{} // closed when removed, ending log followers
	ports   []io.Closer   // the published ports' proxies, while the job exists
	done    chan struct{} // closed when the supervisor returns, or at once when none runs
	// supervised: a supervisor was started for the entry (and will close
	// done); a restored job that runs no more has none.
	supervised bool
}

// Log pipes: a job's output goes through pipes that hostd reads; the job
// also holds their read ends as file descriptors 3 and 4, so that the
// pipes keep a reader while hostd restarts (its writes wait instead of
// failing) and a new hostd reopens them through /proc/<pid>/fd.
const (
	stdoutFD = 3
	stderrFD = 4
	pipeSize = 1 << 20
)

// New opens the job store. Call Restore to bring back the jobs it holds.
func New(cfg Config) (*Manager, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "logs"), 0o700); err != nil {
		return nil, fmt.Errorf("job state directory: %w", err)
	}
	// Image jobs' root filesystems are mounted below rootfs: a
	// user-namespaced job's root, an unprivileged ID, walks through to
	// its own (neither directory can be listed by it).
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "rootfs")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("job state directory: %w", err)
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, fmt.Errorf("job state directory: %w", err)
		}
	}
	rt, err := container.New(cfg.RunDir)
	if err != nil {
		return nil, err
	}
	// Restore removes containers no job owns: two managers on one RunDir
	// would remove each other's.
	lock, err := os.OpenFile(filepath.Join(cfg.RunDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", cfg.RunDir, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("%s is in use by another hostd (one per run directory): %w", cfg.RunDir, err)
	}
	st, err := openStore(filepath.Join(cfg.StateDir, "jobs.db"))
	if err != nil {
		lock.Close()
		return nil, err
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	m := &Manager{
		cfg: cfg, log: cfg.Log, rt: rt, store: st, lock: lock, bootID: strings.TrimSpace(string(boot)),
		jobs: map[string]*entry{}, subs: fanout.New[Event](256), networkReady: make(chan struct{}), closing: make(chan struct{}),
	}
	if cfg.Network != nil {
		m.SetNetwork(cfg.Network)
	}
	return m, nil
}

// SetNetwork hands the manager the container network once it is ready
// (it may need kernel modules that load after the host is up); restored
// bridge jobs wait for it.
func (m *Manager) SetNetwork(n *cnet.Network) {
	if m.network.CompareAndSwap(nil, n) {
		close(m.networkReady)
	}
}

// Create records the job and starts it. A job that cannot start (bad
// spec, missing command) is refused with nothing left behind.
func (m *Manager) Create(spec Spec) (Job, error) {
	if spec.Image != "" && spec.Rootfs == "" {
		if m.cfg.Images == nil {
			return Job{}, fmt.Errorf("%w: this host has no image store", ErrInvalid)
		}
		img, err := m.cfg.Images.Get(spec.Image)
		if err != nil {
			return Job{}, fmt.Errorf("%w: image %q: %v; import it first (plinth host import)", ErrInvalid, spec.Image, err)
		}
		if err := spec.withImage(img); err != nil {
			return Job{}, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	if err := spec.Check(); err != nil {
		return Job{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if spec.PreferUserNamespace && spec.Image != "" && spec.Rootfs == "" && !spec.UserNamespace {
		spec.UserNamespace = m.canIDMap()
	}
	if spec.Credentials && m.cfg.Credentials == nil {
		return Job{}, fmt.Errorf("%w: this host issues no credentials (it has no cluster CA)", ErrInvalid)
	}
	m.mu.Lock()
	if _, ok := m.jobs[spec.ID]; ok || m.closed {
		m.mu.Unlock()
		return Job{}, fmt.Errorf("%w: %s", ErrExists, spec.ID)
	}
	e := newEntry(Job{Spec: spec})
	m.jobs[spec.ID] = e // reserves the id while it starts
	m.mu.Unlock()

	logDir := m.logDir(spec.ID)
	fail := func(err error) (Job, error) {
		if e.log != nil {
			e.log.close()
		}
		m.detachNetwork(e)
		os.RemoveAll(logDir)
		os.RemoveAll(m.filesDir(spec.ID))
		m.releaseRootfs(spec)
		m.mu.Lock()
		delete(m.jobs, spec.ID)
		m.mu.Unlock()
		return Job{}, err
	}
	rootfs, err := m.rootfs(spec)
	if err != nil {
		return fail(err)
	}
	if err := spec.findCommand(rootfs); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrInvalid, err))
	}
	if e.log, err = openLog(logDir); err != nil {
		return fail(fmt.Errorf("job %s: log: %w", spec.ID, err))
	}
	if err := m.attachNetwork(e); err != nil {
		return fail(err)
	}
	// Started first, recorded after: a crash in between leaves a container
	// that no record owns, which Restore removes. The other order would
	// leave a record of a job that may never have started, which Restore
	// would bring back though the caller was told it failed.
	if err := m.start(e); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrInvalid, err))
	}
	if err := m.persist(e); err != nil {
		e.c.Signal(syscall.SIGKILL)
		e.c.Wait()
		e.c.Destroy()
		return fail(err)
	}
	m.publish(Event{Type: "started", Job: spec.ID, Pid: e.job.Status.Pid})
	m.supervise(e, false)
	return m.snapshot(e), nil
}

func newEntry(j Job) *entry {
	return &entry{job: j, stop: make(chan struct{}), ran: make(chan struct{}), gone: make(chan struct{}), done: make(chan struct{})}
}

// systemBinaryDir holds the layer-0 binary (plinth-host) on a plinth
// machine; in an image built with one binary, /usr/bin/plinth links to it.
const systemBinaryDir = "/usr/lib/plinth/bin"

// sysroot returns a read-only bind of the host's root filesystem alone
// (not recursive, so nothing mounted on top of it comes along but the
// plinth binary), made on first use under RunDir.
func (m *Manager) sysroot() (string, error) {
	m.sysrootOnce.Do(func() {
		dir := filepath.Join(m.cfg.RunDir, "sysroot")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			m.sysrootErr = err
			return
		}
		var st, root unix.Stat_t
		unix.Stat(dir, &st)
		unix.Stat(filepath.Dir(dir), &root)
		if st.Dev == root.Dev { // not yet a mount point
			if err := unix.Mount("/", dir, "", unix.MS_BIND, ""); err != nil {
				m.sysrootErr = fmt.Errorf("bind the system root at %s: %w", dir, err)
				return
			}
			if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				unix.Unmount(dir, unix.MNT_DETACH)
				m.sysrootErr = fmt.Errorf("make %s read-only: %w", dir, err)
				return
			}
			// On a plinth machine the binary's directory is a bind over
			// an empty placeholder (see init/stage1.go), which the
			// non-recursive bind leaves out; bring it along.
			if st, err := os.Stat(filepath.Join(systemBinaryDir, "plinth-host")); err == nil && st.Size() > 0 {
				if err := unix.Mount(systemBinaryDir, dir+systemBinaryDir, "", unix.MS_BIND, ""); err != nil {
					unix.Unmount(dir, unix.MNT_DETACH)
					m.sysrootErr = fmt.Errorf("bind %s into the system root: %w", systemBinaryDir, err)
					return
				}
			}
		}
		m.sysrootDir = dir
	})
	return m.sysrootDir, m.sysrootErr
}

// rootfs returns the root directory a job runs on: its own, the system
// root, or its image's layers under an overlay of its own (mounted here
// when it is not, as after a reboot).
func (m *Manager) rootfs(s Spec) (string, error) {
	switch {
	case s.Rootfs == SystemRootfs:
		return m.sysroot()
	case s.Rootfs != "":
		return s.Rootfs, nil
	case m.cfg.Images == nil:
		return "", fmt.Errorf("%w: this host has no image store", ErrInvalid)
	}
	var ids *imagestore.IDMapping
	if s.UserNamespace {
		userns, err := m.jobUserns()
		if err != nil {
			return "", fmt.Errorf("job %s: %w", s.ID, err)
		}
		ids = &imagestore.IDMapping{Userns: userns, Root: container.UserNSBase, Size: container.UserNSSize}
		if err := m.walkable(); err != nil {
			return "", fmt.Errorf("job %s: %w", s.ID, err)
		}
	}
	dir, err := m.cfg.Images.Mount(context.Background(), s.Image, m.imageDir(s.ID), ids)
	if errors.Is(err, imagestore.ErrNoOverlay) {
		return "", fmt.Errorf("%w: job %s: %v; try again shortly", ErrUnavailable, s.ID, err)
	}
	if err != nil {
		return "", fmt.Errorf("job %s: mount image: %w", s.ID, err)
	}
	return dir, nil
}

// walkable lets anyone walk (not list) through every directory above the
// image jobs' directories, once a manager: the runtime sets a
// user-namespaced job's root filesystem up as the job's root, an
// unprivileged ID, which must reach it. hostd's own directories are made
// so; one above them that is closed (a /var of mode 0700) is opened for
// walking, and the change logged. A failure is tried again next time.
func (m *Manager) walkable() error {
	m.walkMu.Lock()
	defer m.walkMu.Unlock()
	if m.walked {
		return nil
	}
	for d := filepath.Join(m.cfg.StateDir, "rootfs"); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if mode := st.Mode().Perm(); mode&0o001 == 0 {
			if err := os.Chmod(d, mode|0o001); err != nil {
				return fmt.Errorf("let user-namespaced jobs walk through %s: %w", d, err)
			}
			m.log.Info("directory opened for walking by user-namespaced jobs", "dir", d, "mode", fmt.Sprintf("%o", mode|0o001))
		}
		if d == "/" || d == "." {
			m.walked = true
			return nil
		}
	}
}

// jobUserns is the user namespace of user-namespaced jobs' IDs.
func (m *Manager) jobUserns() (*os.File, error) {
	return m.userns.Get(idmap.Range{Host: container.UserNSBase, Size: container.UserNSSize})
}

// canIDMap reports whether image jobs can run in a user namespace on
// this host, found out once and logged when they cannot. Their layers
// are idmapped where the image store's filesystem allows, else copied
// with shifted owners (see imagestore.Mount).
func (m *Manager) canIDMap() bool {
	m.idmapOnce.Do(func() {
		// Only jobs that run an image ask, and Create has found its store.
		userns, err := m.jobUserns()
		if m.idmapOK = err == nil; !m.idmapOK {
			m.log.Warn("image jobs run without user namespaces on this host", "err", err)
			return
		}
		if err := m.cfg.Images.CanIDMap(userns); err != nil {
			m.log.Info("user-namespaced jobs get copies of their image layers with shifted owners: the image store takes no idmapped mounts", "err", err)
		}
	})
	return m.idmapOK
}

// attachNetwork gives a bridge job its address (once: it keeps it) and
// publishes its ports. A port in use is the caller's error.
func (m *Manager) attachNetwork(e *entry) error {
	spec := e.job.Spec
	if spec.Network != NetworkBridge {
		return nil
	}
	network := m.network.Load()
	if network == nil {
		return fmt.Errorf("%w: the container network is not ready yet", ErrUnavailable)
	}
	m.mu.Lock()
	if !e.job.Status.IP.IsValid() {
		var used []netip.Addr
		for _, o := range m.jobs {
			used = append(used, o.job.Status.IP)
		}
		ip, err := network.Allocate(used)
		if err != nil {
			m.mu.Unlock()
			return err
		}
		e.job.Status.IP = ip
	}
	ip := e.job.Status.IP
	m.mu.Unlock()
	for _, p := range spec.Ports {
		c, err := cnet.Publish(cmp.Or(p.Proto, "tcp"), p.Host, netip.AddrPortFrom(ip, uint16(p.Container)))
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		e.ports = append(e.ports, c)
	}
	return nil
}

// detachNetwork stops a job's port proxies and removes its namespace.
func (m *Manager) detachNetwork(e *entry) {
	for _, c := range e.ports {
		c.Close()
	}
	e.ports = nil
	if n := m.network.Load(); e.job.Spec.Network == NetworkBridge && n != nil {
		n.Detach(e.job.Spec.ID)
	}
}

// releaseRootfs unmounts and deletes an image job's writable layer.
func (m *Manager) releaseRootfs(s Spec) {
	if s.Image == "" || m.cfg.Images == nil {
		return
	}
	if err := m.cfg.Images.Unmount(m.imageDir(s.ID)); err != nil {
		m.log.Warn("unmount job rootfs", "job", s.ID, "err", err)
		return
	}
	os.RemoveAll(m.imageDir(s.ID))
}

func (m *Manager) imageDir(id string) string { return filepath.Join(m.cfg.StateDir, "rootfs", id) }

func (m *Manager) logDir(id string) string { return filepath.Join(m.cfg.StateDir, "logs", id) }

// rootVolumes returns s with its volumes' sources under VolumeRoot.
func (m *Manager) rootVolumes(s Spec) Spec {
	if m.cfg.VolumeRoot == "" || len(s.Volumes) == 0 {
		return s
	}
	s.Volumes = slices.Clone(s.Volumes)
	for i := range s.Volumes {
		s.Volumes[i].Source = filepath.Join(m.cfg.VolumeRoot, s.Volumes[i].Source)
	}
	return s
}

// start starts e's container with its output piped into its log.
func (m *Manager) start(e *entry) error {
	rootfs, err := m.rootfs(e.job.Spec)
	if err != nil {
		return err
	}
	spec := m.rootVolumes(e.job.Spec)
	cs := spec.container(m.cfg.Init, rootfs)
	cs.CgroupParent = m.cfg.CgroupParent
	if err := spec.makeVolumes(); err != nil {
		return fmt.Errorf("job %s: %w", e.job.Spec.ID, err)
	}
	files, err := m.jobFiles(e.job.Spec)
	if err != nil {
		return err
	}
	cs.Mounts = append(cs.Mounts, files...)
	if e.job.Spec.Network == NetworkBridge {
		// Kept across restarts; made again after a reboot emptied /run.
		network := m.network.Load()
		if network == nil {
			return fmt.Errorf("%w: the container network is not ready yet", ErrUnavailable)
		}
		if cs.NetnsPath, err = network.Attach(e.job.Spec.ID, e.job.Status.IP); err != nil {
			return err
		}
	}
	var pipes [4]*os.File // out r/w, err r/w
	for i := 0; i < 4; i += 2 {
		r, w, err := os.Pipe()
		if err != nil {
			for _, f := range pipes[:i] {
				f.Close()
			}
			return err
		}
		unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, pipeSize)
		pipes[i], pipes[i+1] = r, w
	}
	c, err := m.rt.Start(cs, container.Stdio{
		Stdout: pipes[1], Stderr: pipes[3], Extra: []*os.File{pipes[0], pipes[2]},
	})
	pipes[1].Close()
	pipes[3].Close()
	if err != nil {
		pipes[0].Close()
		pipes[2].Close()
		e.job.Status.Error = err.Error()
		return err
	}
	m.mu.Lock()
	e.c = c
	e.job.Status = Status{State: StateRunning, Pid: c.Pid(), StartedAt: time.Now().UTC(),
		Restarts: e.job.Status.Restarts, BootID: m.bootID, IP: e.job.Status.IP}
	m.mu.Unlock()
	m.readOutput(e, pipes[0], pipes[2])
	return nil
}

// readOutput copies the job's output pipes into its log; each copier
// ends when every process of the job has closed the pipe.
func (m *Manager) readOutput(e *entry, stdout, stderr *os.File) {
	for stream, f := range map[string]*os.File{Stdout: stdout, Stderr: stderr} {
		e.copying.Add(1)
		m.wg.Go(func() {
			defer e.copying.Done()
			defer f.Close()
			e.log.copy(stream, f)
		})
	}
}

// supervise waits for e's runs to end and applies the restart policy.
// adopted says the running container was started by an earlier hostd.
func (m *Manager) supervise(e *entry, adopted bool) {
	e.supervised = true
	m.wg.Go(func() {
		defer close(e.done)
		backoff := firstBackoff
		for {
			var exit container.Exit
			if adopted {
				exit = e.c.WaitAdopted()
			} else {
				exit = e.c.Wait()
			}
			adopted = false
			e.copying.Wait()
			m.mu.Lock()
			st := &e.job.Status
			st.State, st.ExitedAt, st.Exit, st.Pid = StateExited, time.Now().UTC(), &exit, 0
			ranFor := st.ExitedAt.Sub(st.StartedAt)
			stopped := isClosed(e.stop)
			restart := !stopped && e.job.Spec.restarts(exit)
			if stopped {
				st.State = StateStopped
			}
			// A job that ran a while before failing starts over with a
			// short delay.
			if ranFor > 10*time.Second {
				backoff = firstBackoff
			}
			if restart {
				st.State, st.NextStart = StateBackoff, st.ExitedAt.Add(backoff)
			}
			exited := Event{Type: "exited", Job: e.job.Spec.ID, Time: st.ExitedAt, Exit: &exit, NextStart: st.NextStart}
			next := st.NextStart
			close(e.ran)
			e.ran = make(chan struct{})
			m.mu.Unlock()
			// After the waiters are released: they wait for the exit, not
			// for the cgroup and state to go. A restart comes after this.
			if err := e.c.Destroy(); err != nil {
				m.log.Warn("remove container", "job", e.job.Spec.ID, "err", err)
			}
			m.persist(e)
			m.publish(exited)
			if exit.OOMKilled {
				m.publish(Event{Type: "oom-killed", Job: e.job.Spec.ID, Time: exited.Time, Exit: &exit})
			}
			if stopped {
				m.publish(Event{Type: "stopped", Job: e.job.Spec.ID})
			}
			if !restart {
				return
			}
			for {
				select {
				case <-e.stop:
					m.mu.Lock()
					e.job.Status.State, e.job.Status.NextStart = StateStopped, time.Time{}
					m.mu.Unlock()
					m.persist(e)
					m.publish(Event{Type: "stopped", Job: e.job.Spec.ID})
					return
				case <-time.After(time.Until(next)):
				}
				backoff = min(2*backoff, e.job.Spec.maxBackoff())
				m.mu.Lock()
				e.job.Status.Restarts++
				m.mu.Unlock()
				if err := m.start(e); err != nil {
					m.log.Warn("restart job", "job", e.job.Spec.ID, "err", err)
					next = time.Now().Add(backoff).UTC()
					m.mu.Lock()
					e.job.Status.NextStart = next
					m.mu.Unlock()
					m.persist(e)
					continue
				}
				m.persist(e)
				m.publish(Event{Type: "restarted", Job: e.job.Spec.ID, Pid: e.job.Status.Pid})
				break
			}
		}
	})
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (m *Manager) persist(e *entry) error {
	m.mu.Lock()
	j := e.job
	m.mu.Unlock()
	if err := m.store.put(j); err != nil {
		m.log.Error("persist job", "job", j.Spec.ID, "err", err)
		return fmt.Errorf("job %s: store: %w", j.Spec.ID, err)
	}
	return nil
}

func (m *Manager) snapshot(e *entry) Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	return e.job
}

func (m *Manager) entry(id string) (*entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.jobs[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return e, nil
}

// Get returns one job.
func (m *Manager) Get(id string) (Job, error) {
	e, err := m.entry(id)
	if err != nil {
		return Job{}, err
	}
	return m.snapshot(e), nil
}

// List returns every job, sorted by id.
func (m *Manager) List() []Job {
	m.mu.Lock()
	jobs := make([]Job, 0, len(m.jobs))
	for _, e := range m.jobs {
		jobs = append(jobs, e.job)
	}
	m.mu.Unlock()
	slices.SortFunc(jobs, func(a, b Job) int { return strings.Compare(a.Spec.ID, b.Spec.ID) })
	return jobs
}

// Signal sends sig to a running job's first process.
func (m *Manager) Signal(id string, sig syscall.Signal) error {
	e, err := m.entry(id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	running, c := e.job.Status.State == StateRunning, e.c
	m.mu.Unlock()
	if !running {
		return fmt.Errorf("%w: %s is %s", ErrNotFound, id, e.job.Status.State)
	}
	return c.Signal(sig)
}

// Stop ends a job for good (no restarts): SIGTERM, then SIGKILL after
// grace (the default StopTimeout when zero). It returns once the job has
// exited.
func (m *Manager) Stop(ctx context.Context, id string, grace time.Duration) (Job, error) {
	e, err := m.entry(id)
	if err != nil {
		return Job{}, err
	}
	if grace <= 0 {
		grace = m.cfg.StopTimeout
	}
	m.mu.Lock()
	if !isClosed(e.stop) {
		close(e.stop)
	}
	running, c := e.job.Status.State == StateRunning, e.c
	m.mu.Unlock()
	if running {
		c.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(grace):
			c.Signal(syscall.SIGKILL)
		case <-ctx.Done():
			return Job{}, ctx.Err()
		}
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return Job{}, ctx.Err()
	}
	return m.snapshot(e), nil
}

// Remove forgets a job that is not running: its record, its logs. With
// force a running job is killed first.
func (m *Manager) Remove(ctx context.Context, id string, force bool) error {
	e, err := m.entry(id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	running := e.job.Status.State == StateRunning
	m.mu.Unlock()
	if running && !force {
		return fmt.Errorf("%w: stop %s first, or remove it with force", ErrRunning, id)
	}
	if _, err := m.Stop(ctx, id, time.Nanosecond); err != nil {
		return err
	}
	if err := m.store.delete(id); err != nil {
		return fmt.Errorf("job %s: store: %w", id, err)
	}
	m.mu.Lock()
	delete(m.jobs, id)
	close(e.gone)
	m.mu.Unlock()
	e.log.close()
	os.RemoveAll(m.logDir(id))
	os.RemoveAll(m.filesDir(id))
	m.releaseRootfs(e.job.Spec)
	m.detachNetwork(e)
	m.publish(Event{Type: "removed", Job: id})
	return nil
}

// Wait blocks until the job's current run ends (returning at once when
// it is not running) and returns the job.
func (m *Manager) Wait(ctx context.Context, id string) (Job, error) {
	e, err := m.entry(id)
	if err != nil {
		return Job{}, err
	}
	m.mu.Lock()
	running, ran := e.job.Status.State == StateRunning, e.ran
	m.mu.Unlock()
	if running {
		select {
		case <-ran:
		case <-ctx.Done():
			return Job{}, ctx.Err()
		}
	}
	return m.snapshot(e), nil
}

// Logs sends the job's log lines to emit: the last opts.Tail ones (all
// when 0), then, with opts.Follow, new ones until ctx ends or the job is
// removed.
func (m *Manager) Logs(ctx context.Context, id string, opts LogOptions, emit func(LogLine) error) error {
	e, err := m.entry(id)
	if err != nil {
		return err
	}
	if opts.Stream != "" && opts.Stream != Stdout && opts.Stream != Stderr {
		return fmt.Errorf("%w: stream %q: use %s or %s", ErrInvalid, opts.Stream, Stdout, Stderr)
	}
	lines, offset, err := readLines(e.log.dir, opts.Stream)
	if err != nil {
		return err
	}
	if opts.Tail > 0 && len(lines) > opts.Tail {
		lines = lines[len(lines)-opts.Tail:]
	}
	for _, l := range lines {
		if err := emit(l); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	return follow(ctx, e.log, e.gone, offset, opts.Stream, emit)
}

// Subscribe returns job events from now on and a cancel function; the
// channel closes if the subscriber falls 256 events behind.
func (m *Manager) Subscribe() (<-chan Event, func()) { return m.subs.Subscribe() }

func (m *Manager) publish(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	m.log.Info("job "+e.Type, "job", e.Job)
	m.subs.Publish(e)
}

// Close stops supervising and closes the store. Running containers keep
// running; the next Manager on the same directories adopts them.
func (m *Manager) Close() error {
	m.mu.Lock()
	if !m.closed {
		close(m.closing)
	}
	m.closed = true
	m.mu.Unlock()
	m.subs.Close()
	defer m.lock.Close()
	// Running containers have their own copy of the mount; a next
	// manager binds it again.
	if m.sysrootDir != "" {
		unix.Unmount(m.sysrootDir, unix.MNT_DETACH)
	}
	return m.store.close()
}
