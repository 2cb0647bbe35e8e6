package discovery

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/job"
)

func TestCheckTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := newChecker(nil)
	c := check{kind: job.CheckTCP, timeout: testWait}
	addr := ln.Addr().String()
	if r := k.run(context.Background(), c, "j", addr); !r.healthy || r.output != "tcp connect ok" {
		t.Errorf("listening: %+v, want healthy", r)
	}
	ln.Close()
	if r := k.run(context.Background(), c, "j", addr); r.healthy || r.output != "tcp check: connection refused" {
		t.Errorf("closed: %+v, want unhealthy, connection refused", r)
	}
}

func TestCheckHTTP(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	var path atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path.Store(r.URL.RequestURI())
		if r.URL.Path == "/moved" {
			http.Redirect(w, r, "http://192.0.2.1/", http.StatusFound)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	k := newChecker(nil)
	run := func(c check) result {
		c.kind, c.timeout = job.CheckHTTP, testWait
		return k.run(context.Background(), c, "j", addr)
	}

	if r := run(check{path: "/healthz?full=1", status: 200}); !r.healthy || r.output != "http 200" {
		t.Errorf("200: %+v, want healthy", r)
	}
	if p := path.Load(); p != "/healthz?full=1" {
		t.Errorf("asked for %q, want /healthz?full=1", p)
	}
	status.Store(500)
	if r := run(check{path: "/", status: 200}); r.healthy || r.output != "http 500, want 200" {
		t.Errorf("500: %+v, want unhealthy", r)
	}
	status.Store(204)
	if r := run(check{path: "/", status: 204}); !r.healthy {
		t.Errorf("204 with 204 wanted: %+v, want healthy", r)
	}
	if r := run(check{path: "/", status: 200}); r.healthy || r.output != "http 204, want 200" {
		t.Errorf("204 with 200 wanted: %+v, want unhealthy", r)
	}
	// A redirect is not followed: off the instance, it proves nothing.
	if r := run(check{path: "/moved", status: 302}); !r.healthy {
		t.Errorf("redirect with 302 wanted: %+v, want healthy", r)
	}
	if r := run(check{path: "/moved", status: 200}); r.healthy || r.output != "http 302, want 200" {
		t.Errorf("redirect: %+v, want unhealthy", r)
	}
	srv.Close()
	if r := run(check{path: "/", status: 200}); r.healthy || r.output != "http check: connection refused" {
		t.Errorf("server gone: %+v, want unhealthy, connection refused", r)
	}
}

// A check that gets no answer within its timeout fails, and says so.
func TestCheckTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	k := newChecker(nil)
	c := check{kind: job.CheckHTTP, path: "/", status: 200, timeout: 50 * time.Millisecond}
	if r := k.run(context.Background(), c, "j", srv.Listener.Addr().String()); r.healthy || r.output != "http check: no answer within 50ms" {
		t.Errorf("hanging server: %+v, want unhealthy, no answer", r)
	}
}

// hostExec is a HostAPI with only ExecJob.
type hostExec struct {
	HostAPI
	exec func(id string, cmd []string) (job.ExecResult, error)
}

func (h hostExec) ExecJob(ctx context.Context, id string, cmd []string, timeout time.Duration) (job.ExecResult, error) {
	return h.exec(id, cmd)
}

func TestCheckCommand(t *testing.T) {
	var exit atomic.Int32
	k := newChecker(hostExec{exec: func(id string, cmd []string) (job.ExecResult, error) {
		if id != "db-1" || strings.Join(cmd, " ") != "pg_isready -q" {
			return job.ExecResult{}, errors.New("wrong job or command")
		}
		if exit.Load() == 0 {
			return job.ExecResult{ExitCode: 0}, nil
		}
		return job.ExecResult{ExitCode: int(exit.Load()), Output: "no response\nmore\n"}, nil
	}})
	c := check{kind: job.CheckCommand, command: []string{"pg_isready", "-q"}, timeout: testWait}
	if r := k.run(context.Background(), c, "db-1", "10.0.0.1:5432"); !r.healthy || r.output != "exit 0" {
		t.Errorf("exit 0: %+v, want healthy", r)
	}
	exit.Store(2)
	if r := k.run(context.Background(), c, "db-1", "10.0.0.1:5432"); r.healthy || r.output != "exit 2: no response" {
		t.Errorf("exit 2: %+v, want unhealthy with the output's first line", r)
	}
	if r := k.run(context.Background(), c, "other", "10.0.0.1:5432"); r.healthy || r.output != "command check: wrong job or command" {
		t.Errorf("exec failing: %+v, want unhealthy", r)
	}
}

func TestCheckUnknownType(t *testing.T) {
	r := newChecker(nil).run(context.Background(), check{kind: "smoke", timeout: testWait}, "j", "127.0.0.1:1")
	if r.healthy || r.output != `unknown check type "smoke"` {
		t.Errorf("%+v, want unhealthy", r)
	}
}
