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
)

// Check types.
const (
	checkTCP     = "tcp"
	checkHTTP    = "http"
	checkCommand = "command"
)

// check is a health check as the agent runs it, defaults applied.
type check struct {
	// kind is checkTCP, checkHTTP, checkCommand, or "" for none: the
	// instance is healthy while its job runs.
	kind string
	// path and status of an HTTP check; status 0 accepts any 2xx.
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

// run runs c once against the instance at addr (ip:port) of job, within
// c.timeout.
func (k *checker) run(ctx context.Context, c check, job, addr string) result {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var r result
	switch c.kind {
	case "":
		r = result{true, "running, no health check"}
	case checkTCP:
		r = k.tcp(ctx, addr)
	case checkHTTP:
		r = k.httpGet(ctx, addr, c.path, c.status)
	case checkCommand:
		r = k.command(ctx, job, c.command, c.timeout)
	default:
		r = result{false, fmt.Sprintf("unknown check type %q", c.kind)}
	}
	if ctx.Err() == context.DeadlineExceeded && !r.healthy {
		r.output = fmt.Sprintf("%s check: no answer within %s", c.kind, c.timeout)
	}
	if len(r.output) > maxOutput {
		r.output = r.output[:maxOutput-3] + "..."
	}
	return r
}

func (k *checker) tcp(ctx context.Context, addr string) result {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return result{false, "tcp connect: " + shortError(err)}
	}
	conn.Close()
	return result{true, "tcp connect ok"}
}

func (k *checker) httpGet(ctx context.Context, addr, path string, status int) result {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return result{false, "http check: " + err.Error()}
	}
	req.Header.Set("User-Agent", "plinth-discovery")
	resp, err := k.http.Do(req)
	if err != nil {
		return result{false, "http get: " + shortError(err)}
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	ok := resp.StatusCode == status || status == 0 && resp.StatusCode >= 200 && resp.StatusCode <= 299
	switch {
	case ok:
		return result{true, fmt.Sprintf("http %d", resp.StatusCode)}
	case status == 0:
		return result{false, fmt.Sprintf("http %d, want 2xx", resp.StatusCode)}
	default:
		return result{false, fmt.Sprintf("http %d, want %d", resp.StatusCode, status)}
	}
}

func (k *checker) command(ctx context.Context, job string, cmd []string, timeout time.Duration) result {
	res, err := k.host.ExecJob(ctx, job, cmd, timeout)
	if err != nil {
		return result{false, "exec: " + err.Error()}
	}
	out := strings.TrimSpace(res.Output)
	if line, _, _ := strings.Cut(out, "\n"); line != "" {
		out = ": " + line
	}
	return result{res.ExitCode == 0, fmt.Sprintf("exit %d%s", res.ExitCode, out)}
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
