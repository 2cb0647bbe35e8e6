package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/fs"
	"github.com/opencontainers/cgroups/fs2"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/specconv"

	// libcontainer's C constructor that joins the namespaces before the Go
	// runtime starts, in "<binary> init".
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	// The device cgroup rules (v1 cgroup file, v2 eBPF program).
	_ "github.com/opencontainers/cgroups/devices"
)

// IsInit reports whether libcontainer re-executed this binary as
// "<binary> init" to set up a container. Such a process is PID 1 of the
// container's PID namespace, so a binary that is also a machine's PID 1
// must ask this before it looks at its PID.
func IsInit() bool {
	return len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != ""
}

// Init sets up the container and execs its command when IsInit; it never
// returns then. Call it first thing in main (and in TestMain of tests that
// start containers).
func Init() {
	if IsInit() {
		libcontainer.Init()
	}
}

// Runtime starts and finds containers whose state libcontainer keeps
// under one directory.
type Runtime struct {
	root string
}

// New returns a runtime keeping container state in root (a tmpfs such as
// /run is right: the state describes running processes, which do not
// outlive a reboot).
func New(root string) (*Runtime, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("container state directory: %w", err)
	}
	return &Runtime{root: root}, nil
}

// Stdio connects a container's standard streams. Nil streams read from or
// write to /dev/null. Files are handed to the process as they are, so a
// container keeps writing to them whatever happens to its starter.
type Stdio struct {
	Stdin          *os.File
	Stdout, Stderr *os.File
	// Extra files become the process's file descriptors 3, 4, ...
	Extra []*os.File
}

// Container is one started container.
type Container struct {
	lc   *libcontainer.Container
	proc *libcontainer.Process // nil for an adopted container
	pid  int

	waitOnce sync.Once
	exit     Exit
}

// Exit is how a container's process ended.
type Exit struct {
	// Code is the exit status, or -1 when a signal killed the process.
	Code int `json:"code"`
	// Signal names the signal that killed it, if one did.
	Signal string `json:"signal,omitempty"`
	// OOMKilled is set when the kernel killed it for exceeding its memory
	// limit.
	OOMKilled bool `json:"oom_killed,omitempty"`
	// Unknown is set when the status could not be learnt: the process was
	// not our child (an adopted container) or was gone when we looked.
	Unknown bool `json:"unknown,omitempty"`
}

// Start creates the container and starts its process. On error nothing of
// it is left behind: no state directory, no cgroup.
func (r *Runtime) Start(s Spec, stdio Stdio) (*Container, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	spec := s.ociSpec(cgroups.IsCgroup2UnifiedMode())
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:   s.ID,
		NoNewKeyring: true,
		Spec:         spec,
	})
	if err != nil {
		return nil, fmt.Errorf("container %s: config: %w", s.ID, err)
	}
	lc, err := libcontainer.Create(r.root, s.ID, cfg)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return nil, fmt.Errorf("container %s already exists", s.ID)
		}
		return nil, fmt.Errorf("container %s: create: %w", s.ID, err)
	}
	p := &libcontainer.Process{
		Args: spec.Process.Args, Env: spec.Process.Env, Cwd: spec.Process.Cwd,
		UID: int(s.UID), GID: int(s.GID),
		Init: true,
	}
	// A nil *os.File in an io.Reader or io.Writer field is not a nil
	// interface; libcontainer would try to copy through it.
	if stdio.Stdin != nil {
		p.Stdin = stdio.Stdin
	}
	if stdio.Stdout != nil {
		p.Stdout = stdio.Stdout
	}
	if stdio.Stderr != nil {
		p.Stderr = stdio.Stderr
	}
	p.ExtraFiles = stdio.Extra
	if err := lc.Run(p); err != nil {
		lc.Destroy()
		return nil, fmt.Errorf("container %s: start %q: %w", s.ID, s.args()[0], err)
	}
	pid, err := p.Pid()
	if err != nil {
		p.Signal(syscall.SIGKILL)
		p.Wait()
		lc.Destroy()
		return nil, fmt.Errorf("container %s: %w", s.ID, err)
	}
	return &Container{lc: lc, proc: p, pid: pid}, nil
}

// ID returns the container's ID.
func (c *Container) ID() string { return c.lc.ID() }

// Pid returns the host PID of the container's first process.
func (c *Container) Pid() int { return c.pid }

// Signal sends sig to the container's first process.
func (c *Container) Signal(sig os.Signal) error {
	if err := c.lc.Signal(sig); err != nil {
		return fmt.Errorf("container %s: signal %v: %w", c.ID(), sig, err)
	}
	return nil
}

// Wait blocks until the container's first process has exited and returns
// how. Only the process that started the container can see the exit code;
// see Adopt.
func (c *Container) Wait() Exit {
	c.waitOnce.Do(func() {
		state, err := c.proc.Wait()
		if state == nil {
			c.exit = Exit{Code: -1, Signal: fmt.Sprint(err)}
			return
		}
		c.exit = exitOf(state)
		ws := state.Sys().(syscall.WaitStatus)
		// Killed by SIGKILL itself, or an init reporting a child killed so
		// (128+9): the OOM killer may be why.
		killed := ws.Signaled() && ws.Signal() == syscall.SIGKILL || ws.Exited() && ws.ExitStatus() == 128+int(syscall.SIGKILL)
		c.exit.OOMKilled = killed && c.oomKills() > 0
	})
	return c.exit
}

// oomKills reads how many processes the OOM killer killed in the
// container's cgroup, which outlives them until Destroy. The kernel
// counts a kill before the victim can exit, so unlike libcontainer's OOM
// notification, which arrives on its own time, the count read after the
// exit is final.
func (c *Container) oomKills() uint64 {
	st, err := c.lc.State()
	if err != nil {
		return 0
	}
	var n uint64
	if cgroups.IsCgroup2UnifiedMode() {
		n, err = fs2.OOMKillCount(st.CgroupPaths[""])
	} else {
		n, err = fs.OOMKillCount(st.CgroupPaths["memory"])
	}
	if err != nil {
		return 0
	}
	return n
}

// Destroy removes what is left of the container (its cgroup, state and
// any process still in it).
func (c *Container) Destroy() error {
	if err := c.lc.Destroy(); err != nil {
		return fmt.Errorf("container %s: destroy: %w", c.ID(), err)
	}
	return nil
}

// WaitAdopted blocks until the first process of an adopted container has
// exited. Only a parent learns an exit status, so the Exit is Unknown.
func (c *Container) WaitAdopted() Exit {
	fd, err := unix.PidfdOpen(c.pid, 0)
	if err == nil {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
	}
	return Exit{Code: -1, Unknown: true}
}

// Adopt finds a container a previous hostd started and that is still
// running. Its exit code is lost to us (only a parent can wait for it);
// watch it with its PID.
func (r *Runtime) Adopt(id string) (*Container, error) {
	lc, err := libcontainer.Load(r.root, id)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	st, err := lc.State()
	if err != nil {
		return nil, fmt.Errorf("container %s: state: %w", id, err)
	}
	return &Container{lc: lc, pid: st.InitProcessPid}, nil
}

// List returns the IDs of the containers kept under the runtime's root.
func (r *Runtime) List() ([]string, error) {
	entries, err := os.ReadDir(r.root)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(r.root, e.Name(), "state.json")); e.IsDir() && err == nil {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}
