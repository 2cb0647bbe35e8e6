package controller

import (
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host"
)

// Client calls the controller API. Give it the addresses of several
// controllers: a call goes to the one that last answered, and moves to
// the next only when a connection cannot be made (so a request is never
// sent twice). Any controller serves reads from its state and passes
// writes to the leader.
type Client struct {
	http *http.Client
	// find, when set, names the controllers again when none of the
	// known ones can be connected to (addresses change).
	find func(ctx context.Context) ([]string, error)

	mu    sync.Mutex
	addrs []string
	next  int
}

// NewClient returns a client for the controllers at addrs ("host" or
// "host:port"; the port defaults to DefaultAPIPort), with a TLS config
// from the cluster's credentials (bundle.Credentials.TLS).
func NewClient(addrs []string, tlsConfig *tls.Config) *Client {
	return NewClientTransport(addrs, newTransport(tlsConfig))
}

// newTransport is the HTTP transport of calls to controllers.
func newTransport(tlsConfig *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 10 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second, KeepAliveConfig: deadPeer, Control: unackedTimeout}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
}

// deadPeer makes the kernel probe an idle connection after 1 s and give
// up after two unanswered probes a second apart: a blocking query held
// by a controller whose host lost power fails after about 3 s, not after
// its wait or TCP's two hours, and the client moves on. A probe is one
// small packet a second per idle connection.
var deadPeer = net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 2}

// unackedTimeout covers what keepalive does not: a request written to a
// connection whose peer lost power stays unacknowledged, and TCP would
// retransmit it for some 15 minutes; TCP_USER_TIMEOUT ends it after 5 s.
func unackedTimeout(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 5000)
	})
	if err != nil {
		return err
	}
	return serr
}

func withPorts(addrs []string) []string {
	var norm []string
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(strings.Trim(a, "[]"), strconv.Itoa(DefaultAPIPort))
		}
		norm = append(norm, a)
	}
	return norm
}

// NewHostClient returns a client that finds the controllers through a
// host's API: the alive members with the controller role, at
// DefaultAPIPort. It asks again whenever none of them can be reached, so
// it follows address changes and new controller hosts.
func NewHostClient(hosts *host.Client, tlsConfig *tls.Config) *Client {
	c := NewClient(nil, tlsConfig)
	c.find = func(ctx context.Context) ([]string, error) {
		members, err := hosts.Members(ctx)
		if err != nil {
			return nil, fmt.Errorf("find the controllers through the host API: %w", err)
		}
		addrs := Addrs(members)
		if len(addrs) == 0 {
			return nil, fmt.Errorf("no alive host has the %q role (see plinth members)", RoleController)
		}
		return addrs, nil
	}
	return c
}

