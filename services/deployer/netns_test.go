package deployer_test

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/internal/platformtest"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

func TestMain(m *testing.M) { platformtest.Main(m) }

// appImage writes a docker-save archive of the test app: echoback
// (built static) and busybox's sh, with echoback as the entrypoint, and
// extra files.
func appImage(t testing.TB, extra ...imagestore.File) string {
	t.Helper()
	return appImageIn(t, t.TempDir(), "app.tar", extra...)
}

var echoback struct {
	sync.Mutex
	data []byte
}

// staticEchoback builds echoback without cgo once per test binary.
func staticEchoback(t testing.TB) []byte {
	echoback.Lock()
	defer echoback.Unlock()
	if echoback.data != nil {
		return echoback.data
	}
	bin := filepath.Join(t.TempDir(), "echoback")
	build := exec.Command("go", "build", "-o", bin, "github.com/plinth-os/plinth/internal/echoback")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build echoback: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	echoback.data = data
	return data
}

func appImageIn(t testing.TB, dir, name string, extra ...imagestore.File) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skip("needs busybox-static (scripts/deps.sh)")
	}
	files := []imagestore.File{
		{Name: "bin/", Mode: 0o755}, {Name: "tmp/", Mode: 0o1777},
		{Name: "bin/busybox", Data: bb, Mode: 0o755}, {Name: "bin/sh", Link: "busybox"},
		{Name: "echoback", Data: staticEchoback(t), Mode: 0o755},
	}
	files = append(files, extra...)
	archive := filepath.Join(dir, name)
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := imagestore.ImageConfig{Entrypoint: []string{"/echoback"}, Cmd: []string{"--http", ":8080"}}
	if err := imagestore.WriteArchive(f, "demo:v1", files, cfg); err != nil {
		t.Fatal(err)
	}
	return archive
}

// The app's declaration: web (HTTP, checked quickly) and echo (TCP),
// routed from every host.
const appTOML = `
app = "demo"

[processes.web]
cmd = ["/echoback", "--http", ":8080"]
port = 8080
scale = 2
[processes.web.check]
type = "http"
interval = "500ms"
timeout = "400ms"

[processes.echo]
cmd = "/echoback --tcp :9000"
port = 9000
scale = 1

[[routes]]
type = "http"
domain = "demo.test"

[[routes]]
type = "tcp"
process = "echo"
port = 30100
`

