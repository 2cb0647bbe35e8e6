package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
)

// maxSpecSize bounds a job spec in a request.
const maxSpecSize = 1 << 20

// jobRoutes adds the job API: /v1/jobs and below.
func (d *Daemon) jobRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		var spec job.Spec
		dec := json.NewDecoder(io.LimitReader(r.Body, maxSpecSize))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&spec); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{"job spec: " + err.Error()})
			return
		}
		if err := d.pull(r.Context(), spec.Image); err != nil {
			writeJSON(w, http.StatusBadGateway, apiError{err.Error()})
			return
		}
		j, err := d.jobs.Create(spec)
		if err != nil {
			writeJobError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, j)
	})
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.jobs.List())
	})
	mux.HandleFunc("GET /v1/jobs/events", func(w http.ResponseWriter, r *http.Request) {
		events, cancel := d.jobs.Subscribe()
		defer cancel()
		serveSSE(w, r, events, func(e job.Event) string { return e.Type })
	})
	mux.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		j, err := d.jobs.Get(r.PathValue("id"))
		if err != nil {
			writeJobError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, j)
	})
	mux.HandleFunc("DELETE /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.jobs.Remove(r.Context(), r.PathValue("id"), r.URL.Query().Get("force") == "true"); err != nil {
			writeJobError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/jobs/{id}/signal", func(w http.ResponseWriter, r *http.Request) {
		sig, err := parseSignal(r.URL.Query().Get("signal"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
			return
		}
		if err := d.jobs.Signal(r.PathValue("id"), sig); err != nil {
			writeJobError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/jobs/{id}/stop", func(w http.ResponseWriter, r *http.Request) {
		var grace time.Duration
		if g := r.URL.Query().Get("grace"); g != "" {
			var err error
			if grace, err = time.ParseDuration(g); err != nil || grace < 0 {
				writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("grace %q: want a duration such as 10s", g)})
				return
			}
		}
		j, err := d.jobs.Stop(r.Context(), r.PathValue("id"), grace)
		if err != nil {
			writeJobError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, j)
	})
	mux.HandleFunc("GET /v1/jobs/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		j, err := d.jobs.Wait(r.Context(), r.PathValue("id"))
		if err != nil {
			writeJobError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, j)
	})
	mux.HandleFunc("GET /v1/jobs/{id}/logs", d.serveLogs)
	mux.HandleFunc("GET /v1/jobs/{id}/changes", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		dir, err := d.jobs.ChangesDir(id)
		if err != nil {
			writeJobError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/x-tar")
		if err := imagestore.WriteLayer(w, dir); err != nil {
			d.log.Warn("job changes", "job", id, "err", err)
			// Abort the response: a body that ends cleanly would pass
			// for the whole layer.
			panic(http.ErrAbortHandler)
		}
	})
	mux.HandleFunc("POST /v1/jobs/{id}/exec", func(w http.ResponseWriter, r *http.Request) {
		var req execRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxSpecSize))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, apiError{`exec: want {"cmd": [...], "timeout": "2s"}: ` + err.Error()})
			return
		}
		res, err := d.jobs.Exec(r.Context(), r.PathValue("id"), req.Cmd, req.Timeout.Duration)
		if err != nil {
			writeJobError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})

	mux.HandleFunc("POST /v1/images", d.importImage)
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) {
		imgs, err := d.images.List()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, imgs)
	})
	mux.HandleFunc("DELETE /v1/images/{ref...}", d.removeImage)
}

// execRequest is the body of POST /v1/jobs/{id}/exec.
type execRequest struct {
	Cmd []string `json:"cmd"`
	// Timeout kills the command; zero means job.DefaultExecTimeout.
	Timeout job.Duration `json:"timeout,omitzero"`
}

// importImage takes a `docker save` archive or a tar of an OCI layout as
// the request body, spooled to a file first (the importer reads it more
// than once).
func (d *Daemon) importImage(w http.ResponseWriter, r *http.Request) {
	f, err := os.CreateTemp(d.cfg.StateDir, ".import-*.tar")
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := io.Copy(f, r.Body); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{"read image archive: " + err.Error()})
		return
	}
	imgs, err := d.images.Import(r.Context(), f.Name())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusCreated, imgs)
}

