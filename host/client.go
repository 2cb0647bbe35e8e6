package host

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
)

// Client calls one host's API. Make its TLS config from the cluster's
// credentials (bundle.Credentials.TLS) or, host to host, from the bundle.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client for the host API at addr ("host", "[IPv6]" or
// "host:port"; the port defaults to DefaultAPIPort).
func NewClient(addr string, tlsConfig *tls.Config) *Client {
	return NewClientTransport(addr, &http.Transport{
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 10 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	})
}

// NewClientTransport is NewClient with a transport of the caller's, for
// callers that dial in their own way (another network namespace, a
// tunnel); the transport must carry the TLS config.
func NewClientTransport(addr string, tr http.RoundTripper) *Client {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), strconv.Itoa(DefaultAPIPort))
	}
	return &Client{base: "https://" + addr, http: &http.Client{Transport: tr}}
}

// APIError is an error response from a host.
type APIError struct {
	StatusCode int
	Message    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("host API: %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// Health returns nil when the host answers /healthz.
func (c *Client) Health(ctx context.Context) error {
	var v map[string]string
	return c.get(ctx, "/healthz", &v)
}

// Host returns the host's identity.
func (c *Client) Host(ctx context.Context) (HostInfo, error) {
	var v HostInfo
	err := c.get(ctx, "/v1/host", &v)
	return v, err
}

// Members returns the members the host knows, failed and left included.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var v []Member
	err := c.get(ctx, "/v1/members", &v)
	return v, err
}

func (c *Client) get(ctx context.Context, path string, v any) error {
	return c.call(ctx, http.MethodGet, path, nil, v)
}

// call sends body (JSON, when not nil) and decodes the answer into out
// (when not nil).
func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	resp, err := c.send(ctx, method, path, rd)
	if err != nil {
		return err
	}
	defer func() {
		// Read to the end, or the connection cannot be reused and the
		// next call pays a new TLS handshake.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("host API %s: decode: %w", path, err)
	}
	return nil
}

func (c *Client) do(ctx context.Context, path string) (*http.Response, error) {
	return c.send(ctx, http.MethodGet, path, nil)
}

// send makes the request and turns a non-2xx answer into an *APIError.
func (c *Client) send(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("host API: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		var e apiError
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(body))
		}
		return nil, &APIError{StatusCode: resp.StatusCode, Message: e.Error}
	}
	return resp, nil
}

// EventStream is an open GET /v1/events.
type EventStream struct {
	body io.Closer
	r    *bufio.Reader
}

// Events opens the host's member event stream. When it returns, the host
// has subscribed: every later event reaches the stream.
func (c *Client) Events(ctx context.Context) (*EventStream, error) {
	return c.openEvents(ctx, "/v1/events")
}

// JobEvents opens the host's job event stream; read it with NextJob.
func (c *Client) JobEvents(ctx context.Context) (*EventStream, error) {
	return c.openEvents(ctx, "/v1/jobs/events")
}

func (c *Client) openEvents(ctx context.Context, path string) (*EventStream, error) {
	resp, err := c.do(ctx, path)
	if err != nil {
		return nil, err
	}
	s := &EventStream{body: resp.Body, r: bufio.NewReader(resp.Body)}
	line, err := s.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, ":") {
		resp.Body.Close()
		return nil, fmt.Errorf("host API %s: no subscription confirmation (%q, %v)", path, line, err)
	}
	return s, nil
}

// Next blocks until the next member event. It returns io.EOF when the
// host ends the stream.
func (s *EventStream) Next() (Event, error) {
	var e Event
	err := s.next(&e)
	return e, err
}

// NextJob blocks until the next job event.
func (s *EventStream) NextJob() (job.Event, error) {
	var e job.Event
	err := s.next(&e)
	return e, err
}

func (s *EventStream) next(v any) error {
	var data strings.Builder
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if data.Len() == 0 {
				continue // end of a comment or of the confirmation
			}
			if err := json.Unmarshal([]byte(data.String()), v); err != nil {
				return fmt.Errorf("host API event stream: decode: %w", err)
			}
			return nil
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }

// CreateJob creates and starts a job.
func (c *Client) CreateJob(ctx context.Context, spec job.Spec) (job.Job, error) {
	var j job.Job
	err := c.call(ctx, http.MethodPost, "/v1/jobs", spec, &j)
	return j, err
}

// Jobs lists the host's jobs.
func (c *Client) Jobs(ctx context.Context) ([]job.Job, error) {
	var v []job.Job
	err := c.get(ctx, "/v1/jobs", &v)
	return v, err
}

// Job returns one job.
func (c *Client) Job(ctx context.Context, id string) (job.Job, error) {
	var j job.Job
	err := c.get(ctx, "/v1/jobs/"+url.PathEscape(id), &j)
	return j, err
}