// TestAppLifecycle runs an app on three hosts with the whole platform:
// deploy from an archive (through the registry), apply, requests through
// every host's router, config changes and rollback as new releases,
// scale, run, and deploys that fail (release command, health) leaving
// the serving release serving, with a request loop through the deploys
// that sees no failure.
func TestAppLifecycle(t *testing.T) {
	p := platformtest.New(t, "plap", "10.74.0", 3, platformtest.WithContainerNetwork())
	p.Bootstrap(3 * time.Minute)
	archive := appImage(t)
	dir := t.TempDir()
	decl := filepath.Join(dir, "plinth.toml")
	if err := os.WriteFile(decl, []byte(appTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	cli := mustCLI(t, p)
	cli(30*time.Second, "apps", "create", "demo")

	// The first deploy: pushed through the registry, its processes from
	// plinth.toml; apply then scales and routes it.
	out := cli(3*time.Minute, "deploy", "-a", "demo", "--image", archive, "--file", decl)
	for _, want := range []string{"pushed", "release v1", "web: health check GET :8080/", "deployed v1"} {
		if !strings.Contains(out, want) {
			t.Fatalf("deploy output lacks %q:\n%s", want, out)
		}
	}
	// An app deployed with nothing declared runs the image's entrypoint
	// as web on port 8080; destroyed, its instances go.
	cli(30*time.Second, "apps", "create", "plain")
	out = cli(3*time.Minute, "deploy", "-a", "plain", "--image", archive)
	for _, want := range []string{"web: health check tcp :8080", "deployed v1"} {
		if !strings.Contains(out, want) {
			t.Fatalf("deploy of an undeclared app lacks %q:\n%s", want, out)
		}
	}
	if out, err := p.CLI(testwait.Ctx(t, 30*time.Second), "apps", "destroy", "-a", "plain"); err == nil || !strings.Contains(out, "--confirm plain") {
		t.Fatalf("destroy without --confirm: %v\n%s", err, out)
	}
	cli(30*time.Second, "apps", "destroy", "-a", "plain", "--confirm", "plain")
	testwait.For(t, "the destroyed app's formations gone", time.Minute, func() error {
		fs, _, err := p.Controllers().Formations(testwait.Ctx(t, 10*time.Second), controller.QueryOptions{})
		if err != nil {
			return err
		}
		for _, f := range fs {
			if f.Job.Tags[controller.AppTag] == "plain" {
				return fmt.Errorf("formation %s (count %d, running %d) is left", f.Name, f.Count, f.Status.Running)
			}
		}
		return nil
	})

	out = cli(3*time.Minute, "apply", "-f", decl)
	for _, want := range []string{"~ scale web 1 → 2", "~ scale echo 0 → 1", "+ route http demo.test to demo", "+ route tcp 30100 to demo-echo"} {
		if !strings.Contains(out, want) {
			t.Fatalf("apply output lacks %q:\n%s", want, out)
		}
	}
	waitInstances(t, p, map[string]int{"web": 2, "echo": 1})
	names := webNames(t, p, 2)
	t.Logf("web instances answer as %v", names)
	echoThroughEveryRouter(t, p, 30100)

	// The registry kept the image's blobs on two hosts, and takes
	// standard clients.
	layerCopies(t, p)
	registryClients(t, p, archive)

	// A config change is a new release, deployed under load without a
	// failed request.
	load := startLoad(t, p)
	out = cli(3*time.Minute, "config", "set", "-a", "demo", "ECHOBACK_NAME=blue")
	if !strings.Contains(out, "deployed v2") {
		t.Fatalf("config set did not deploy v2:\n%s", out)
	}
	webNames(t, p, 2, "blue")
	cli(3*time.Minute, "config", "set", "-a", "demo", "ECHOBACK_NAME=green", "--strategy", "all-at-once")
	webNames(t, p, 2, "green")
	ok, failed := load.stop()
	if ok < 20 || failed != 0 {
		t.Fatalf("requests through two deploys: %d answered, %d failed (want none failed)\n%s", ok, failed, load.errors())
	}
	t.Logf("requests during two deploys: %d answered, 0 failed", ok)

	// Rollback makes v4 from v2: its image and config.
	out = cli(3*time.Minute, "rollback", "-a", "demo")
	if !strings.Contains(out, "rollback to v2") || !strings.Contains(out, "deployed v4") {
		t.Fatalf("rollback:\n%s", out)
	}
	webNames(t, p, 2, "blue")

	// Scale up and down.
	cli(30*time.Second, "ps", "scale", "-a", "demo", "web=3")
	waitInstances(t, p, map[string]int{"web": 3, "echo": 1})
	cli(30*time.Second, "ps", "scale", "-a", "demo", "web=1")
	waitInstances(t, p, map[string]int{"web": 1, "echo": 1})

	// run: output streamed, exit code returned.
	runOut, err := p.CLI(testwait.Ctx(t, 2*time.Minute), "run", "-a", "demo", "--", "/bin/sh", "-c", "echo one-off $ECHOBACK_NAME; exit 3")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 || !strings.Contains(runOut, "one-off blue") {
		t.Fatalf("plinth run: err %v, output:\n%s", err, runOut)
	}

	// A release command that fails stops the deploy before any instance
	// starts; v4 serves on.
	failing := strings.Replace(appTOML, `app = "demo"`, "app = \"demo\"\nrelease = \"/bin/sh -c 'echo migrating; exit 1'\"", 1)
	if err := os.WriteFile(decl, []byte(failing), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = p.CLI(testwait.Ctx(t, 3*time.Minute), "deploy", "-a", "demo", "--image", "demo:latest", "--file", decl)
	if err == nil || !strings.Contains(out, "release command exited 1: migrating") || !strings.Contains(out, "v4 serves") {
		t.Fatalf("deploy with a failing release command: err %v\n%s", err, out)
	}
	webNames(t, p, 1, "blue")

	// New instances that never get healthy: the deploy gives up after
	// its health timeout and v4 serves on.
	broken := strings.Replace(appTOML, `cmd = ["/echoback", "--http", ":8080"]`, `cmd = ["/echoback", "--http", ":8081"]`, 1)
	if err := os.WriteFile(decl, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = p.CLI(testwait.Ctx(t, 3*time.Minute), "deploy", "-a", "demo", "--image", "demo:latest", "--file", decl, "--health-timeout", "5s")
	if err == nil || !strings.Contains(out, "new instances healthy after 5s") || !strings.Contains(out, "v4 serves") {
		t.Fatalf("deploy of unhealthy instances: err %v\n%s", err, out)
	}
	webNames(t, p, 1, "blue")
	waitInstances(t, p, map[string]int{"web": 1, "echo": 1})

	// A second deploy while one runs is refused, and makes no release.
	first := make(chan string, 1)
	go func() {
		out, _ := p.CLI(testwait.Ctx(t, 3*time.Minute), "ps", "restart", "-a", "demo")
		first <- out
	}()
	testwait.For(t, "the restart's deploy to start", 30*time.Second, func() error {
		out, err := p.CLI(testwait.Ctx(t, 30*time.Second), "deploys", "-a", "demo")
		if err != nil || !strings.Contains(out, "running") {
			return fmt.Errorf("no running deploy: %v\n%s", err, out)
		}
		return nil
	})
	out, err = p.CLI(testwait.Ctx(t, time.Minute), "config", "set", "-a", "demo", "X=1")
	if err == nil || !strings.Contains(out, "is running") || !strings.Contains(out, "no release was made") {
		t.Fatalf("config set during a deploy: err %v\n%s", err, out)
	}
	if out := <-first; !strings.Contains(out, "deployed v") {
		t.Fatalf("restart:\n%s", out)
	}
	rels := cli(30*time.Second, "releases", "-a", "demo", "--json")
	var releases []controller.Release
	if err := json.Unmarshal([]byte(rels), &releases); err != nil {
		t.Fatal(err)
	}
	for _, r := range releases {
		if r.Config["X"] != "" {
			t.Fatalf("release v%d has the refused change: %v", r.Version, r.Config)
		}
	}

	retention(t, p, decl)

	// logs: every instance's lines, prefixed with type, instance and host.
	logs := cli(30*time.Second, "logs", "-a", "demo", "-n", "50")
	if !strings.Contains(logs, "web demo.web.v") || !strings.Contains(logs, "blue serving web on :8080") {
		t.Fatalf("logs lack the web instances' prefix:\n%s", logs)
	}
}

// waitInstances waits until ps shows want instances of each type, each
// running, and on distinct hosts for web.
func waitInstances(t *testing.T, p *platformtest.Platform, want map[string]int) {
	t.Helper()
	testwait.For(t, fmt.Sprintf("instances %v", want), 2*time.Minute, func() error {
		out, err := p.CLI(testwait.Ctx(t, 30*time.Second), "ps", "-a", "demo", "--json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var ins []struct {
			Type, State, Host, Health string
		}
		if err := json.Unmarshal([]byte(out), &ins); err != nil {
			return err
		}
		got := map[string]int{}
		for _, i := range ins {
			if i.State != "running" || i.Host == "" {
				return fmt.Errorf("instance %+v", i)
			}
			got[i.Type]++
		}
		for typ, n := range want {
			if got[typ] != n {
				return fmt.Errorf("%d %s instances, want %d: %s", got[typ], typ, n, out)
			}
		}
		return nil
	})
}

// webNames asks every host's router for demo.test until the answers
// come from n distinct instances named with prefix (when given), and
// returns their names.
func webNames(t *testing.T, p *platformtest.Platform, n int, prefix ...string) []string {
	t.Helper()
	var names []string
	testwait.For(t, fmt.Sprintf("%d web instances answering %v through every router", n, prefix), 2*time.Minute, func() error {
		seen := map[string]bool{}
		for round := 0; round < 4*n; round++ {
			for _, h := range p.Hosts {
				body, err := get(p, h.NS.Addr)
				if err != nil {
					return fmt.Errorf("through %s: %w", h.NS.Name, err)
				}
				f := strings.Fields(body)
				if len(f) < 2 || f[0] != "web" {
					return fmt.Errorf("through %s: %q", h.NS.Name, body)
				}
				if len(prefix) > 0 && f[1] != prefix[0] {
					return fmt.Errorf("through %s: answered by %q, want %q", h.NS.Name, f[1], prefix[0])
				}
				seen[f[1]+" "+f[2]] = true
			}
		}
		if len(seen) != n {
			return fmt.Errorf("%d instances answered, want %d: %v", len(seen), n, seen)
		}
		names = names[:0]
		for k := range seen {
			names = append(names, k)
		}
		return nil
	})
	return names
}

// clients are the test clients, one per platform: each holds the
// client namespace open.
var clients sync.Map

// get asks the router at addr for demo.test's root, on a new
// connection each time (each may reach another instance).
func get(p *platformtest.Platform, addr string) (string, error) {
	c, ok := clients.Load(p)
	if !ok {
		c, _ = clients.LoadOrStore(p, &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext:       p.Seg.DialContext(p.Client),
			DisableKeepAlives: true,
		}})
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Host = "demo.test"
	resp, err := c.(*http.Client).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, body)
	}
	return string(body), nil
}

func echoThroughEveryRouter(t *testing.T, p *platformtest.Platform, port int) {
	t.Helper()
	dial := p.Seg.DialContext(p.Client)
	testwait.For(t, "TCP echo through every router", time.Minute, func() error {
		for _, h := range p.Hosts {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			conn, err := dial(ctx, "tcp", net.JoinHostPort(h.NS.Addr, fmt.Sprint(port)))
			cancel()
			if err != nil {
				return fmt.Errorf("through %s: %w", h.NS.Name, err)
			}
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			fmt.Fprintf(conn, "ping %s\n", h.NS.Name)
			line, err := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err != nil || line != "ping "+h.NS.Name+"\n" {
				return fmt.Errorf("through %s: %q %v", h.NS.Name, line, err)
			}
		}
		return nil
	})
}

// layerCopies checks that the app image's layer is on two hosts'
// registries, or more.
func layerCopies(t *testing.T, p *platformtest.Platform) {
	t.Helper()
	out, err := p.CLI(testwait.Ctx(t, 30*time.Second), "releases", "-a", "demo", "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	var rels []controller.Release
	if err := json.Unmarshal([]byte(out), &rels); err != nil {
		t.Fatal(err)
	}
	c := p.Controllers()
	img, err := c.Image(testwait.Ctx(t, 10*time.Second), rels[0].Image, controller.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, blob := range img.Blobs {
		hex := strings.TrimPrefix(blob, "sha256:")
		var on []string
		for _, h := range p.Hosts {
			if _, err := os.Stat(filepath.Join(h.Dir, "volumes", "var/lib/plinth/registry/sha256", hex)); err == nil {
				on = append(on, h.NS.Name)
			}
		}
		if len(on) < 2 {
			t.Fatalf("blob %s is on %v, want two hosts or more", blob, on)
		}
	}
}

// load sends requests one after another through the first host's
// router until stopped, counting answers and failures.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	done       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(t *testing.T, p *platformtest.Platform) *load {
	l := &load{done: make(chan struct{})}
	addr := p.Hosts[0].NS.Addr
	l.wg.Go(func() {
		// Bounded: at most 10 minutes of requests.
		for end := time.Now().Add(10 * time.Minute); time.Now().Before(end); {
			select {
			case <-l.done:
				return
			default:
			}
			if _, err := get(p, addr); err != nil {
				l.failed.Add(1)
				l.mu.Lock()
				l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
				l.mu.Unlock()
			} else {
				l.ok.Add(1)
			}
		}
	})
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *load) stop() (ok, failed int64) {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	l.wg.Wait()
	return l.ok.Load(), l.failed.Load()
}

func (l *load) errors() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.errs, "\n")
}

