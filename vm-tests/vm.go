package vmtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// VM is a running QEMU process. Its methods are safe for concurrent use.
type VM struct {
	cfg            Config
	stateDir       string
	removeStateDir bool
	hostPorts      map[int]int // guest port -> host port, user NICs

	cmd     *exec.Cmd
	console *console
	qmp     *qmpClient

	exited  chan struct{} // closed when QEMU, its console and QMP have ended
	waitErr error         // cmd.Wait's result, set before exited closes

	mu          sync.Mutex
	lineCursor  int // WaitFor continues after the last matched line
	eventCursor int // WaitEvent continues after the last matched event
	closeOnce   sync.Once
	closeErr    error
}

// maxUnixSocketPath is the longest path a unix socket address holds.
const maxUnixSocketPath = 107

// Start starts QEMU for cfg and returns once the guest is running, with QMP
// connected so that every event is recorded from the first instruction on.
// ctx bounds the start only; the VM runs until it exits or Close.
//
// QEMU gets SIGKILL when the process that started it dies (Pdeathsig), so
// an aborted test leaves no VM behind.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	v := &VM{cfg: cfg, stateDir: cfg.StateDir, exited: make(chan struct{})}
	if v.stateDir == "" {
		dir, err := os.MkdirTemp("", "plinth-vm-")
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
		}
		v.stateDir, v.removeStateDir = dir, true
	} else if err := os.MkdirAll(v.stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	if err := v.start(ctx); err != nil {
		if v.removeStateDir {
			os.RemoveAll(v.stateDir)
		}
		return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	return v, nil
}

func (v *VM) start(ctx context.Context) error {
	qmpPath := filepath.Join(v.stateDir, qmpSocketFile)
	if len(qmpPath) > maxUnixSocketPath {
		return fmt.Errorf("state dir path too long for a unix socket (%d bytes > %d): %s; use a shorter StateDir or TMPDIR",
			len(qmpPath), maxUnixSocketPath, qmpPath)
	}
	if err := os.Remove(qmpPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := v.resolveForwards(); err != nil {
		return err
	}
	if v.cfg.UEFI {
		if err := copyIfMissing(OVMFVars, filepath.Join(v.stateDir, efiVarsFile)); err != nil {
			return fmt.Errorf("UEFI variables (apt-get install ovmf): %w", err)
		}
	}
	if v.cfg.MachineConfig != nil {
		if err := os.WriteFile(filepath.Join(v.stateDir, machineConfigFile), v.cfg.MachineConfig, 0o600); err != nil {
			return fmt.Errorf("write machine config: %w", err)
		}
	}
	var links []*os.File
	defer func() {
		for _, f := range links {
			f.Close()
		}
	}()
	for _, n := range v.cfg.NICs {
		if n.Link != nil {
			f, err := n.Link.take()
			if err != nil {
				return err
			}
			links = append(links, f)
		}
	}

	args := qemuArgs(v.cfg, v.stateDir)
	if v.cfg.Netns != "" {
		args = append([]string{"netns", "exec", v.cfg.Netns, v.cfg.QEMU}, args...)
		v.cmd = exec.Command("ip", args...)
	} else {
		v.cmd = exec.Command(v.cfg.QEMU, args...)
	}
	v.cmd.ExtraFiles = links
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	qemuLog, err := os.Create(filepath.Join(v.stateDir, qemuLogFile))
	if err != nil {
		return err
	}
	defer qemuLog.Close()
	fmt.Fprintf(qemuLog, "%s\n", strings.Join(v.cmd.Args, " "))
	v.cmd.Stderr = qemuLog
	consoleLog, err := os.Create(filepath.Join(v.stateDir, consoleLogFile))
	if err != nil {
		return err
	}
	stdout, err := v.cmd.StdoutPipe()
	if err != nil {
		consoleLog.Close()
		return err
	}
	v.console = newConsole(consoleLog, v.cfg.Console)

	if err := v.cmd.Start(); err != nil {
		consoleLog.Close()
		return fmt.Errorf("start qemu: %w", err)
	}
	consoleDone := make(chan struct{})
	go func() {
		v.console.copyFrom(stdout)
		close(consoleDone)
	}()
	processDone := make(chan struct{})
	go func() {
		// Wait must not run before the console is read to its end.
		<-consoleDone
		v.waitErr = v.cmd.Wait()
		close(processDone)
	}()

	v.qmp, err = connectQMP(ctx, qmpPath, processDone)
	if err != nil {
		v.cmd.Process.Kill()
		<-processDone
		return fmt.Errorf("%w%s", err, v.qemuStderr())
	}
	go func() {
		<-processDone
		// QEMU has exited: the QMP reader drains the last events and
		// sees EOF.
		<-v.qmp.done
		close(v.exited)
	}()
	if _, err := v.qmp.execute(ctx, "cont", nil); err != nil {
		v.Close()
		return err
	}
	return nil
}

// connectQMP waits for QEMU to create its QMP socket and connects.
func connectQMP(ctx context.Context, path string, processDone <-chan struct{}) (*qmpClient, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		c, err := dialQMP(ctx, path)
		if err == nil {
			return c, nil
		}
		select {
		case <-processDone:
			return nil, errors.New("qemu exited during start")
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp: %w (last error: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// resolveForwards gives every forward without a host port a free one.
func (v *VM) resolveForwards() error {
	v.hostPorts = make(map[int]int)
	nics := append([]NIC(nil), v.cfg.NICs...)
	for i, n := range nics {
		if n.User == nil {
			continue
		}
		user := &UserNet{Forwards: append([]Forward(nil), n.User.Forwards...)}
		for j, f := range user.Forwards {
			if f.HostPort == 0 {
				port, err := FreePort()
				if err != nil {
					return err
				}
				user.Forwards[j].HostPort = port
			}
			v.hostPorts[f.GuestPort] = user.Forwards[j].HostPort
		}
		nics[i].User = user
	}
	v.cfg.NICs = nics
	return nil
}

// qemuStderr returns what QEMU wrote to stderr, as a suffix for an error.
func (v *VM) qemuStderr() string {
	b, err := os.ReadFile(filepath.Join(v.stateDir, qemuLogFile))
	if err != nil {
		return ""
	}
	// The first line is the command line.
	_, stderr, _ := strings.Cut(string(b), "\n")
	stderr = strings.TrimSpace(stderr)
	if stderr == "" {
		return ""
	}
	return ": " + stderr
}

// Name returns the VM's Config.Name.
func (v *VM) Name() string { return v.cfg.Name }

// StateDir returns the VM's state directory.
func (v *VM) StateDir() string { return v.stateDir }

// ConsoleLog returns the path of the console log file.
func (v *VM) ConsoleLog() string { return filepath.Join(v.stateDir, consoleLogFile) }

// PID returns the process ID of QEMU (also with Netns: ip netns exec
// execs QEMU in its own place).
func (v *VM) PID() int { return v.cmd.Process.Pid }

// HostAddr returns the 127.0.0.1 address forwarded to guestPort by a user
// NIC, or "" if there is none. With Netns it is the namespace's loopback.
func (v *VM) HostAddr(guestPort int) string {
	p, ok := v.hostPorts[guestPort]
	if !ok {
		return ""
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

// Console returns the console output so far, with "\r\n" as "\n".
func (v *VM) Console() string { return v.console.text() }

// ConsoleTail returns the last n lines of console output.
func (v *VM) ConsoleTail(n int) string { return v.console.tail(n) }

// Exited returns a channel that is closed once QEMU has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// WaitFor waits for a console line containing substr and returns the line.
// Like every wait of a VM it continues after the line that the previous
// WaitFor or WaitForRegexp matched, so that successive waits follow the
// boot and a marker printed again (after a reboot) is found again.
// It fails when ctx ends, QEMU exits or the guest kernel panics first.
func (v *VM) WaitFor(ctx context.Context, substr string) (string, error) {
	return v.waitLine(ctx, fmt.Sprintf("%q", substr), func(l string) bool { return strings.Contains(l, substr) })
}

// WaitForRegexp is WaitFor for the first line that re matches.
func (v *VM) WaitForRegexp(ctx context.Context, re *regexp.Regexp) (string, error) {
	return v.waitLine(ctx, "/"+re.String()+"/", re.MatchString)
}

// kernelPanic starts the console line of a kernel panic. Without panic= on
// the command line the guest then hangs: waiting on would only time out.
const kernelPanic = "Kernel panic - not syncing"

func (v *VM) waitLine(ctx context.Context, desc string, match func(string) bool) (string, error) {
	v.mu.Lock()
	i := v.lineCursor
	v.mu.Unlock()
	for {
		lines, changed, closed := v.console.linesSince(i)
		for _, l := range lines {
			i++
			if match(l) {
				v.mu.Lock()
				v.lineCursor = max(v.lineCursor, i)
				v.mu.Unlock()
				return l, nil
			}
			if strings.Contains(l, kernelPanic) {
				return "", fmt.Errorf("vm %s: waiting for %s: guest kernel panic: %s", v.cfg.Name, desc, l)
			}
		}
		if closed {
			<-v.exited
			return "", fmt.Errorf("vm %s: waiting for %s: %s", v.cfg.Name, desc, v.exitDescription())
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return "", fmt.Errorf("vm %s: waiting for %s: %w", v.cfg.Name, desc, ctx.Err())
		}
	}
}

// exitDescription says how QEMU ended; only valid after exited.
func (v *VM) exitDescription() string {
	if v.waitErr == nil {
		return "qemu exited with status 0"
	}
	return fmt.Sprintf("qemu exited: %v%s", v.waitErr, v.qemuStderr())
}

// WaitExit waits for QEMU to exit and returns its exit status; the error
// is non-nil only if ctx ended first or QEMU did not exit normally (it was
// killed by a signal, status -1).
func (v *VM) WaitExit(ctx context.Context) (int, error) {
	select {
	case <-v.exited:
	case <-ctx.Done():
		return -1, fmt.Errorf("vm %s: waiting for exit: %w", v.cfg.Name, ctx.Err())
	}
	code := v.cmd.ProcessState.ExitCode()
	if code < 0 {
		return code, fmt.Errorf("vm %s: %s", v.cfg.Name, v.exitDescription())
	}
	return code, nil
}

// QMP runs a QMP command with args (nil, or a value that encodes to a JSON
// object) and returns its "return" member. A "quit" succeeds even if QEMU
// exits before its reply.
func (v *VM) QMP(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	ret, err := v.qmp.execute(ctx, cmd, args)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", v.cfg.Name, err)
	}
	return ret, nil
}

// Powerdown presses the ACPI power button (QMP system_powerdown). The guest
// decides what to do: it needs the button driver and someone listening.
func (v *VM) Powerdown(ctx context.Context) error {
	_, err := v.QMP(ctx, "system_powerdown", nil)
	return err
}

// Reset resets the machine (QMP system_reset), as the reset button would.
func (v *VM) Reset(ctx context.Context) error {
	_, err := v.QMP(ctx, "system_reset", nil)
	return err
}

// Events returns the QMP events recorded so far, oldest first.
func (v *VM) Events() []Event {
	evs, _ := v.qmp.eventsSince(0)
	return evs
}

// WaitEvent waits for the QMP event name, e.g. "SHUTDOWN". Like WaitFor, it
// continues after the event that the previous WaitEvent matched.
func (v *VM) WaitEvent(ctx context.Context, name string) (Event, error) {
	v.mu.Lock()
	i := v.eventCursor
	v.mu.Unlock()
	for {
		evs, changed := v.qmp.eventsSince(i)
		for _, e := range evs {
			i++
			if e.Name == name {
				v.mu.Lock()
				v.eventCursor = max(v.eventCursor, i)
				v.mu.Unlock()
				return e, nil
			}
		}
		select {
		case <-changed:
		case <-v.qmp.done:
			// Events that arrived before the end are in the next
			// eventsSince; after that, none will come.
			if evs, _ := v.qmp.eventsSince(i); len(evs) > 0 {
				continue
			}
			return Event{}, fmt.Errorf("vm %s: waiting for event %s: qmp connection closed", v.cfg.Name, name)
		case <-ctx.Done():
			return Event{}, fmt.Errorf("vm %s: waiting for event %s: %w", v.cfg.Name, name, ctx.Err())
		}
	}
}

// Kill kills QEMU with SIGKILL, as pulling the power cord would.
func (v *VM) Kill() error {
	select {
	case <-v.exited:
		return nil
	default:
	}
	if err := v.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("vm %s: kill: %w", v.cfg.Name, err)
	}
	return nil
}

// Close kills QEMU if it is still running and waits until it has exited.
// It removes the state directory only if Start created it.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		v.closeErr = v.Kill()
		<-v.exited
		v.qmp.close()
		if v.removeStateDir {
			if err := os.RemoveAll(v.stateDir); err != nil {
				v.closeErr = errors.Join(v.closeErr, err)
			}
		}
	})
	return v.closeErr
}

// console collects a VM's serial output: it tees it to the log file and an
// optional writer, and keeps it in memory as lines.
type console struct {
	log *os.File
	tee io.Writer

	mu      sync.Mutex
	lines   []string
	partial strings.Builder
	closed  bool
	changed chan struct{} // closed and replaced on every new line
}

func newConsole(log *os.File, tee io.Writer) *console {
	return &console{log: log, tee: tee, changed: make(chan struct{})}
}

// copyFrom reads QEMU's serial output until EOF, which comes when QEMU exits.
func (c *console) copyFrom(r io.Reader) {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			c.write(buf[:n])
		}
		if err != nil {
			break
		}
	}
	c.mu.Lock()
	if c.partial.Len() > 0 {
		c.lines = append(c.lines, c.partial.String())
		c.partial.Reset()
	}
	c.closed = true
	close(c.changed)
	c.mu.Unlock()
	c.log.Close()
}

