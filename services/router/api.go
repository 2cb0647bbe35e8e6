package router

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-os/plinth/services/controller"
)

// Status is a router's account of itself.
type Status struct {
	// Loaded: the router has heard every collection from the controller
	// and serves from it.
	Loaded bool          `json:"loaded"`
	Routes []RouteStatus `json:"routes"`
	// TableError is why the last change of the HTTP routes was not
	// applied (the table before it serves).
	TableError string `json:"table_error,omitempty"`
	// Backends are the instances this router knows, with their work.
	Backends []BackendStatus `json:"backends"`
}

// RouteStatus is whether one TCP or UDP route listens on this host.
type RouteStatus struct {
	ID    string `json:"id"`
	Error string `json:"error,omitempty"`
}

// BackendStatus is one instance's work through this router.
type BackendStatus struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	// Active is its work in flight: HTTP requests, TCP connections and
	// UDP sessions.
	Active int64  `json:"active"`
	Total  uint64 `json:"total"`
	// Serving: it takes new work (healthy and not draining).
	Serving bool `json:"serving"`
}

// MaxIdleWait caps how long one idle query waits.
const MaxIdleWait = 5 * time.Minute

// idlePoll is how often an idle query looks at the counts: they are
// atomics the data paths change, with nothing to wait on.
const idlePoll = 20 * time.Millisecond

func (r *Router) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, r.status()) })
	mux.HandleFunc("GET /v1/idle/{id...}", r.serveIdle)
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no such endpoint: %s %s (see docs/api-reference.md)", req.Method, req.URL.Path)})
	})
	return mux
}

func (r *Router) status() Status {
	r.mu.Lock()
	st := Status{Loaded: r.state.isLoaded(), TableError: r.state.tableErr, Routes: []RouteStatus{}, Backends: []BackendStatus{}}
	for _, rt := range r.state.routes {
		if rt.Type != controller.RouteHTTP {
			st.Routes = append(st.Routes, RouteStatus{ID: rt.ID, Error: r.l4.errs[rt.ID]})
		}
	}
	r.mu.Unlock()
	serving := map[string]bool{}
	for _, s := range r.sets.All() {
		for _, b := range s.Backends {
			serving[b.ID+" "+b.Addr] = true
		}
	}
	for _, b := range r.pool.All() {
		st.Backends = append(st.Backends, BackendStatus{ID: b.ID, Addr: b.Addr, Active: b.Active(), Total: b.Total(), Serving: serving[b.ID+" "+b.Addr]})
	}
	slices.SortFunc(st.Backends, func(a, b BackendStatus) int { return strings.Compare(a.ID+a.Addr, b.ID+b.Addr) })
	return st
}

// active is the work in flight on instance id, at any of its addresses,
// and whether this router still gives it new work.
func (r *Router) active(id string) (n int64, serving bool) {
	for _, b := range r.pool.All() {
		if b.ID == id {
			n += b.Active()
		}
	}
	for _, set := range r.sets.All() {
		if set.ByID(id) != nil {
			serving = true
		}
	}
	return n, serving
}

// serveIdle answers once instance {id} gets no new work from this router
// (it applied the drain) and has none in flight here, or when ?wait=
// (default 30 s) ends: {"active": N, "serving": …}.
func (r *Router) serveIdle(w http.ResponseWriter, req *http.Request) {
	wait := 30 * time.Second
	if s := req.URL.Query().Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("wait %q: want a duration such as 30s", s)})
			return
		}
		wait = min(d, MaxIdleWait)
	}
	id := req.PathValue("id")
	ctx, cancel := context.WithTimeout(req.Context(), wait)
	defer cancel()
	t := time.NewTicker(idlePoll)
	defer t.Stop()
	n, serving := r.active(id)
	for n > 0 || serving {
		select {
		case <-ctx.Done():
			writeJSON(w, http.StatusOK, Idle{Active: n, Serving: serving})
			return
		case <-t.C:
			n, serving = r.active(id)
		}
	}
	writeJSON(w, http.StatusOK, Idle{})
}

// Idle is the answer of an idle query.
type Idle struct {
	Active int64 `json:"active"`
	// Serving: the router still gives the instance new work (it has not
	// heard of the drain yet).
	Serving bool `json:"serving,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Client calls one router's API.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient calls the router at addr (host:port) over TLS with
// tlsConfig, or over plain HTTP when it is nil.
func NewClient(addr string, tlsConfig *tls.Config) *Client {
	return NewClientTransport(addr, Transport(tlsConfig))
}

// Transport is a transport for router APIs, to share between the
// clients of many routers: idle connections end after 30 s.
func Transport(tlsConfig *tls.Config) *http.Transport {
	return &http.Transport{TLSClientConfig: tlsConfig, DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		IdleConnTimeout: 30 * time.Second}
}

// NewClientTransport calls the router at addr through tr: over TLS when
// tr has a TLS config.
func NewClientTransport(addr string, tr *http.Transport) *Client {
	scheme := "http"
	if tr.TLSClientConfig != nil {
		scheme = "https"
	}
	return &Client{base: scheme + "://" + addr, hc: &http.Client{Transport: tr}}
}

// HostAddr is the router API's address on a host, from the host's API
// address.
func HostAddr(h controller.Host) (string, error) {
	ip, _, err := net.SplitHostPort(h.API)
	if err != nil {
		return "", fmt.Errorf("host %s: API address %q: %w", h.ID, h.API, err)
	}
	return net.JoinHostPort(ip, strconv.Itoa(controller.RouterAPIPort)), nil
}

// Status reads the router's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.get(ctx, "/v1/status", &st)
}

// WaitIdle waits up to wait for instance id to get no new work from this
// router and have none in flight on it, and returns what it found last.
func (c *Client) WaitIdle(ctx context.Context, id string, wait time.Duration) (Idle, error) {
	var out Idle
	err := c.get(ctx, "/v1/idle/"+id+"?wait="+url.QueryEscape(wait.String()), &out)
	return out, err
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("router %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("router %s: %s: %s", c.base, resp.Status, e.Error)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("router %s: %s: %w", c.base, path, err)
	}
	return nil
}
