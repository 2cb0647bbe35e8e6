package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host/job"
)

// check is a health check as the agent runs it, defaults applied.
type check struct {
	// kind is job.CheckTCP, job.CheckHTTP, job.CheckCommand, or "" for
	// none: the instance is healthy while its job runs.
	kind string
	// path and status of an HTTP check.
	path   string
	status int
	// command runs inside the job.
	command  []string
	interval time.Duration
	timeout  time.Duration
}

// result is the outcome of one check.
type result struct {
	healthy bool
	// output says why, in a few words.
	output string
}

// maxOutput bounds a result's output: it goes to the controller with
// every report.
const maxOutput = 120

// checker runs health checks. Its HTTP client keeps no idle connections,
// so every check dials as a new client would and a check holds nothing
// open between runs.
type checker struct {
	host HostAPI
	http *http.Client
}

func newChecker(h HostAPI) *checker {
	return &checker{
		host: h,
		http: &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			// A redirect is an answer: follow none, so that a check
			// stays on the instance it checks.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// execSlack is how much longer than a command check's timeout the agent
// waits for the host's answer: the host kills the command at the
// timeout, and says so.
const execSlack = 2 * time.Second

// run runs c once against the instance at addr (ip:port) of the job
// jobID, within c.timeout.
func (k *checker) run(ctx context.Context, c check, jobID, addr string) result {
	wait := c.timeout
	if c.kind == job.CheckCommand {
		wait += execSlack
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var r result
	var err error
	switch c.kind {
	case "":
		r = result{true, "running, no health check"}
	case job.CheckTCP:
		r, err = k.tcp(ctx, addr)
	case job.CheckHTTP:
		r, err = k.httpGet(ctx, addr, c.path, c.status)
	case job.CheckCommand:
		r, err = k.command(ctx, jobID, c.command, c.timeout)
	default:
		r = result{false, fmt.Sprintf("unknown check type %q", c.kind)}
	}
	switch {
	case err != nil && ctx.Err() == context.DeadlineExceeded:
		r = result{false, fmt.Sprintf("%s check: no answer within %s", c.kind, wait)}
	case err != nil:
		r = result{false, fmt.Sprintf("%s check: %s", c.kind, shortError(err))}
	}
	if len(r.output) > maxOutput {
		r.output = r.output[:maxOutput-3] + "..."
	}
	return r
}

// The checks return an error when they got no answer.

func (k *checker) tcp(ctx context.Context, addr string) (result, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return result{}, err
	}
	conn.Close()
	return result{true, "tcp connect ok"}, nil
}

func (k *checker) httpGet(ctx context.Context, addr, path string, status int) (result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return result{}, err
	}
	req.Header.Set("User-Agent", "plinth-discovery")
	resp, err := k.http.Do(req)
	if err != nil {
		return result{}, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != status {
		return result{false, fmt.Sprintf("http %d, want %d", resp.StatusCode, status)}, nil
	}
	return result{true, fmt.Sprintf("http %d", resp.StatusCode)}, nil
}

func (k *checker) command(ctx context.Context, jobID string, cmd []string, timeout time.Duration) (result, error) {
	res, err := k.host.ExecJob(ctx, jobID, cmd, timeout)
	if err != nil {
		return result{}, err
	}
	if res.TimedOut {
		return result{false, fmt.Sprintf("command check: killed after %s", timeout)}, nil
	}
	out := fmt.Sprintf("exit %d", res.ExitCode)
	if line, _, _ := strings.Cut(strings.TrimSpace(res.Output), "\n"); line != "" {
		out += ": " + line
	}
	return result{res.ExitCode == 0, out}, nil
}

// shortError is the end of a dial or HTTP error, without the addresses
// that the instance's ID already gives: "connection refused".
func shortError(err error) string {
	var sys *os.SyscallError
	if errors.As(err, &sys) {
		return sys.Err.Error()
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err.Error()
	}
	return err.Error()
}
