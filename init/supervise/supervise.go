// Package supervise runs plinth's layer-0 services under PID 1: it starts
// them in order, waits for each to report readiness over a notify socket
// (the sd_notify protocol: a datagram "READY=1"), restarts them with
// exponential backoff when they exit, and stops them in reverse order.
//
// It also owns reaping: PID 1 inherits every orphan on the machine, so one
// loop collects all exit statuses with wait4(-1) and hands those of
// supervised processes to their service. Nothing else in the process may
// call wait on children while a Supervisor runs. What to run is the caller's
// business; supervise knows no service by name.
package supervise

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RestartPolicy says when an exited service is started again.
type RestartPolicy int

const (
	Always    RestartPolicy = iota // restart after any exit
	OnFailure                      // restart after a non-zero exit or a signal
	Never                          // never restart
)

// Service is one supervised program.
type Service struct {
	Name string
	Path string
	Args []string // argv[1:]
	// Argv0 is argv[0]; default Path.
	Argv0   string
	Env     []string // added to the supervisor's environment
	Restart RestartPolicy
	// Notify makes readiness wait for "READY=1" on $NOTIFY_SOCKET; without
	// it a service is ready as soon as it has started.
	Notify bool
	// ReadyTimeout bounds how long Start waits for this service before
	// moving on (0: Config.ReadyTimeout).
	ReadyTimeout time.Duration
	// StopTimeout is the grace period between SIGTERM and SIGKILL on stop
	// (0: Config.StopTimeout).
	StopTimeout time.Duration
}

// Config tunes a Supervisor. Build it with DefaultConfig.
type Config struct {
	RuntimeDir   string        // holds one notify socket per service
	Output       io.Writer     // services' stdout/stderr, one "name: line" per line
	Log          *slog.Logger  // supervisor events
	BackoffMin   time.Duration // first restart delay
	BackoffMax   time.Duration // restart delay cap
	StableAfter  time.Duration // a run at least this long resets the backoff
	ReadyTimeout time.Duration
	StopTimeout  time.Duration
}

// DefaultConfig returns the settings PID 1 uses.
func DefaultConfig() Config {
	return Config{
		RuntimeDir:   "/run/plinth/notify",
		Output:       os.Stdout,
		Log:          slog.Default(),
		BackoffMin:   100 * time.Millisecond,
		BackoffMax:   30 * time.Second,
		StableAfter:  10 * time.Second,
		ReadyTimeout: 60 * time.Second,
		StopTimeout:  10 * time.Second,
	}
}

// Status is a snapshot of one service.
type Status struct {
	Name     string
	PID      int // 0 when not running
	Ready    bool
	Restarts int
	LastExit string // e.g. "exit status 1", "signal: killed"; empty before the first exit
	LastErr  string // last start or readiness error
}

// Supervisor runs services and reaps every child of the process.
type Supervisor struct {
	cfg Config

	mu       sync.Mutex // guards services and their fields below
	services []*service
}

type service struct {
	Service
	sock    *net.UnixConn
	stop    chan struct{} // closed to ask run to stop
	stopped chan struct{} // closed when run has returned

	// guarded by Supervisor.mu
	pid      int
	ready    bool
	readyCh  chan struct{} // closed when ready in the current run
	restarts int
	lastExit string
	lastErr  string
}

// New returns a Supervisor. Call Start to run services.
func New(cfg Config) *Supervisor {
	return &Supervisor{cfg: cfg}
}

// Start starts each service in order, waiting for it to be ready (or its
// ready timeout) before starting the next, and keeps them running until
// Stop. It returns the names of services that did not become ready in time;
// they keep being supervised.
func (s *Supervisor) Start(ctx context.Context, svcs ...Service) (notReady []string, err error) {
	StartReaper()
	if err := os.MkdirAll(s.cfg.RuntimeDir, 0o755); err != nil {
		return nil, fmt.Errorf("create notify socket dir: %w", err)
	}
	for _, spec := range svcs {
		svc, err := s.add(spec)
		if err != nil {
			return notReady, err
		}
		timeout := spec.ReadyTimeout
		if timeout == 0 {
			timeout = s.cfg.ReadyTimeout
		}
		if err := s.waitReady(ctx, svc, timeout); err != nil {
			if ctx.Err() != nil {
				return notReady, ctx.Err()
			}
			s.cfg.Log.Warn("service not ready, continuing", "service", spec.Name, "after", timeout)
			notReady = append(notReady, spec.Name)
		}
	}
	return notReady, nil
}

