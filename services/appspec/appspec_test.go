package appspec

import (
	"slices"
	"strings"
	"testing"

	"github.com/plinth-os/plinth/services/controller"
)

func TestProcfile(t *testing.T) {
	p, err := ParseProcfile("Procfile", []byte(`# the app
web: ./server --port "$PORT"
worker: ./worker --queue 'jobs a'

release: ./migrate up
`))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Types, []string{"web", "worker"}) {
		t.Fatalf("types %v", p.Types)
	}
	if want := []string{"/bin/sh", "-c", `./server --port "$PORT"`}; !slices.Equal(p.Commands["web"], want) {
		t.Errorf("web %q, want %q (it needs a shell)", p.Commands["web"], want)
	}
	if want := []string{"./worker", "--queue", "jobs a"}; !slices.Equal(p.Commands["worker"], want) {
		t.Errorf("worker %q, want %q", p.Commands["worker"], want)
	}
	if want := []string{"./migrate", "up"}; !slices.Equal(p.Release, want) {
		t.Errorf("release %q, want %q", p.Release, want)
	}
	for _, c := range []struct{ in, want string }{
		{"web ./server\n", "Procfile:1: want \"type: command\""},
		{"web: a\nweb: b\n", "Procfile:2: process type web is named twice"},
		{"\n\nWeb_1: a\n", "Procfile:3: process type \"Web_1\""},
		{"web: 'a\n", "Procfile:1: web: unclosed ' quote"},
		{"# nothing\n", "Procfile: no process types"},
	} {
		if _, err := ParseProcfile("Procfile", []byte(c.in)); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
}

func TestFileErrorsNameTheLine(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"app = \"demo\"\n[processes.web]\nport = 8080\nprot = 1\n", "plinth.toml:4: processes.web.prot: unknown key"},
		{"app = \"demo\"\n\n[processes.web]\ncmd = \"x\"\nport = 99999\n", "plinth.toml:5: processes.web.port: give 1 to 65535"},
		{"[processes.web]\nport = 80\n[processes.web.check]\ntype = \"ping\"\n", "plinth.toml:4: processes.web.check.type: use http, tcp or command"},
		{"app = \"Demo\"\n", "plinth.toml:1: app: use 1 to 30"},
		{"[processes.web]\nmemory = \"lots\"\n", "plinth.toml:2: processes.web.memory: size \"lots\""},
		{"app = \n", "plinth.toml:1: "},
		{"[config]\nPORT = \"1\"\n", "plinth.toml:2: config.PORT: config var PORT"},
		{"[[routes]]\ntype = \"http\"\n", "plinth.toml:1: routes.domain: route 1: an http route needs a domain"},
	} {
		if _, err := ParseFile("plinth.toml", []byte(c.in)); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
}

// TestExportReadsBack: what export writes, apply reads as the same
// processes, scale, config and routes.
func TestExportReadsBack(t *testing.T) {
	app := controller.App{Name: "demo", Scale: map[string]int{"web": 3}, Strategy: controller.StrategyAllAtOnce}
	rel := controller.Release{App: "demo", Version: 4, Config: map[string]string{"A": "1"}, ReleaseCommand: []string{"./migrate"},
		Processes: map[string]controller.Process{
			"web":    {Cmd: []string{"./server"}, Port: 8080},
			"worker": {Cmd: []string{"./worker"}},
		}}
	routes := []controller.Route{
		{ID: "http-1", Type: "http", Service: "demo", Domain: "demo.example.com", Path: "/"},
		{ID: "tcp-2", Type: "tcp", Service: "other", Port: 30001},
	}
	data, err := Export(app, rel, routes)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseFile("plinth.toml", data)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if f.App != "demo" || *f.Processes["web"].Scale != 3 || *f.Processes["worker"].Scale != 0 || f.Config["A"] != "1" ||
		f.Deploy.Strategy != controller.StrategyAllAtOnce || !slices.Equal(f.Release, []string{"./migrate"}) {
		t.Fatalf("read back:\n%s", data)
	}
	if len(f.Routes) != 1 || f.Routes[0].Domain != "demo.example.com" {
		t.Fatalf("routes read back %+v (only the app's own)", f.Routes)
	}
	procs := f.ReleaseProcesses()
	if !slices.Equal(procs["web"].Cmd, []string{"./server"}) || procs["web"].Port != 8080 {
		t.Fatalf("processes read back %+v", procs)
	}
}

func TestBuildSection(t *testing.T) {
	f, err := ParseTree([]byte(`app = "site"
[build]
base = "busybox:1.36"
command = "make -C /app"
timeout = "5m"
memory = "512M"
`), []byte("web: httpd -f -p $PORT -h /app/public\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Build == nil || f.Build.Base != "busybox:1.36" || !slices.Equal(f.Build.Command, []string{"make", "-C", "/app"}) || f.Build.Timeout.Minutes() != 5 {
		t.Fatalf("build %+v", f.Build)
	}
	if p := f.ReleaseProcesses()["web"]; len(p.Cmd) == 0 {
		t.Fatalf("the Procfile's web is missing: %+v", f.ReleaseProcesses())
	}
	for _, c := range []struct{ in, want string }{
		{"[build]\ncommand = \"make\"\n", "plinth.toml:1: build.base: give the image to build on"},
		{"[build]\nbase = \"docker.io/library/busybox\"\n", "plinth.toml:2: build.base: \"docker.io/library/busybox\": name an image in the cluster's registry"},
		{"[build]\nbase = \"b:1\"\ntimeout = \"3h\"\n", "plinth.toml:3: build.timeout: give up to 2h0m0s"},
		{"[build]\nbase = \"b:1\"\nmemory = \"lots\"\n", "plinth.toml:3: build.memory:"},
		{"[build]\nbase = \"b:1\"\nsteps = 2\n", "plinth.toml:3: build.steps: unknown key"},
	} {
		if _, err := ParseTree([]byte(c.in), nil); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
	if f, err := ParseTree(nil, nil); f != nil || err != nil {
		t.Errorf("no files: %+v, %v", f, err)
	}
}
