package host

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// HostInfo is GET /v1/host: who this host is.
type HostInfo struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	Cluster  string `json:"cluster"`
	// Version is the running image's; Binary the plinth binary's.
	Version string `json:"version"`
	Binary  string `json:"binary"`
	// Addr is the advertised gossip address, ip:port.
	Addr string `json:"addr"`
	// API is the advertised host API address, ip:port.
	API       string            `json:"api"`
	Roles     []string          `json:"roles"`
	Labels    map[string]string `json:"labels,omitempty"`
	StartedAt time.Time         `json:"started_at"`
	// MemoryBytes and CPUs are what the machine has, for placements;
	// MemoryAvailableBytes is what the kernel says is available now.
	MemoryBytes          int64 `json:"memory_bytes"`
	MemoryAvailableBytes int64 `json:"memory_available_bytes"`
	CPUs                 int   `json:"cpus"`
	// Slots are the disk slots and the upgrade state.
	Slots SlotsInfo `json:"slots"`
	// BootHealthy: a host booted from a disk slot has been healthy since
	// it booted (in the cluster, its jobs running), which commits a slot
	// on trial.
	BootHealthy bool `json:"boot_healthy,omitempty"`
}

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
}

// eventKeepalive is how often an idle event stream gets a comment line,
// so proxies and clients can tell a quiet stream from a dead one.
const eventKeepalive = 15 * time.Second

// handler serves the host API. TLS has already checked a client
// certificate, if one was given, against the cluster CA; only the bundle
// endpoint, which wants the join token instead, serves a request without.
func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/host", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Info())
	})
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.members.Members())
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		events, cancel := d.members.subscribe()
		defer cancel()
		serveSSE(w, r, events, func(e Event) string { return e.Type })
	})
	d.jobRoutes(mux)
	d.upgradeRoute(mux)
	d.installRoute(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// The catch-all also gets known paths asked with another method;
		// answer those 405 with the methods that exist.
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeJSON(w, http.StatusMethodNotAllowed, apiError{fmt.Sprintf("%s %s: allowed are %s", r.Method, r.URL.Path, strings.Join(allow, ", "))})
			return
		}
		writeJSON(w, http.StatusNotFound, apiError{fmt.Sprintf("no such endpoint: %s %s (see docs/api-reference.md)", r.Method, r.URL.Path)})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == bundlePath {
			d.serveBundle(w, r) // authorised by the join token instead
			return
		}
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeJSON(w, http.StatusUnauthorized, apiError{"client certificate required: use the client.toml of this cluster (plinth cluster init, plinth cluster credentials)"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// serveSSE streams events as server-sent events: one "event: <type>"
// and one "data: <JSON>" line per event. A first comment line tells the
// client the subscription is in place; a comment every eventKeepalive
// keeps idle streams distinguishable from dead ones. The stream ends when
// events closes (hostd stopping, or the client fell behind).
func serveSSE[E any](w http.ResponseWriter, r *http.Request, events <-chan E, typeOf func(E) string) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeJSON(w, http.StatusInternalServerError, apiError{"streaming unsupported"})
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": subscribed\n\n")
	flusher.Flush()
	keepalive := time.NewTicker(eventKeepalive)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case e, ok := <-events:
			if !ok {
				return
			}
			data, err := json.Marshal(e)
			if err != nil {
				return
			}
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", typeOf(e), data)
		}
		flusher.Flush()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
