package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
)

// testWait bounds every wait of a test for something the agent does.
const testWait = 10 * time.Second

var errDown = errors.New("fake controller is down")

// fakeController keeps the three collections under one index, answers
// blocking queries as the controller does, and applies reports as the
// controller does: the reporting host's instances are replaced.
type fakeController struct {
	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change
	index     uint64
	instances []controller.Instance
	services  []controller.Service
	hosts     []controller.Host
	down      bool
	// asked is, by collection, the highest index a query waited on:
	// the agent asks for index N only after it stored version N.
	asked   map[string]uint64
	reports chan report
	// refused gets a value for each report refused while down.
	refused chan struct{}
}

type report struct {
	host      string
	instances []controller.Instance
}

func newFakeController() *fakeController {
	return &fakeController{changed: make(chan struct{}), index: 1, asked: map[string]uint64{}, reports: make(chan report, 1000), refused: make(chan struct{}, 1000)}
}

// update changes the collections under the lock and makes a new index.
func (f *fakeController) update(change func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change()
	f.index++
	f.broadcast()
}

func (f *fakeController) broadcast() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeController) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
	f.broadcast()
}

func (f *fakeController) Instances(ctx context.Context, q controller.QueryOptions) ([]controller.Instance, controller.QueryMeta, error) {
	return query(ctx, f, "instances", q, func() []controller.Instance { return slices.Clone(f.instances) })
}

func (f *fakeController) Services(ctx context.Context, q controller.QueryOptions) ([]controller.Service, controller.QueryMeta, error) {
	return query(ctx, f, "services", q, func() []controller.Service { return slices.Clone(f.services) })
}

func (f *fakeController) Hosts(ctx context.Context, q controller.QueryOptions) ([]controller.Host, controller.QueryMeta, error) {
	return query(ctx, f, "hosts", q, func() []controller.Host { return slices.Clone(f.hosts) })
}

func query[T any](ctx context.Context, f *fakeController, what string, q controller.QueryOptions, get func() []T) ([]T, controller.QueryMeta, error) {
	wait := time.NewTimer(q.Wait)
	defer wait.Stop()
	f.mu.Lock()
	if q.Index > f.asked[what] {
		f.asked[what] = q.Index
		f.broadcast()
	}
	for {
		if f.down {
			f.mu.Unlock()
			return nil, controller.QueryMeta{}, errDown
		}
		if f.index > q.Index {
			break
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, controller.QueryMeta{}, ctx.Err()
		case <-wait.C:
			f.mu.Lock()
			v, idx := get(), f.index
			f.mu.Unlock()
			return v, controller.QueryMeta{Index: idx}, nil
		case <-ch:
		}
		f.mu.Lock()
	}
	defer f.mu.Unlock()
	return get(), controller.QueryMeta{Index: f.index}, nil
}

func (f *fakeController) ReportInstances(ctx context.Context, hostID string, instances []controller.Instance) error {
	f.mu.Lock()
	if f.down {
		f.mu.Unlock()
		select {
		case f.refused <- struct{}{}:
		default:
		}
		return errDown
	}
	f.mu.Unlock()
	f.update(func() {
		f.instances = slices.DeleteFunc(f.instances, func(in controller.Instance) bool { return in.Host == hostID })
		f.instances = append(f.instances, instances...)
	})
	f.reports <- report{hostID, slices.Clone(instances)}
	return nil
}

// waitSynced waits until the agent has stored the collections as they
// are now: it then asks for what comes after.
func (f *fakeController) waitSynced(t *testing.T) {
	t.Helper()
	deadline := time.NewTimer(testWait)
	defer deadline.Stop()
	f.mu.Lock()
	index := f.index
	for f.asked["instances"] < index || f.asked["services"] < index || f.asked["hosts"] < index {
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("the agent did not read the controller's index %d (asked %v)", index, f.asked)
		}
		f.mu.Lock()
	}
	f.mu.Unlock()
}

