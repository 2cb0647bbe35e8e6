package job

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/plinth-os/plinth/host/container"
)

// ExecResult is what a command run inside a job did (Manager.Exec).
type ExecResult struct {
	// ExitCode is the command's exit status, or 128+n when signal n
	// killed it (137 when the timeout did).
	ExitCode int `json:"exit_code"`
	// Output is the start of its stdout and stderr, interleaved as
	// written: at most MaxExecOutput bytes.
	Output string `json:"output"`
	// TimedOut says the timeout ran out and the command was killed.
	TimedOut bool `json:"timed_out,omitempty"`
	// Truncated says the command wrote more than MaxExecOutput bytes:
	// Output holds only their start.
	Truncated bool `json:"truncated,omitempty"`
}

// MaxExecOutput bounds ExecResult.Output; the rest is read and dropped,
// so a talkative command does not block on a full pipe. Enough for a
// JSON status of a few dozen hosts (plinth status --json).
const MaxExecOutput = 64 << 10

// DefaultExecTimeout is Exec's timeout when given none.
const DefaultExecTimeout = 10 * time.Second

// ErrNotRunning: the job has no running process (exited, stopped or
// waiting to restart).
var ErrNotRunning = errors.New("job is not running")

// Exec runs cmd inside the running job id, as one more process with the
// job's environment, user and working directory, and returns its exit
// code and the start of its output. It is killed when timeout (zero:
// DefaultExecTimeout) runs out or ctx ends.
func (m *Manager) Exec(ctx context.Context, id string, cmd []string, timeout time.Duration) (ExecResult, error) {
	switch {
	case len(cmd) == 0 || cmd[0] == "":
		return ExecResult{}, fmt.Errorf("%w: cmd is empty: give the command to run in the job", ErrInvalid)
	case timeout < 0:
		return ExecResult{}, fmt.Errorf("%w: timeout %v is negative", ErrInvalid, timeout)
	case timeout == 0:
		timeout = DefaultExecTimeout
	}
	e, err := m.entry(id)
	if err != nil {
		return ExecResult{}, err
	}
	m.mu.Lock()
	state, c, spec := e.job.Status.State, e.c, e.job.Spec
	m.mu.Unlock()
	if state != StateRunning {
		return ExecResult{}, fmt.Errorf("%w: %s is %s", ErrNotRunning, id, state)
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out prefix
	exit, err := c.Exec(tctx, spec.container(m.cfg.Init, "/"), cmd, &out)
	if errors.Is(err, container.ErrNotRunning) {
		return ExecResult{}, fmt.Errorf("%w: %s has just exited", ErrNotRunning, id)
	}
	if err != nil {
		// The command could not start: not found, not executable.
		return ExecResult{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	timedOut := tctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
	return ExecResult{ExitCode: exit.Code, Output: string(out.b), TimedOut: timedOut, Truncated: out.dropped}, ctx.Err()
}

// prefix keeps the first MaxExecOutput bytes written to it.
type prefix struct {
	b       []byte
	dropped bool // more than that was written
}

func (p *prefix) Write(b []byte) (int, error) {
	n := min(MaxExecOutput-len(p.b), len(b))
	p.b = append(p.b, b[:n]...)
	p.dropped = p.dropped || n < len(b)
	return len(b), nil
}