func (s *Supervisor) add(spec Service) (*service, error) {
	if spec.Name == "" || strings.ContainsAny(spec.Name, "/ ") {
		return nil, fmt.Errorf("service name %q: must be non-empty without '/' or spaces", spec.Name)
	}
	s.mu.Lock()
	for _, o := range s.services {
		if o.Name == spec.Name {
			s.mu.Unlock()
			return nil, fmt.Errorf("service %s: already supervised", spec.Name)
		}
	}
	s.mu.Unlock()
	if spec.StopTimeout == 0 {
		spec.StopTimeout = s.cfg.StopTimeout
	}
	path := filepath.Join(s.cfg.RuntimeDir, spec.Name+".sock")
	os.Remove(path)
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("service %s: notify socket: %w", spec.Name, err)
	}
	svc := &service{Service: spec, sock: sock, stop: make(chan struct{}), stopped: make(chan struct{}), readyCh: make(chan struct{})}
	s.mu.Lock()
	s.services = append(s.services, svc)
	s.mu.Unlock()
	go s.readNotify(svc)
	go s.run(svc)
	return svc, nil
}

func (s *Supervisor) waitReady(ctx context.Context, svc *service, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		ch := svc.readyCh
		s.mu.Unlock()
		select {
		case <-ch:
			s.mu.Lock()
			ok := svc.ready
			s.mu.Unlock()
			if ok {
				return nil
			}
			// The run that was starting ended; wait for the next one.
			time.Sleep(10 * time.Millisecond)
		case <-t.C:
			return fmt.Errorf("service %s: not ready after %s", svc.Name, timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// run starts the service and restarts it by policy until asked to stop.
func (s *Supervisor) run(svc *service) {
	defer close(svc.stopped)
	backoff := s.cfg.BackoffMin
	for {
		started := time.Now()
		pid, exited, err := s.spawn(svc)
		var status unix.WaitStatus
		if err != nil {
			s.cfg.Log.Error("service start failed", "service", svc.Name, "err", err)
			s.setExit(svc, "", err.Error())
			status = unix.WaitStatus(1 << 8)
		} else {
			select {
			case status = <-exited:
				s.setExit(svc, describeStatus(status), "")
				s.cfg.Log.Warn("service exited", "service", svc.Name, "pid", pid, "status", describeStatus(status))
			case <-svc.stop:
				s.terminate(svc, pid, exited)
				return
			}
		}
		failed := !status.Exited() || status.ExitStatus() != 0
		if svc.Restart == Never || (svc.Restart == OnFailure && !failed) {
			<-svc.stop
			return
		}
		if time.Since(started) >= s.cfg.StableAfter {
			backoff = s.cfg.BackoffMin
		}
		s.mu.Lock()
		svc.restarts++
		s.mu.Unlock()
		select {
		case <-time.After(backoff):
		case <-svc.stop:
			return
		}
		backoff = min(2*backoff, s.cfg.BackoffMax)
	}
}

// spawn starts one run of svc and registers it with the reaper. The reaper's
// lock is held across fork so that it cannot see the exit of a child before
// its waiter exists.
func (s *Supervisor) spawn(svc *service) (int, chan unix.WaitStatus, error) {
	out, w, err := os.Pipe()
	if err != nil {
		return 0, nil, err
	}
	defer w.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		out.Close()
		return 0, nil, err
	}
	defer null.Close()
	env := append(os.Environ(), svc.Env...)
	env = append(env, "NOTIFY_SOCKET="+svc.sock.LocalAddr().String())
	attr := &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{null.Fd(), w.Fd(), w.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	argv0 := svc.Path
	if svc.Argv0 != "" {
		argv0 = svc.Argv0
	}
	argv := append([]string{argv0}, svc.Args...)

	exited := make(chan unix.WaitStatus, 1)
	s.mu.Lock()
	svc.ready = false
	select {
	case <-svc.readyCh: // closed by the previous run: waiters need a new one
		svc.readyCh = make(chan struct{})
	default:
	}
	readyCh := svc.readyCh
	reap.mu.Lock()
	pid, err := syscall.ForkExec(svc.Path, argv, attr)
	if err == nil {
		reap.waiters[pid] = exited
	}
	reap.mu.Unlock()
	if err == nil {
		svc.pid = pid
		if !svc.Notify {
			svc.ready = true
			close(readyCh)
		}
	}
	s.mu.Unlock()
	if err != nil {
		out.Close()
		s.mu.Lock()
		close(readyCh)
		s.mu.Unlock()
		return 0, nil, fmt.Errorf("start %s: %w", svc.Path, err)
	}
	s.cfg.Log.Info("service started", "service", svc.Name, "pid", pid)
	go s.copyOutput(svc.Name, out)
	return pid, exited, nil
}

func (s *Supervisor) copyOutput(name string, r *os.File) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fmt.Fprintf(s.cfg.Output, "%s: %s\n", name, sc.Text())
	}
}

// terminate stops a running service: SIGTERM to its process group, then
// SIGKILL after the grace period.
func (s *Supervisor) terminate(svc *service, pid int, exited chan unix.WaitStatus) {
	unix.Kill(-pid, unix.SIGTERM)
	var status unix.WaitStatus
	select {
	case status = <-exited:
	case <-time.After(svc.StopTimeout):
		s.cfg.Log.Warn("service did not stop in time, killing", "service", svc.Name, "pid", pid, "grace", svc.StopTimeout)
		unix.Kill(-pid, unix.SIGKILL)
		status = <-exited
	}
	s.setExit(svc, describeStatus(status), "")
	s.cfg.Log.Info("service stopped", "service", svc.Name, "status", describeStatus(status))
}

func (s *Supervisor) setExit(svc *service, exit, errText string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	svc.pid = 0
	if svc.ready {
		svc.ready = false
	} else {
		select {
		case <-svc.readyCh:
		default:
			close(svc.readyCh) // wake readiness waiters; ready stays false
		}
	}
	if exit != "" {
		svc.lastExit = exit
	}
	if errText != "" {
		svc.lastErr = errText
	}
}

// readNotify handles sd_notify datagrams for one service.
func (s *Supervisor) readNotify(svc *service) {
	buf := make([]byte, 4096)
	for {
		n, err := svc.sock.Read(buf)
		if err != nil {
			return // socket closed on Stop
		}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if line != "READY=1" {
				continue
			}
			s.mu.Lock()
			if svc.pid != 0 && !svc.ready {
				svc.ready = true
				close(svc.readyCh)
				s.cfg.Log.Info("service ready", "service", svc.Name)
			}
			s.mu.Unlock()
		}
	}
}