// retention keeps one release: a deploy of a new image removes the old
// image's record, its blobs from every registry, and the image from
// every host that pulled it.
func retention(t *testing.T, p *platformtest.Platform, decl string) {
	t.Helper()
	c := p.Controllers()
	ctx := testwait.Ctx(t, time.Minute)
	app, err := c.App(ctx, "demo", controller.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old, err := c.Release(ctx, "demo", app.Release, controller.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldImg, err := c.Image(ctx, old.Image, controller.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range [][2]string{{controller.KeepReleasesSetting, "1"}, {controller.GCGraceSetting, "0s"}} {
		if _, err := c.PutSetting(ctx, kv[0], kv[1], nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(decl, []byte(appTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	second := appImage(t, imagestore.File{Name: "version", Data: []byte("2\n"), Mode: 0o644})
	out, err := p.CLI(testwait.Ctx(t, 3*time.Minute), "deploy", "-a", "demo", "--image", second, "--file", decl)
	if err != nil {
		t.Fatalf("deploy of a second image: %v\n%s", err, out)
	}
	layer := strings.TrimPrefix(oldImg.Blobs[len(oldImg.Blobs)-1], "sha256:")
	testwait.For(t, "the old image gone from the controller, every registry and every host", 2*time.Minute, func() error {
		rels, _, err := c.Releases(testwait.Ctx(t, 10*time.Second), controller.QueryOptions{})
		if err != nil {
			return err
		}
		if len(rels) != 1 {
			return fmt.Errorf("%d releases, want the serving one only", len(rels))
		}
		if _, err := c.Image(testwait.Ctx(t, 10*time.Second), oldImg.ID, controller.QueryOptions{}); !controller.IsNotFound(err) {
			return fmt.Errorf("image record %s: %v", oldImg.ID, err)
		}
		for _, h := range p.Hosts {
			if _, err := os.Stat(filepath.Join(h.Dir, "volumes", "var/lib/plinth/registry/sha256", layer)); err == nil {
				return fmt.Errorf("the old layer is still in %s's registry", h.NS.Name)
			}
			imgs, err := p.HostClient(h).Images(testwait.Ctx(t, 10*time.Second))
			if err != nil {
				return err
			}
			for _, img := range imgs {
				for _, n := range img.Names {
					if strings.HasSuffix(n, oldImg.Digest) {
						return fmt.Errorf("%s still has %s", h.NS.Name, n)
					}
				}
			}
		}
		return nil
	})
	webNames(t, p, 1)
}

// TestDeployThroughHostFailure cuts the power of the host whose
// scheduler runs the deployer while a deploy is under way: another
// host's deployer carries it on, and it ends done or failed, never half:
// the app's serving release is the one that runs, at its scale, and
// every other release's formations go.
func TestDeployThroughHostFailure(t *testing.T) {
	p := platformtest.New(t, "plak", "10.73.0", 3, platformtest.WithContainerNetwork())
	p.Bootstrap(3 * time.Minute)
	archive := appImage(t)
	decl := filepath.Join(t.TempDir(), "plinth.toml")
	if err := os.WriteFile(decl, []byte(appTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	cli := mustCLI(t, p)
	cli(30*time.Second, "apps", "create", "demo")
	cli(3*time.Minute, "deploy", "-a", "demo", "--image", archive, "--file", decl)
	cli(3*time.Minute, "apply", "-f", decl)
	waitInstances(t, p, map[string]int{"web": 2, "echo": 1})

	c := p.Controllers()
	lease, _, err := c.Leases(testwait.Ctx(t, 10*time.Second), controller.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var victim *platformtest.Host
	for _, l := range lease {
		if l.Name == "scheduler" {
			victim = p.ByID(l.Host)
		}
	}
	if victim == nil {
		t.Fatal("no scheduler lease")
	}
	out := cli(time.Minute, "config", "set", "-a", "demo", "ECHOBACK_NAME=after", "--detach")
	if !strings.Contains(out, "started") {
		t.Fatalf("config set --detach:\n%s", out)
	}
	testwait.For(t, "the deploy's first new instance", time.Minute, func() error {
		d, _, err := c.Deploy(testwait.Ctx(t, 10*time.Second), "demo/2", controller.QueryOptions{})
		if err != nil {
			return err
		}
		for _, s := range d.Log {
			if strings.Contains(s.Text, "starting") {
				return nil
			}
		}
		return fmt.Errorf("deploy log %v", d.Log)
	})
	t.Logf("power cut of %s, the deployer's host, mid-deploy", victim.NS.Name)
	p.PowerCut(victim)
	alive := func() *controller.Client {
		var hs []*platformtest.Host
		for _, h := range p.Hosts {
			if h != victim {
				hs = append(hs, h)
			}
		}
		return p.Controllers(hs...)
	}()
	var dep controller.Deploy
	testwait.For(t, "the deploy to end", 4*time.Minute, func() error {
		dep, _, err = alive.Deploy(testwait.Ctx(t, 10*time.Second), "demo/2", controller.QueryOptions{})
		if err != nil {
			return err
		}
		if dep.State == controller.DeployRunning {
			return fmt.Errorf("deploy still running: %v", dep.Log[len(dep.Log)-1].Text)
		}
		return nil
	})
	t.Logf("deploy ended %s: %s", dep.State, dep.Reason)
	testwait.For(t, "only the serving release's formations, at scale and healthy", 3*time.Minute, func() error {
		ctx := testwait.Ctx(t, 10*time.Second)
		app, err := alive.App(ctx, "demo", controller.QueryOptions{})
		if err != nil {
			return err
		}
		want := dep.To
		if dep.State == controller.DeployFailed {
			want = dep.From
		}
		if app.Release != want {
			return fmt.Errorf("app serves v%d after a deploy that ended %s (v%d → v%d)", app.Release, dep.State, dep.From, dep.To)
		}
		fs, _, err := alive.Formations(ctx, controller.QueryOptions{})
		if err != nil {
			return err
		}
		for _, f := range fs {
			if f.Job.Tags[controller.AppTag] != "demo" {
				continue
			}
			if f.Job.Tags[controller.ReleaseTag] != fmt.Sprint(want) {
				return fmt.Errorf("formation %s of another release is left (count %d)", f.Name, f.Count)
			}
			if f.Status.Running != f.Count {
				return fmt.Errorf("formation %s: %d of %d running", f.Name, f.Status.Running, f.Count)
			}
		}
		return nil
	})
	// Requests through the surviving routers reach the serving release.
	testwait.For(t, "requests through the surviving routers", time.Minute, func() error {
		for _, h := range p.Hosts {
			if h == victim {
				continue
			}
			body, err := get(p, h.NS.Addr)
			if err != nil {
				return err
			}
			if dep.State == controller.DeployDone && !strings.HasPrefix(body, "web after ") {
				return fmt.Errorf("through %s: %q, want the new release's", h.NS.Name, body)
			}
		}
		return nil
	})
}

// registryClients pushes with skopeo, a client without the cluster's
// certificate: refused without the token, stored with it, and readable
// through another host's registry; a blob whose bytes do not match its
// digest is refused.
func registryClients(t *testing.T, p *platformtest.Platform, archive string) {
	t.Helper()
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatal("skopeo is not installed: run scripts/deps.sh")
	}
	certs := t.TempDir()
	if err := os.WriteFile(filepath.Join(certs, "ca.crt"), pemCert(p.Creds.CACert.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	skopeo := func(args ...string) (string, error) {
		cmd := p.Seg.Command(p.Client, "skopeo", args...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	reg := func(h *platformtest.Host) string {
		return net.JoinHostPort(h.NS.Addr, fmt.Sprint(controller.RegistryPort))
	}
	dest := "docker://" + reg(p.Hosts[0]) + "/demo:skopeo"
	if out, err := skopeo("copy", "--dest-cert-dir", certs, "docker-archive:"+archive, dest); err == nil {
		t.Fatalf("skopeo pushed without the token:\n%s", out)
	}
	c := p.Controllers()
	if _, err := c.Tag(testwait.Ctx(t, 10*time.Second), "demo:skopeo", controller.QueryOptions{}); !controller.IsNotFound(err) {
		t.Fatalf("a refused push left a tag: %v", err)
	}
	token, err := p.CLI(testwait.Ctx(t, 30*time.Second), "registry", "token")
	if err != nil {
		t.Fatal(err, token)
	}
	creds := "plinth:" + strings.TrimSpace(token)
	if out, err := skopeo("copy", "--dest-cert-dir", certs, "--dest-creds", creds, "docker-archive:"+archive, dest); err != nil {
		t.Fatalf("skopeo copy with the token: %v\n%s", err, out)
	}
	out, err := skopeo("inspect", "--cert-dir", certs, "--creds", creds, "docker://"+reg(p.Hosts[2])+"/demo:skopeo")
	if err != nil || !strings.Contains(out, `"Digest": "sha256:`) {
		t.Fatalf("skopeo inspect through another host's registry: %v\n%s", err, out)
	}
	// A blob sent under another digest.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: p.Seg.DialContext(p.Client), TLSClientConfig: p.Creds.TLS()}}
	wrong := "sha256:" + strings.Repeat("ab", 32)
	resp, err := hc.Post("https://"+reg(p.Hosts[1])+"/v2/demo/blobs/uploads/?digest="+wrong, "application/octet-stream", strings.NewReader("not what the digest says"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "DIGEST_INVALID") {
		t.Fatalf("a blob under a wrong digest: %s %s", resp.Status, body)
	}
	for _, h := range p.Hosts {
		if _, err := os.Stat(filepath.Join(h.Dir, "volumes", "var/lib/plinth/registry/sha256", strings.TrimPrefix(wrong, "sha256:"))); err == nil {
			t.Fatalf("the refused blob is stored on %s", h.NS.Name)
		}
	}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// mustCLI runs the plinth CLI against p, failing the test with its
// output when it fails.
func mustCLI(t *testing.T, p *platformtest.Platform) func(timeout time.Duration, args ...string) string {
	return func(timeout time.Duration, args ...string) string {
		t.Helper()
		out, err := p.CLI(testwait.Ctx(t, timeout), args...)
		if err != nil {
			t.Fatalf("plinth %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
}