func (c *console) write(p []byte) {
	text := strings.ReplaceAll(string(p), "\r", "")
	c.log.WriteString(text)
	if c.tee != nil {
		// An error of a human-facing writer must not stop the VM.
		c.tee.Write([]byte(text))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	added := false
	for {
		line, rest, found := strings.Cut(text, "\n")
		if !found {
			c.partial.WriteString(line)
			break
		}
		c.partial.WriteString(line)
		c.lines = append(c.lines, c.partial.String())
		c.partial.Reset()
		added = true
		text = rest
	}
	if added {
		close(c.changed)
		c.changed = make(chan struct{})
	}
}

// linesSince returns the complete lines from index i on, a channel closed
// when more arrive, and whether the console has ended.
func (c *console) linesSince(i int) ([]string, <-chan struct{}, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines[min(i, len(c.lines)):]...), c.changed, c.closed
}

func (c *console) text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, l := range c.lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString(c.partial.String())
	return b.String()
}

func (c *console) tail(n int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	lines := c.lines[max(0, len(c.lines)-n):]
	s := strings.Join(lines, "\n")
	if c.partial.Len() > 0 {
		s += "\n" + c.partial.String()
	}
	return s
}

// CtrlAltDel presses Ctrl-Alt-Del on the guest's keyboard: plinth init
// reboots in order.
func (v *VM) CtrlAltDel(ctx context.Context) error {
	keys := []map[string]string{{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"}}
	_, err := v.QMP(ctx, "send-key", map[string]any{"keys": keys})
	return err
}

// copyIfMissing copies src to dst unless dst exists: a VM restarted on
// the same StateDir keeps its UEFI variables, as a machine keeps its
// NVRAM.
func copyIfMissing(src, dst string) error {
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o600)
}