// Stop stops all services in reverse start order and waits for them.
func (s *Supervisor) Stop() {
	s.mu.Lock()
	svcs := append([]*service(nil), s.services...)
	s.mu.Unlock()
	for i := len(svcs) - 1; i >= 0; i-- {
		svc := svcs[i]
		select {
		case <-svc.stop:
		default:
			close(svc.stop)
		}
		<-svc.stopped
		svc.sock.Close()
		os.Remove(svc.sock.LocalAddr().String())
	}
}

// Status returns a snapshot of every service in start order.
func (s *Supervisor) Status() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.services))
	for _, svc := range s.services {
		out = append(out, Status{Name: svc.Name, PID: svc.pid, Ready: svc.ready, Restarts: svc.restarts, LastExit: svc.lastExit, LastErr: svc.lastErr})
	}
	return out
}

// StartReaper starts the process's reaper if it is not running. PID 1
// calls it first thing, before any service exists, so that orphans never
// linger as zombies; Start calls it too.
func StartReaper() { reap.once.Do(reap.start) }

// reap is the process's one reaper. It is package state because wait4(-1)
// is process state: two reapers would steal each other's children.
var reap = &reaper{waiters: map[int]chan unix.WaitStatus{}}

type reaper struct {
	once    sync.Once
	mu      sync.Mutex // held across fork+register, see spawn
	waiters map[int]chan unix.WaitStatus
}

// start collects exit statuses of all children on SIGCHLD.
func (r *reaper) start() {
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, unix.SIGCHLD)
	go func() {
		// A periodic pass covers a SIGCHLD that arrived before Notify.
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			r.reapAll()
			select {
			case <-sigchld:
			case <-tick.C:
			}
		}
	}()
}

// reapAll reaps every exited child; exits of processes that are not
// services (orphans re-parented to PID 1) are simply collected.
func (r *reaper) reapAll() {
	for {
		var status unix.WaitStatus
		pid, err := unix.Wait4(-1, &status, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.mu.Lock()
		ch, ok := r.waiters[pid]
		delete(r.waiters, pid)
		r.mu.Unlock()
		if ok {
			ch <- status
		}
	}
}

func describeStatus(st unix.WaitStatus) string {
	switch {
	case st.Exited():
		return fmt.Sprintf("exit status %d", st.ExitStatus())
	case st.Signaled():
		return "signal: " + st.Signal().String()
	}
	return fmt.Sprintf("wait status %#x", uint32(st))
}