// waitReport returns the first report for which ok holds.
func (f *fakeController) waitReport(t *testing.T, what string, ok func(report) bool) report {
	t.Helper()
	deadline := time.NewTimer(testWait)
	defer deadline.Stop()
	for {
		select {
		case r := <-f.reports:
			if ok(r) {
				return r
			}
		case <-deadline.C:
			t.Fatalf("no report %s within %s", what, testWait)
		}
	}
}

// fakeHost serves the part of the host API that the agent uses, over
// TLS, to a real *host.Client.
type fakeHost struct {
	*host.Client
	srv *httptest.Server

	mu     sync.Mutex
	info   host.HostInfo
	jobs   []job.Job
	events chan job.Event
	// exec answers the host API's exec.
	exec func(id string, cmd []string, timeout time.Duration) (job.ExecResult, error)
}

func newFakeHost(t *testing.T, info host.HostInfo) *fakeHost {
	h := &fakeHost{info: info, events: make(chan job.Event, 100)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/host", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		json.NewEncoder(w).Encode(h.info)
	})
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		json.NewEncoder(w).Encode(h.jobs)
	})
	mux.HandleFunc("GET /v1/jobs/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, ": subscribed\n\n")
		w.(http.Flusher).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case e := <-h.events:
				data, _ := json.Marshal(e)
				fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, data)
				w.(http.Flusher).Flush()
			}
		}
	})
	// The host's Serf knows only itself, alive, and never changes.
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		defer h.mu.Unlock()
		json.NewEncoder(w).Encode([]host.Member{{ID: h.info.ID, Hostname: h.info.Hostname, Status: host.StatusAlive}})
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, ": subscribed\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("POST /v1/jobs/{id}/exec", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Cmd     []string     `json:"cmd"`
			Timeout job.Duration `json:"timeout"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, `{"error": "bad exec request"}`, http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		exec := h.exec
		h.mu.Unlock()
		res, err := exec(r.PathValue("id"), req.Cmd, req.Timeout.Duration)
		if err != nil {
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		json.NewEncoder(w).Encode(res)
	})
	h.srv = httptest.NewUnstartedServer(mux)
	// Handshakes cut off when the agent stops are no news.
	h.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	h.srv.StartTLS()
	t.Cleanup(h.srv.Close)
	h.Client = host.NewClientTransport(h.srv.Listener.Addr().String(), h.srv.Client().Transport)
	return h
}

// setJobs replaces the host's jobs and sends an event, as hostd does
// after a change.
func (h *fakeHost) setJobs(typ string, jobs ...job.Job) {
	h.mu.Lock()
	h.jobs = jobs
	h.mu.Unlock()
	h.events <- job.Event{Type: typ, Time: time.Now()}
}

// agentHost is the host of the agents of the DNS tests: none of the
// fixture's instances is on it, so that its reports (of no instances)
// leave them alone.
var agentHost = host.HostInfo{ID: "h9", API: "127.0.0.1:4443"}

// testConfig is a config for tests: DNS on loopback, quick retries, and
// no periodic work, so that what happens is what the test caused.
func testConfig(t *testing.T, h HostAPI, c Controller) Config {
	cfg := DefaultConfig()
	cfg.Host, cfg.Controller = h, c
	cfg.DNSAddr = "127.0.0.1:0"
	cfg.ResolvConf = t.TempDir() + "/resolv.conf"
	cfg.ResyncInterval = time.Hour
	cfg.ReportInterval = time.Hour
	cfg.WatchWait = time.Minute
	cfg.MinBackoff, cfg.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	cfg.Logger = testLogger(t)
	return cfg
}

// startAgent runs an agent until the test ends.
func startAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return a
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// ask sends one query over network ("udp" or "tcp") to addr.
func ask(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: testWait}
	m := new(dns.Msg).SetQuestion(name, qtype)
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return resp
}