// SignalJob sends a signal ("TERM", "KILL", "HUP", or a number).
func (c *Client) SignalJob(ctx context.Context, id, signal string) error {
	return c.call(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/signal?signal="+url.QueryEscape(signal), nil, nil)
}

// StopJob stops a job for good: SIGTERM, SIGKILL after grace (0: the
// host's default).
func (c *Client) StopJob(ctx context.Context, id string, grace time.Duration) (job.Job, error) {
	var j job.Job
	p := "/v1/jobs/" + url.PathEscape(id) + "/stop"
	if grace > 0 {
		p += "?grace=" + grace.String()
	}
	err := c.call(ctx, http.MethodPost, p, nil, &j)
	return j, err
}

// RemoveJob forgets a stopped job; force kills a running one first.
func (c *Client) RemoveJob(ctx context.Context, id string, force bool) error {
	return c.call(ctx, http.MethodDelete, "/v1/jobs/"+url.PathEscape(id)+"?force="+strconv.FormatBool(force), nil, nil)
}

// WaitJob blocks until the job's current run ends.
func (c *Client) WaitJob(ctx context.Context, id string) (job.Job, error) {
	var j job.Job
	err := c.get(ctx, "/v1/jobs/"+url.PathEscape(id)+"/wait", &j)
	return j, err
}

// ExecJob runs cmd inside the running job id, killed after timeout (zero:
// job.DefaultExecTimeout), and returns its exit code and the start of its
// output. A job that is not running is a 409 *APIError.
func (c *Client) ExecJob(ctx context.Context, id string, cmd []string, timeout time.Duration) (job.ExecResult, error) {
	var res job.ExecResult
	err := c.call(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/exec", execRequest{Cmd: cmd, Timeout: job.Duration{Duration: timeout}}, &res)
	return res, err
}

// JobLogs calls emit for each log line; with opts.Follow until ctx ends.
func (c *Client) JobLogs(ctx context.Context, id string, opts job.LogOptions, emit func(job.LogLine) error) error {
	q := url.Values{}
	if opts.Stream != "" {
		q.Set("stream", opts.Stream)
	}
	if opts.Tail > 0 {
		q.Set("tail", strconv.Itoa(opts.Tail))
	}
	if opts.Follow {
		q.Set("follow", "true")
	}
	resp, err := c.send(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id)+"/logs?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var l job.LogLine
		if err := dec.Decode(&l); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("host API logs: %w", err)
		}
		if err := emit(l); err != nil {
			return err
		}
	}
}

// JobChanges opens what an ended image job wrote on top of its image, as
// an uncompressed OCI layer tar. A job still running is a 409 *APIError.
func (c *Client) JobChanges(ctx context.Context, id string) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id)+"/changes", nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// ImportImage sends a `docker save` archive or a tar of an OCI layout and
// returns the images it held.
func (c *Client) ImportImage(ctx context.Context, archive io.Reader) ([]imagestore.Image, error) {
	resp, err := c.send(ctx, http.MethodPost, "/v1/images", archive)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var imgs []imagestore.Image
	if err := json.NewDecoder(resp.Body).Decode(&imgs); err != nil {
		return nil, fmt.Errorf("host API /v1/images: decode: %w", err)
	}
	return imgs, nil
}

// Images lists the host's imported images.
func (c *Client) Images(ctx context.Context) ([]imagestore.Image, error) {
	var v []imagestore.Image
	err := c.get(ctx, "/v1/images", &v)
	return v, err
}

// RemoveImage forgets an image (its layers go at the next GC).
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	return c.call(ctx, http.MethodDelete, "/v1/images/"+ref, nil, nil)
}

// UpgradeOptions tune Upgrade.
type UpgradeOptions struct {
	AllowDowngrade bool
	Tries          int  // boots the new slot gets; 0: the host's default
	NoReboot       bool // install only; the new slot boots at the next reboot
}

// Upgrade sends an upgrade bundle to the host, which checks it, writes
// it into its other slot and, unless told not to, reboots into it.
func (c *Client) Upgrade(ctx context.Context, bundle io.Reader, opts UpgradeOptions) (UpgradeResult, error) {
	q := url.Values{}
	if opts.AllowDowngrade {
		q.Set("allow_downgrade", "1")
	}
	if opts.Tries > 0 {
		q.Set("tries", strconv.Itoa(opts.Tries))
	}
	if opts.NoReboot {
		q.Set("reboot", "0")
	}
	path := "/v1/host/upgrade"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	resp, err := c.send(ctx, http.MethodPost, path, bundle)
	if err != nil {
		return UpgradeResult{}, err
	}
	defer resp.Body.Close()
	var res UpgradeResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return UpgradeResult{}, fmt.Errorf("host API %s: decode: %w", path, err)
	}
	return res, nil
}

// Rollback makes the host's other slot its next boot and reboots into
// it.
func (c *Client) Rollback(ctx context.Context) (UpgradeResult, error) {
	var res UpgradeResult
	err := c.call(ctx, http.MethodPost, "/v1/host/rollback", nil, &res)
	return res, err
}

// InstallOptions tune Install.
type InstallOptions struct {
	// Force overwrites a disk that is not blank (partitions, or data at
	// either end). A disk in use is refused all the same.
	Force bool
	// Cmdline is the kernel command line of the new disk's boot entries;
	// empty: the host's default (slots.DefaultOptions).
	Cmdline string
}

// Install sends a bundle to the host, which checks it and the disk (a
// whole disk of the host's, unused and, unless forced, blank) and then
// writes a new plinth disk onto it: boot loader, slot A holding the
// bundle's image, and a data partition.
func (c *Client) Install(ctx context.Context, disk string, bundle io.Reader, opts InstallOptions) (InstallResult, error) {
	q := url.Values{"disk": {disk}}
	if opts.Force {
		q.Set("force", "1")
	}
	if opts.Cmdline != "" {
		q.Set("cmdline", opts.Cmdline)
	}
	path := "/v1/host/install?" + q.Encode()
	resp, err := c.send(ctx, http.MethodPost, path, bundle)
	if err != nil {
		return InstallResult{}, err
	}
	defer resp.Body.Close()
	var res InstallResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return InstallResult{}, fmt.Errorf("host API /v1/host/install: decode: %w", err)
	}
	return res, nil
}