// Addrs returns the controller API addresses of the alive members with
// the controller role.
func Addrs(members []host.Member) []string {
	var addrs []string
	for _, m := range members {
		if !IsControllerHost(m) {
			continue
		}
		if a, err := memberAddr(m, DefaultAPIPort); err == nil {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// NewClientTransport is NewClient with a transport of the caller's (one
// that dials from another network namespace, say); it must carry the
// TLS config.
func NewClientTransport(addrs []string, tr http.RoundTripper) *Client {
	return &Client{addrs: withPorts(addrs), http: &http.Client{Transport: tr}}
}

// peer returns a client of one other controller, on the controller's
// one transport for its peers (a transport per call would keep a
// connection open per call).
func (c *Controller) peer(addr string) *Client {
	return NewClientTransport([]string{addr}, c.peers)
}

// APIError is an error answer of a controller.
type APIError struct {
	StatusCode int
	Message    string
	// Index is the collection's index a read's error answer carried (a
	// 404 of a blocking query), else 0.
	Index uint64
}

func (e *APIError) Error() string {
	return fmt.Sprintf("controller: %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// IsConflict reports whether err is a compare-and-set conflict (409).
func IsConflict(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == http.StatusConflict
}

// IsInvalid reports whether err is a 400: the controller refused the
// request as wrong, and sending it again cannot help.
func IsInvalid(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == http.StatusBadRequest
}

// IsNotFound reports whether err is a 404.
func IsNotFound(err error) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}

// send makes one request, trying the next controller when the current
// one cannot be connected to. A non-2xx answer is an *APIError.
func (c *Client) send(ctx context.Context, method, path string, body []byte, contentType string) (*http.Response, error) {
	c.mu.Lock()
	addrs, start := c.addrs, c.next
	c.mu.Unlock()
	resp, reached, err := c.sendTo(ctx, addrs, start, method, path, body, contentType)
	if reached || c.find == nil || ctx.Err() != nil {
		return resp, err
	}
	found, ferr := c.find(ctx)
	if ferr != nil {
		if err == nil {
			err = ferr
		}
		return nil, err
	}
	c.mu.Lock()
	c.addrs, c.next = found, 0
	c.mu.Unlock()
	resp, _, err = c.sendTo(ctx, found, 0, method, path, body, contentType)
	return resp, err
}

// sendTo tries addrs from start on until one can be connected to;
// reached says whether one was.
func (c *Client) sendTo(ctx context.Context, addrs []string, start int, method, path string, body []byte, contentType string) (_ *http.Response, reached bool, _ error) {
	if len(addrs) == 0 {
		return nil, false, errors.New("controller: no addresses (give --controller, or a host whose members name them)")
	}
	var lastErr error
	for i := range addrs {
		n := (start + i) % len(addrs)
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, "https://"+addrs[n]+path, rd)
		if err != nil {
			return nil, true, err
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			lastErr = fmt.Errorf("controller %s: %w", addrs[n], err)
			if isDialError(err) && ctx.Err() == nil {
				continue
			}
			// The request may have reached it, so it is not sent again;
			// the next call starts with another controller.
			c.mu.Lock()
			if slices.Equal(c.addrs, addrs) && ctx.Err() == nil {
				c.next = (n + 1) % len(addrs)
			}
			c.mu.Unlock()
			return nil, true, lastErr
		}
		c.mu.Lock()
		if slices.Equal(c.addrs, addrs) {
			c.next = n
		}
		c.mu.Unlock()
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			defer resp.Body.Close()
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			var e apiError
			if json.Unmarshal(data, &e) != nil || e.Error == "" {
				e.Error = strings.TrimSpace(string(data))
			}
			idx, _ := strconv.ParseUint(resp.Header.Get(IndexHeader), 10, 64)
			return nil, true, &APIError{StatusCode: resp.StatusCode, Message: e.Error, Index: idx}
		}
		return resp, true, nil
	}
	return nil, false, lastErr
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// call sends v as JSON (when not nil) and decodes the answer into out
// (when not nil), returning the index header.
func (c *Client) call(ctx context.Context, method, path string, v, out any) (QueryMeta, error) {
	var body []byte
	if v != nil {
		var err error
		if body, err = json.Marshal(v); err != nil {
			return QueryMeta{}, err
		}
	}
	resp, err := c.send(ctx, method, path, body, "application/json")
	if err != nil {
		var apiErr *APIError
		if errors.As(err, &apiErr) {
			return QueryMeta{Index: apiErr.Index}, err
		}
		return QueryMeta{}, err
	}
	defer func() {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	idx, _ := strconv.ParseUint(resp.Header.Get(IndexHeader), 10, 64)
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return QueryMeta{}, fmt.Errorf("controller %s: decode: %w", path, err)
		}
	}
	return QueryMeta{Index: idx}, nil
}

func queryPath(path string, q QueryOptions) string {
	v := url.Values{}
	if q.Index > 0 {
		v.Set("index", strconv.FormatUint(q.Index, 10))
		if q.Wait > 0 {
			v.Set("wait", q.Wait.String())
		}
	}
	if q.Consistent {
		v.Set("consistent", "true")
	}
	if len(v) == 0 {
		return path
	}
	return path + "?" + v.Encode()
}

func casPath(path string, cas *uint64) string {
	if cas == nil {
		return path
	}
	return path + "?cas=" + strconv.FormatUint(*cas, 10)
}

func listOf[T any](c *Client, ctx context.Context, kind string, q QueryOptions) ([]T, QueryMeta, error) {
	var out []T
	meta, err := c.call(ctx, http.MethodGet, queryPath("/v1/"+kind, q), nil, &out)
	return out, meta, err
}

// Status returns the controller's raft status with every voter's health.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	_, err := c.call(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

func (c *Client) localStatus(ctx context.Context) (Status, error) {
	var s Status
	_, err := c.call(ctx, http.MethodGet, "/v1/status?local=true", nil, &s)
	return s, err
}

// Hosts lists the hosts; with q.Index, once the collection changed
// after it.
func (c *Client) Hosts(ctx context.Context, q QueryOptions) ([]Host, QueryMeta, error) {
	return listOf[Host](c, ctx, "hosts", q)
}

// Services lists the services and their leaders.
func (c *Client) Services(ctx context.Context, q QueryOptions) ([]Service, QueryMeta, error) {
	return listOf[Service](c, ctx, "services", q)
}

// Instances lists every service instance.
func (c *Client) Instances(ctx context.Context, q QueryOptions) ([]Instance, QueryMeta, error) {
	return listOf[Instance](c, ctx, "instances", q)
}

// Settings lists the cluster settings.
func (c *Client) Settings(ctx context.Context, q QueryOptions) ([]Setting, QueryMeta, error) {
	return listOf[Setting](c, ctx, "settings", q)
}

// Events lists the cluster's recent events, oldest first.
func (c *Client) Events(ctx context.Context, q QueryOptions) ([]Event, QueryMeta, error) {
	return listOf[Event](c, ctx, "events", q)
}

// Setting returns one setting.
func (c *Client) Setting(ctx context.Context, key string, q QueryOptions) (Setting, QueryMeta, error) {
	var s Setting
	meta, err := c.call(ctx, http.MethodGet, queryPath("/v1/settings/"+url.PathEscape(key), q), nil, &s)
	return s, meta, err
}

// PutSetting writes a setting. With cas, only if its ModifyIndex is
// *cas (0: only if it does not exist); else IsConflict(err).
func (c *Client) PutSetting(ctx context.Context, key, value string, cas *uint64) (Setting, error) {
	var s Setting
	_, err := c.call(ctx, http.MethodPut, casPath("/v1/settings/"+url.PathEscape(key), cas), Setting{Key: key, Value: value}, &s)
	return s, err
}

// DeleteSetting removes a setting, under the same cas rule.
func (c *Client) DeleteSetting(ctx context.Context, key string, cas *uint64) error {
	_, err := c.call(ctx, http.MethodDelete, casPath("/v1/settings/"+url.PathEscape(key), cas), nil, nil)
	return err
}

// Cordon sets or clears a host's cordoned flag.
func (c *Client) Cordon(ctx context.Context, id string, cordon bool) (Host, error) {
	op := "uncordon"
	if cordon {
		op = "cordon"
	}
	var h Host
	_, err := c.call(ctx, http.MethodPost, "/v1/hosts/"+url.PathEscape(id)+"/"+op, nil, &h)
	return h, err
}

// ReportInstances replaces the instances recorded for host.
func (c *Client) ReportInstances(ctx context.Context, hostID string, instances []Instance) error {
	if instances == nil {
		instances = []Instance{}
	}
	_, err := c.call(ctx, http.MethodPut, "/v1/hosts/"+url.PathEscape(hostID)+"/instances", instances, nil)
	return err
}

// AddVoter adds a controller host as a voter.
func (c *Client) AddVoter(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodPost, "/v1/voters", voterRequest{ID: id}, nil)
	return err
}

// RemoveVoter removes a voter.
func (c *Client) RemoveVoter(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/v1/voters/"+url.PathEscape(id), nil, nil)
	return err
}

// Backup streams a backup of the whole state to w.
func (c *Client) Backup(ctx context.Context, w io.Writer) (BackupHeader, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/backup", nil, "")
	if err != nil {
		return BackupHeader{}, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	h, _, err := ReadBackup(io.TeeReader(resp.Body, &buf))
	if err != nil {
		return h, fmt.Errorf("backup from the controller: %w", err)
	}
	_, err = w.Write(buf.Bytes())
	return h, err
}

// Restore replaces the cluster's state with a backup's. A backup of
// another cluster is refused unless force.
func (c *Client) Restore(ctx context.Context, r io.Reader, force bool) (BackupHeader, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxBackup+64<<10))
	if err != nil {
		return BackupHeader{}, err
	}
	h, _, err := ReadBackup(bytes.NewReader(data))
	if err != nil {
		return h, err
	}
	path := "/v1/restore"
	if force {
		path += "?force=true"
	}
	resp, err := c.send(ctx, http.MethodPost, path, data, "application/octet-stream")
	if err != nil {
		return h, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return h, nil
}
