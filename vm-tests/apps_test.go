//go:build vmtest

package vmtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/plinth-os/plinth/host/container"
	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

// appArchive writes an image of echoback (built static here) with
// extra files, echoback serving HTTP on :8080 as its entrypoint.
func appArchive(t testing.TB, dir string, extra ...imagestore.File) string {
	t.Helper()
	bin := filepath.Join(dir, "echoback")
	if _, err := os.Stat(bin); err != nil {
		build := exec.Command("go", "build", "-o", bin, "github.com/plinth-os/plinth/internal/echoback")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build echoback: %v\n%s", err, out)
		}
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "app-*.tar")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := append([]imagestore.File{{Name: "echoback", Data: data, Mode: 0o755}}, extra...)
	if err := imagestore.WriteArchive(f, "demo:v1", files, imagestore.ImageConfig{Entrypoint: []string{"/echoback", "--http", ":8080"}}); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// pushApp pushes archive to node i's registry as demo:TAG, as a client
// outside the cluster, and returns the image's digest.
func (p *platformVMs) pushApp(ctx context.Context, i int, archive, tag string) string {
	p.t.Helper()
	return p.pushImage(ctx, i, archive, "demo:"+tag)
}

// pushImage pushes archive to node i's registry as REPO:TAG ref.
func (p *platformVMs) pushImage(ctx context.Context, i int, archive, ref string) string {
	p.t.Helper()
	imgs, cleanup, err := imagestore.ReadArchive(archive, filepath.Dir(archive))
	defer cleanup()
	if err != nil {
		p.t.Fatal(err)
	}
	vm := p.vms[i]
	r, err := name.ParseReference(vm.HostAddr(RegistryPort) + "/" + ref)
	if err != nil {
		p.t.Fatal(err)
	}
	tr := imagestore.HTTPSOnly(&http.Transport{TLSClientConfig: p.creds.TLS(), DialContext: vm.DialContext})
	if err := remote.Write(r, imgs[0].Image, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		p.t.Fatalf("push to the registry: %v", err)
	}
	digest, err := imgs[0].Image.Digest()
	if err != nil {
		p.t.Fatal(err)
	}
	return digest.String()
}

// deployRelease deploys image (a digest in the demo repository) to the
// app demo with strategy (empty: the default) and waits for the deploy
// to end done.
func (p *platformVMs) deployRelease(ctx context.Context, digest, strategy string) controller.Deploy {
	p.t.Helper()
	c := p.controller(0)
	quick := &job.Check{Type: job.CheckHTTP, Interval: job.Duration{Duration: time.Second}}
	res, err := c.NewRelease(ctx, "demo", controller.ReleaseRequest{
		Image: "demo@" + digest, Deploy: true, Strategy: strategy, HealthTimeout: job.Duration{Duration: 5 * time.Minute},
		Processes: map[string]controller.Process{"web": {Port: 8080, Check: quick}},
	})
	if err != nil {
		p.t.Fatal(err)
	}
	var d controller.Deploy
	for deadline := time.Now().Add(6 * time.Minute); ; time.Sleep(time.Second) {
		d, _, err = c.Deploy(ctx, res.Deploy.ID, controller.QueryOptions{})
		if err == nil && d.State == controller.DeployDone {
			return d
		}
		if (err == nil && d.State == controller.DeployFailed) || time.Now().After(deadline) {
			for i, vm := range p.vms {
				p.logJobs(vm.Name(), p.hosts[i])
			}
			p.t.Fatalf("deploy %s: %v %s %s\n%v", res.Deploy.ID, err, d.State, d.Reason, d.Log)
		}
	}
}

// deployApp pushes the echoback app to node 0's registry and deploys it
// as app demo: two web instances on the container network, routed at
// demo.test.
func (p *platformVMs) deployApp(ctx context.Context) {
	p.t.Helper()
	start := time.Now()
	digest := p.pushApp(ctx, 0, appArchive(p.t, p.t.TempDir()), "v1")
	p.t.Logf("pushed the app image in %.1fs", time.Since(start).Seconds())
	c := p.controller(0)
	if _, err := c.PutApp(ctx, controller.App{Name: "demo", Scale: map[string]int{"web": 2}}, new(uint64)); err != nil {
		p.t.Fatal(err)
	}
	start = time.Now()
	p.deployRelease(ctx, digest, "")
	p.t.Logf("deployed the app on the VMs in %.1fs", time.Since(start).Seconds())
	if _, err := c.AddRoute(ctx, controller.Route{Type: controller.RouteHTTP, Service: "demo", Domain: "demo.test"}); err != nil {
		p.t.Fatal(err)
	}
}

