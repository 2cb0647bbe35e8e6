package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	memdb "github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
)

// Headers of the API.
const (
	// IndexHeader carries a read's QueryMeta.Index.
	IndexHeader = "X-Plinth-Index"
	// forwardedHeader marks a write a follower passed to its leader, so
	// it is never passed on again.
	forwardedHeader = "X-Plinth-Forwarded"
)

// maxBody bounds a JSON request body.
const maxBody = 1 << 20

type apiError struct {
	Error string `json:"error"`
}

func (c *Controller) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", c.serveStatus)
	mux.HandleFunc("GET /v1/backup", c.write(c.serveBackup))
	mux.HandleFunc("POST /v1/restore", c.write(c.serveRestore))
	mux.HandleFunc("POST /v1/voters", c.write(c.serveAddVoter))
	mux.HandleFunc("DELETE /v1/voters/{id}", c.write(c.serveRemoveVoter))
	mux.HandleFunc("PUT /v1/hosts/{id}/instances", c.write(c.serveReport))
	mux.HandleFunc("POST /v1/hosts/{id}/cordon", c.write(c.serveCordon(true)))
	mux.HandleFunc("POST /v1/hosts/{id}/uncordon", c.write(c.serveCordon(false)))
	mux.HandleFunc("POST /v1/hosts/{id}/drain", c.write(c.serveDrain))
	mux.HandleFunc("PUT /v1/leases/{name}", c.write(c.serveLease))
	mux.HandleFunc("POST /v1/schedule", c.write(c.serveSchedule))
	mux.HandleFunc("POST /v1/routes", c.write(c.serveAddRoute))
	mux.HandleFunc("POST /v1/instances/{id...}", c.write(c.serveInstanceDrain))
	mux.HandleFunc("POST /v1/apps/{name}/releases", c.write(c.serveRelease))
	mux.HandleFunc("DELETE /v1/apps/{name}", c.write(c.serveDestroyApp))
	mux.HandleFunc("POST /v1/apps/{name}/builds", c.write(c.serveStartBuild))
	mux.HandleFunc("PUT /v1/deploys/{id...}", c.write(c.serveDeployUpdate))
	mux.HandleFunc("GET /v1/{kind}", c.consistent(c.serveList))
	mux.HandleFunc("GET /v1/{kind}/{key...}", c.consistent(c.serveGet))
	mux.HandleFunc("PUT /v1/{kind}/{key...}", c.write(c.servePut))
	mux.HandleFunc("DELETE /v1/{kind}/{key...}", c.write(c.serveDelete))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s (see docs/api-reference.md)", r.Method, r.URL.Path))
	})
	return mux
}

// write wraps a handler that changes state (or, as a backup, must see
// every committed write): on a follower the request goes to the leader,
// so a client may talk to any controller.
func (c *Controller) write(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c.raft.State() == raft.Leader {
			h(w, r)
			return
		}
		if r.Header.Get(forwardedHeader) != "" {
			writeError(w, http.StatusServiceUnavailable, errors.New("forwarded to a controller that is no longer the leader; retry"))
			return
		}
		_, leader := c.raft.LeaderWithID()
		if leader == "" {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, errors.New("no controller leader: an election is under way, or quorum is lost (see plinth controller status)"))
			return
		}
		addr, err := c.members.apiAddr(string(leader))
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, fmt.Errorf("leader %s: %w", leader, err))
			return
		}
		c.proxy.ServeHTTP(w, withTarget(r, addr))
	}
}

// consistent wraps a read: with ?consistent=true it is served by the
// leader, once raft confirms it still leads, as writes are.
func (c *Controller) consistent(h http.HandlerFunc) http.HandlerFunc {
	leader := c.write(func(w http.ResponseWriter, r *http.Request) {
		if err := c.raft.VerifyLeader().Error(); err != nil {
			writeError(w, 0, err)
			return
		}
		h(w, r)
	})
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("consistent") == "true" {
			leader(w, r)
			return
		}
		h(w, r)
	}
}