// serveLogs streams log lines as JSON, one per line (application/x-ndjson).
func (d *Daemon) serveLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts := job.LogOptions{Stream: q.Get("stream"), Follow: q.Get("follow") == "true"}
	if t := q.Get("tail"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("tail %q: want a number of lines", t)})
			return
		}
		opts.Tail = n
	}
	if _, err := d.jobs.Get(r.PathValue("id")); err != nil {
		writeJobError(w, err)
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	started := false
	err := d.jobs.Logs(r.Context(), r.PathValue("id"), opts, func(l job.LogLine) error {
		started = true
		if err := enc.Encode(l); err != nil {
			return err
		}
		if flusher != nil && opts.Follow {
			flusher.Flush()
		}
		return nil
	})
	if err != nil && !started {
		writeJobError(w, err)
	}
}

// writeJobError maps the job manager's errors to status codes.
func writeJobError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, job.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, job.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, job.ErrExists), errors.Is(err, job.ErrRunning), errors.Is(err, job.ErrNotRunning):
		status = http.StatusConflict
	case errors.Is(err, job.ErrUnavailable):
		status = http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled):
		return // the client went away
	}
	writeJSON(w, status, apiError{err.Error()})
}

// parseSignal reads "TERM", "SIGTERM" or "15".
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("signal %q: want a name such as TERM or a number", s)
}

// removeImage forgets an image no job uses and deletes the layers that no
// image references any more. A job pins its image by ID, so an image in
// use stays until its jobs are removed.
func (d *Daemon) removeImage(w http.ResponseWriter, r *http.Request) {
	img, err := d.images.Get(r.PathValue("ref"))
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, imagestore.ErrNotFound) {
			status = http.StatusNotFound
		}
		writeJSON(w, status, apiError{err.Error()})
		return
	}
	for _, j := range d.jobs.List() {
		if j.Spec.Image == img.ID {
			writeJSON(w, http.StatusConflict, apiError{fmt.Sprintf("image %s is used by job %s; remove the job first", r.PathValue("ref"), j.Spec.ID)})
			return
		}
	}
	if err := d.images.Remove(img.ID); err != nil {
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
		return
	}
	removed, err := d.images.GC(nil)
	if err != nil {
		d.log.Warn("remove unused layers", "err", err)
	}
	d.log.Info("image removed", "image", img.ID, "layers_deleted", len(removed))
	w.WriteHeader(http.StatusNoContent)
}

// pull fetches a job's image from its registry when the job names one
// by a registry address and the store does not have it yet. The
// registry is the platform's: this host's certificate gets it in.
//
// The pull outlives the request: a caller whose call times out (a
// scheduler gives each call seconds; a pull under load may take a
// minute) finds the image there when it tries again. Requests for an
// image being pulled wait for that pull.
func (d *Daemon) pull(ctx context.Context, ref string) error {
	if ref == "" || !imagestore.FromRegistry(ref) {
		return nil
	}
	if _, err := d.images.Get(ref); err == nil {
		return nil
	}
	d.mu.Lock()
	t := d.registryTransport
	p, ok := d.pulls[ref]
	if !ok && t != nil {
		p = &pulling{done: make(chan struct{})}
		if d.pulls == nil {
			d.pulls = map[string]*pulling{}
		}
		d.pulls[ref] = p
		go func() {
			pctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
			defer cancel()
			_, p.err = d.images.Pull(pctx, ref, remote.WithTransport(t))
			d.mu.Lock()
			delete(d.pulls, ref)
			d.mu.Unlock()
			close(p.done)
		}()
	}
	d.mu.Unlock()
	if t == nil {
		return fmt.Errorf("pull %s: the host API is not serving yet", ref)
	}
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("pull %s: still pulling; try again: %w", ref, ctx.Err())
	}
}

// pulling is an image pull under way.
type pulling struct {
	done chan struct{}
	err  error
}

// pullTimeout bounds a job's image pull.
const pullTimeout = 10 * time.Minute
