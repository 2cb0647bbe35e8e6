package container

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opencontainers/runc/libcontainer"
)

// ErrNotRunning is returned by Exec when the container has no running
// process to join.
var ErrNotRunning = errors.New("container is not running")

// Exec runs args as a further process of the running container: in its
// namespaces and cgroup, with the environment, user and working
// directory of s (the Spec the container was started with). Its stdout
// and stderr go, interleaved, to out. Exec returns when the process has
// exited, killed with SIGKILL if ctx ends first; output that processes it
// left behind write later is not waited for. A process killed by signal n
// has Code 128+n, as a shell would report it, and Signal set.
func (c *Container) Exec(ctx context.Context, s Spec, args []string, out io.Writer) (Exit, error) {
	if len(args) == 0 || args[0] == "" {
		return Exit{}, fmt.Errorf("container %s: exec: no command", c.ID())
	}
	r, w, err := os.Pipe()
	if err != nil {
		return Exit{}, err
	}
	defer r.Close()
	p := &libcontainer.Process{
		Args: args, Env: s.env(), Cwd: cmp.Or(s.Cwd, "/"),
		UID: int(s.UID), GID: int(s.GID),
		Stdout: w, Stderr: w,
	}
	err = c.lc.Run(p)
	w.Close()
	if err != nil {
		// Joining the namespaces of an init that has exited fails in
		// many ways; the status says whether that is why.
		if st, serr := c.lc.Status(); errors.Is(err, libcontainer.ErrNotRunning) || serr == nil && st == libcontainer.Stopped {
			return Exit{}, fmt.Errorf("container %s: %w", c.ID(), ErrNotRunning)
		}
		return Exit{}, fmt.Errorf("container %s: exec %q: %w", c.ID(), args[0], err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(out, r)
	}()
	waited := make(chan *os.ProcessState, 1)
	go func() {
		st, _ := p.Wait()
		waited <- st
	}()
	var st *os.ProcessState
	select {
	case st = <-waited:
	case <-ctx.Done():
		p.Signal(unix.SIGKILL)
		st = <-waited
	}
	// Everything the process wrote is in the pipe now, but a child it left
	// running may keep the pipe open: stop the copy, then take what is
	// left without waiting for more.
	r.SetReadDeadline(time.Unix(1, 0))
	<-copied
	r.SetReadDeadline(time.Time{})
	drain(r, out)
	exit := exitOf(st)
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		exit.Code = 128 + int(ws.Signal())
	}
	return exit, nil
}

// drain copies to out what r holds now, without waiting for more.
func drain(r *os.File, out io.Writer) {
	rc, err := r.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	rc.Read(func(fd uintptr) bool {
		for {
			n, err := unix.Read(int(fd), buf)
			if n > 0 {
				out.Write(buf[:n])
				continue
			}
			// EAGAIN: empty; 0 bytes: every writer is gone.
			if err != unix.EINTR {
				return true
			}
		}
	})
}

// exitOf tells how a process ended from its wait status.
func exitOf(st *os.ProcessState) Exit {
	if st == nil {
		return Exit{Code: -1, Unknown: true}
	}
	ws := st.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return Exit{Code: -1, Signal: ws.Signal().String()}
	}
	return Exit{Code: ws.ExitStatus()}
}