type targetKey struct{}

func withTarget(r *http.Request, addr string) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), targetKey{}, addr))
}

// newForwarder makes the proxy that passes a follower's writes to the
// leader.
func (c *Controller) newForwarder() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			addr := pr.In.Context().Value(targetKey{}).(string)
			pr.SetURL(&url.URL{Scheme: "https", Host: addr})
			pr.Out.Host = addr
			pr.Out.Header.Set(forwardedHeader, c.id)
		},
		Transport: c.peers,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, http.StatusBadGateway, fmt.Errorf("forward to the leader: %w", err))
		},
	}
}

// queryOptions reads ?index=N&wait=30s.
func queryOptions(r *http.Request) (QueryOptions, error) {
	var q QueryOptions
	if s := r.URL.Query().Get("index"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return q, fmt.Errorf("%w: index %q: want a number from %s of an earlier read", ErrInvalid, s, IndexHeader)
		}
		q.Index = v
	}
	if s := r.URL.Query().Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return q, fmt.Errorf("%w: wait %q: want a duration such as 30s", ErrInvalid, s)
		}
		q.Wait = d
	}
	return q, nil
}

// casParam reads ?cas=N.
func casParam(r *http.Request) (*uint64, error) {
	s := r.URL.Query().Get("cas")
	if s == "" {
		return nil, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: cas %q: want the modify_index you read (0: only if it does not exist)", ErrInvalid, s)
	}
	return &v, nil
}

func (c *Controller) kindOf(r *http.Request) (*kind, error) {
	k, ok := kinds[r.PathValue("kind")]
	if !ok {
		names := slices.Sorted(maps.Keys(kinds))
		return nil, fmt.Errorf("%w: no collection %q; there are %s", ErrNotFound, r.PathValue("kind"), strings.Join(names, ", "))
	}
	return k, nil
}

// ErrNotAllowed: the collection is written by the platform itself.
var ErrNotAllowed = errors.New("not allowed")

// readTarget is what every generic read needs: the collection and the
// blocking query's options.
func (c *Controller) readTarget(r *http.Request) (*kind, QueryOptions, error) {
	k, err := c.kindOf(r)
	if err != nil {
		return nil, QueryOptions{}, err
	}
	q, err := queryOptions(r)
	return k, q, err
}

// deleteTarget is writeTarget for a removal: collections the platform
// writes may allow some removals (old releases).
func (c *Controller) deleteTarget(r *http.Request) (*kind, *uint64, error) {
	if k, err := c.kindOf(r); err == nil && k.removable != nil {
		cas, err := casParam(r)
		return k, cas, err
	}
	return c.writeTarget(r)
}

// writeTarget is what every generic write needs: a collection the API
// may write and the compare-and-set index.
func (c *Controller) writeTarget(r *http.Request) (*kind, *uint64, error) {
	k, err := c.kindOf(r)
	if err != nil {
		return nil, nil, err
	}
	if !k.writable {
		return nil, nil, fmt.Errorf("%w: %s are written by the platform, not by %s", ErrNotAllowed, k.name, r.Method)
	}
	cas, err := casParam(r)
	return k, cas, err
}

// answer writes out (or err) with the index header.
// A 404 carries the index too, so that a watch for an object to appear
// can block on it.
func answer(w http.ResponseWriter, index uint64, out any, err error) {
	if index > 0 {
		w.Header().Set(IndexHeader, strconv.FormatUint(index, 10))
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (c *Controller) serveList(w http.ResponseWriter, r *http.Request) {
	k, q, err := c.readTarget(r)
	if err != nil {
		writeError(w, 0, err)
		return
	}
	var out any
	meta, err := c.fsm.store.query(r.Context(), k.name, q, func(txn *memdb.Txn) error {
		var err error
		out, err = listAny(txn, k.name)
		return err
	})
	answer(w, meta.Index, out, err)
}

func listAny(txn *memdb.Txn, table string) (any, error) {
	it, err := txn.Get(table, "id")
	if err != nil {
		return nil, err
	}
	out := []any{}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw)
	}
	return out, nil
}

func (c *Controller) serveGet(w http.ResponseWriter, r *http.Request) {
	k, q, err := c.readTarget(r)
	if err != nil {
		writeError(w, 0, err)
		return
	}
	key := r.PathValue("key")
	var out any
	meta, err := c.fsm.store.query(r.Context(), k.name, q, func(txn *memdb.Txn) error {
		var arg any = key
		if k.name == "events" {
			id, err := strconv.ParseUint(key, 10, 64)
			if err != nil {
				return fmt.Errorf("%w: event id %q", ErrNotFound, key)
			}
			arg = id
		}
		var err error
		if out, err = txn.First(k.name, "id", arg); err == nil && out == nil {
			err = fmt.Errorf("%w: %s %s", ErrNotFound, k.name, key)
		}
		return err
	})
	answer(w, meta.Index, out, err)
}

func (c *Controller) servePut(w http.ResponseWriter, r *http.Request) {
	k, cas, err := c.writeTarget(r)
	if err != nil {
		writeError(w, 0, err)
		return
	}
	obj := k.new()
	err = decodeBody(r, obj)
	key := r.PathValue("key")
	if err == nil {
		switch obj.key() {
		case "":
			setKey(obj, key)
		case key:
		default:
			err = fmt.Errorf("%w: the body's key %q is not the path's %q", ErrInvalid, obj.key(), key)
		}
	}
	if err == nil {
		err = k.check(obj)
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	data, _ := json.Marshal(obj)
	index, err := c.propose(&command{Op: opPut, Kind: k.name, CAS: cas, Object: data})
	if err != nil {
		writeError(w, 0, err)
		return
	}
	c.writeObject(w, k.name, key, index)
}

// setKey fills the key field of an object whose body left it out.
func setKey(obj object, key string) {
	switch o := obj.(type) {
	case *Setting:
		o.Key = key
	case *Formation:
		o.Name = key
	case *Route:
		o.ID = key
	case *App:
		o.Name = key
	case *Image:
		o.ID = key
	case *Tag:
		o.ID = key
	}
}

// writeObject answers a write with the object as stored.
func (c *Controller) writeObject(w http.ResponseWriter, table, key string, index uint64) {
	raw, _ := c.fsm.store.current().Txn(false).First(table, "id", key)
	if raw == nil {
		answer(w, index, map[string]uint64{"index": index}, nil)
		return
	}
	answer(w, index, raw, nil)
}

func (c *Controller) serveDelete(w http.ResponseWriter, r *http.Request) {
	k, cas, err := c.deleteTarget(r)
	if err != nil {
		writeError(w, 0, err)
		return
	}
	index, err := c.propose(&command{Op: opDelete, Kind: k.name, Key: r.PathValue("key"), CAS: cas})
	answer(w, index, map[string]uint64{"index": index}, err)
}

func (c *Controller) serveReport(w http.ResponseWriter, r *http.Request) {
	in := []Instance{}
	hostID := r.PathValue("id")
	err := decodeBody(r, &in)
	if err == nil {
		err = checkReport(hostID, in)
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	if in == nil {
		in = []Instance{} // a JSON null
	}
	index, err := c.propose(&command{Op: opReport, Key: hostID, Instances: in})
	answer(w, index, map[string]uint64{"index": index}, err)
}

func (c *Controller) serveCordon(cordon bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { c.setCordon(w, r, cordon, false) }
}

func (c *Controller) serveDrain(w http.ResponseWriter, r *http.Request) {
	c.setCordon(w, r, true, true)
}

func (c *Controller) setCordon(w http.ResponseWriter, r *http.Request, cordon, drain bool) {
	cas, err := casParam(r)
	if err != nil {
		writeError(w, 0, err)
		return
	}
	id := r.PathValue("id")
	index, err := c.propose(&command{Op: opCordon, Key: id, Cordoned: cordon, Draining: drain, CAS: cas})
	if err != nil {
		writeError(w, 0, err)
		return
	}
	c.writeObject(w, "hosts", id, index)
}

func (c *Controller) serveLease(w http.ResponseWriter, r *http.Request) {
	var req LeaseRequest
	name := r.PathValue("name")
	err := decodeBody(r, &req)
	if err == nil {
		err = checkLeaseRequest(name, &req)
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	index, err := c.propose(&command{Op: opLease, Key: name, Lease: &req})
	if err != nil {
		writeError(w, 0, err)
		return
	}
	c.writeObject(w, "leases", name, index)
}

// serveInstanceDrain serves POST /v1/instances/<host>/<job>/<service>/drain
// and …/undrain (instance IDs hold slashes, so the action is the last
// path element).
func (c *Controller) serveInstanceDrain(w http.ResponseWriter, r *http.Request) {
	path := r.PathValue("id")
	cut := strings.LastIndexByte(path, '/')
	id, action := path[:max(cut, 0)], path[cut+1:]
	if action != "drain" && action != "undrain" {
		writeError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s: instances take drain or undrain", r.Method, r.URL.Path))
		return
	}
	index, err := c.propose(&command{Op: opDrain, Key: id, Draining: action == "drain"})
	if err != nil {
		writeError(w, 0, err)
		return
	}
	c.writeObject(w, "instances", id, index)
}

func (c *Controller) serveSchedule(w http.ResponseWriter, r *http.Request) {
	var s Schedule
	err := decodeBody(r, &s)
	if err == nil {
		err = checkSchedule(&s)
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	index, err := c.propose(&command{Op: opSchedule, Schedule: &s})
	answer(w, index, map[string]uint64{"index": index}, err)
}

// decodeBody reads a JSON body strictly: unknown fields, wrong types
// and trailing data are errors that name the problem.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("%w: read body: %v", ErrInvalid, err)
	}
	if len(data) > maxBody {
		return fmt.Errorf("%w: body over %d bytes", ErrInvalid, maxBody)
	}
	if err := strictJSON(data, v); err != nil {
		return fmt.Errorf("%w: body: %v", ErrInvalid, err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError answers err with status, or with the status err's kind
// maps to when status is 0.
func writeError(w http.ResponseWriter, status int, err error) {
	if status == 0 {
		switch {
		case errors.Is(err, ErrNotFound):
			status = http.StatusNotFound
		case errors.Is(err, ErrConflict):
			status = http.StatusConflict
		case errors.Is(err, ErrInvalid):
			status = http.StatusBadRequest
		case errors.Is(err, ErrNotAllowed):
			status = http.StatusMethodNotAllowed
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrEnqueueTimeout),
			errors.Is(err, raft.ErrAbortedByRestore),
			errors.Is(err, raft.ErrRaftShutdown), errors.Is(err, raft.ErrLeadershipTransferInProgress):
			w.Header().Set("Retry-After", "1")
			status = http.StatusServiceUnavailable
		default:
			status = http.StatusInternalServerError
		}
	}
	writeJSON(w, status, apiError{Error: err.Error()})
}

// serveAddRoute writes a new route whose ID the controller gives it
// ("<type>-<index>"), and answers the route as stored (with its port).
func (c *Controller) serveAddRoute(w http.ResponseWriter, r *http.Request) {
	var route Route
	err := decodeBody(r, &route)
	if err == nil && route.ID != "" {
		err = fmt.Errorf("%w: a new route gets its ID from the controller; to write a route by ID, PUT /v1/routes/{id}", ErrInvalid)
	}
	if err == nil {
		err = checkRoute(&route)
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	data, _ := json.Marshal(&route)
	// CAS 0: the ID the controller gives must be free (PUT may have
	// taken it).
	index, err := c.propose(&command{Op: opPut, Kind: "routes", Object: data, CAS: new(uint64)})
	if err != nil {
		writeError(w, 0, err)
		return
	}
	c.writeObject(w, "routes", fmt.Sprintf("%s-%d", route.Type, index), index)
}

// serveRelease makes a release of an app (and its deploy, when asked)
// and answers what it made.
func (c *Controller) serveRelease(w http.ResponseWriter, r *http.Request) {
	app := r.PathValue("name")
	var q ReleaseRequest
	err := decodeBody(r, &q)
	if err == nil {
		err = checkReleaseRequest(&q)
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	index, err := c.propose(&command{Op: opRelease, Key: app, Release: &q})
	if err != nil {
		writeError(w, 0, err)
		return
	}
	// The release made is the app's one created by this write.
	txn := c.fsm.store.current().Txn(false)
	var res ReleaseResult
	it, err := txn.Get("releases", "app", app)
	if err != nil {
		writeError(w, 0, err)
		return
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if rel := raw.(*Release); rel.CreateIndex == index {
			res.Release = *rel
		}
	}
	if res.Release.ID == "" {
		writeError(w, http.StatusConflict, fmt.Errorf("%w: the release made at index %d was removed since (app destroyed?)", ErrConflict, index))
		return
	}
	if raw, _ := txn.First("deploys", "id", DeployID(app, res.Release.Version)); raw != nil {
		res.Deploy = raw.(*Deploy)
	}
	answer(w, index, &res, nil)
}

// serveStartBuild starts a build of an app, numbered by the controller,
// and answers it; 409 while another build of the app runs.
func (c *Controller) serveStartBuild(w http.ResponseWriter, r *http.Request) {
	var b Build
	err := decodeBody(r, &b)
	switch {
	case err != nil:
	case b.ID != "" || b.Number != 0:
		err = fmt.Errorf("%w: a new build gets its number from the controller; leave id and number out", ErrInvalid)
	case b.App != "" && b.App != r.PathValue("name"):
		err = fmt.Errorf("%w: the body's app %q is not the path's %q", ErrInvalid, b.App, r.PathValue("name"))
	default:
		b.App, b.State = r.PathValue("name"), BuildRunning
		err = checkBuild(&b)
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	data, _ := json.Marshal(&b)
	index, err := c.propose(&command{Op: opPut, Kind: "builds", Object: data})
	if err != nil {
		writeError(w, 0, err)
		return
	}
	txn := c.fsm.store.current().Txn(false)
	builds, err := appBuilds(txn, b.App)
	if err != nil {
		writeError(w, 0, err)
		return
	}
	for _, o := range builds {
		if o.CreateIndex == index {
			answer(w, index, o, nil)
			return
		}
	}
	writeError(w, http.StatusConflict, fmt.Errorf("%w: the build made at index %d was removed since (app destroyed?)", ErrConflict, index))
}

func (c *Controller) serveDestroyApp(w http.ResponseWriter, r *http.Request) {
	cas, err := casParam(r)
	if err != nil {
		writeError(w, 0, err)
		return
	}
	index, err := c.propose(&command{Op: opDestroy, Key: r.PathValue("name"), CAS: cas})
	answer(w, index, map[string]uint64{"index": index}, err)
}

// serveDeployUpdate records a deployer's progress on a deploy.
func (c *Controller) serveDeployUpdate(w http.ResponseWriter, r *http.Request) {
	cas, err := casParam(r)
	var d Deploy
	if err == nil {
		err = decodeBody(r, &d)
	}
	if err == nil && d.ID != r.PathValue("id") {
		err = fmt.Errorf("%w: the body's id %q is not the path's %q", ErrInvalid, d.ID, r.PathValue("id"))
	}
	if err == nil {
		err = checkDeployUpdate(&d)
	}
	if err != nil {
		writeError(w, 0, err)
		return
	}
	index, err := c.propose(&command{Op: opDeploy, Deploy: &d, CAS: cas})
	if err != nil {
		writeError(w, 0, err)
		return
	}
	c.writeObject(w, "deploys", d.ID, index)
}