// appServes checks demo.test through every alive VM's router: both web
// instances answer.
func (p *platformVMs) appServes(ctx context.Context, what string) {
	p.t.Helper()
	for _, vm := range p.vms {
		select {
		case <-vm.Exited():
			continue
		default:
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: vm.DialContext, DisableKeepAlives: true}}
		testwait.For(p.t, what+": the app through "+vm.Name(), 3*time.Minute, func() error {
			seen := map[string]bool{}
			for range 8 {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+vm.HostAddr(RouterHTTPPort)+"/", nil)
				req.Host = "demo.test"
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "web ") {
					return fmt.Errorf("%s: %q", resp.Status, body)
				}
				seen[strings.Fields(string(body))[1]] = true
			}
			if len(seen) != 2 {
				return fmt.Errorf("%d instances answered, want 2", len(seen))
			}
			return nil
		})
	}
}

// appInUserNamespace checks that the app's instances run in a user
// namespace (the platform's default for apps, on hosts whose data disk
// takes idmapped mounts): echoback's /uid_map shows root mapped to the
// unprivileged host range.
func (p *platformVMs) appInUserNamespace(ctx context.Context) {
	p.t.Helper()
	vm := p.vms[0]
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: vm.DialContext, DisableKeepAlives: true}}
	want := fmt.Sprintf("0 %d %d", container.UserNSBase, container.UserNSSize)
	testwait.For(p.t, "the app's uid_map through "+vm.Name(), time.Minute, func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+vm.HostAddr(RouterHTTPPort)+"/uid_map", nil)
		req.Host = "demo.test"
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := strings.Join(strings.Fields(string(body)), " "); resp.StatusCode != http.StatusOK || got != want {
			return fmt.Errorf("%s: uid_map %q, want %q", resp.Status, got, want)
		}
		return nil
	})
}

// gitPushApp pushes a small app with the system git client through
// node 1's router (the builder may run on any node) with the client
// certificate: built on a busybox base pushed to node 0's registry, by a
// build step on the cluster, deployed, and served through node 2's
// router.
func (p *platformVMs) gitPushApp(ctx context.Context) {
	p.t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		p.t.Fatal("git is not installed: run scripts/deps.sh")
	}
	dir := p.t.TempDir()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		p.t.Fatal(err)
	}
	base := filepath.Join(dir, "base.tar")
	f, err := os.Create(base)
	if err != nil {
		p.t.Fatal(err)
	}
	files := []imagestore.File{{Name: "bin/", Mode: 0o755}, {Name: "bin/busybox", Data: bb, Mode: 0o755}, {Name: "bin/sh", Link: "busybox"}}
	if err := imagestore.WriteArchive(f, "busybox:base", files, imagestore.ImageConfig{Env: []string{"PATH=/bin"}}); err != nil {
		p.t.Fatal(err)
	}
	f.Close()
	p.pushImage(ctx, 0, base, "busybox:base")
	c := p.controller(0)
	if _, err := c.PutApp(ctx, controller.App{Name: "site"}, new(uint64)); err != nil {
		p.t.Fatal(err)
	}

	repo := filepath.Join(dir, "repo")
	git := func(args ...string) string {
		p.t.Helper()
		var out strings.Builder
		if err := Git(ctx, p.vms[1], p.creds, repo, &out, args...); err != nil {
			p.t.Fatalf("%v\n%s", err, out.String())
		}
		return out.String()
	}
	if err := os.MkdirAll(repo, 0o755); err != nil {
		p.t.Fatal(err)
	}
	for name, data := range map[string]string{
		"plinth.toml": "app = \"site\"\n[build]\nbase = \"busybox:base\"\ncommand = \"sh -c 'mkdir -p public && echo built on the cluster > public/index.html'\"\n",
		"Procfile":    "web: busybox httpd -f -p $PORT -h /app/public\n",
	} {
		if err := os.WriteFile(filepath.Join(repo, name), []byte(data), 0o644); err != nil {
			p.t.Fatal(err)
		}
	}
	git("init", "-q", "-b", "main")
	git("add", ".")
	git("commit", "-q", "-m", "site")
	start := time.Now()
	out := git("push", GitURL(p.vms[1], "site"), "main")
	if !strings.Contains(out, "v1 of site serves") {
		p.t.Fatalf("git push:\n%s", out)
	}
	p.t.Logf("git push built and deployed the app on the VMs in %.1fs:\n%s", time.Since(start).Seconds(), out)
	if _, err := c.AddRoute(ctx, controller.Route{Type: controller.RouteHTTP, Service: "site", Domain: "site.test"}); err != nil {
		p.t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: p.vms[2].DialContext, DisableKeepAlives: true}}
	testwait.For(p.t, "the pushed app through "+p.vms[2].Name(), 2*time.Minute, func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.vms[2].HostAddr(RouterHTTPPort)+"/index.html", nil)
		req.Host = "site.test"
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.TrimSpace(string(body)) != "built on the cluster" {
			return fmt.Errorf("%s: %q", resp.Status, body)
		}
		return nil
	})
}
