package host

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
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
	resp, err := c.do(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("host API %s: decode: %w", path, err)
	}
	return nil
}

func (c *Client) do(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("host API: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
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
	resp, err := c.do(ctx, "/v1/events")
	if err != nil {
		return nil, err
	}
	s := &EventStream{body: resp.Body, r: bufio.NewReader(resp.Body)}
	line, err := s.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, ":") {
		resp.Body.Close()
		return nil, fmt.Errorf("host API /v1/events: no subscription confirmation (%q, %v)", line, err)
	}
	return s, nil
}

// Next blocks until the next event. It returns io.EOF when the host ends
// the stream.
func (s *EventStream) Next() (Event, error) {
	var data strings.Builder
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return Event{}, err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if data.Len() == 0 {
				continue // end of a comment or of the confirmation
			}
			var e Event
			if err := json.Unmarshal([]byte(data.String()), &e); err != nil {
				return Event{}, fmt.Errorf("host API /v1/events: decode: %w", err)
			}
			return e, nil
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }
