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
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/testwait"
	"github.com/plinth-os/plinth/services/controller"
)

// deployApp pushes an image of echoback (built static here) to node 0's
// registry, as a client outside the cluster, and deploys it as app demo:
// two web instances on the container network, routed at demo.test.
func (p *platformVMs) deployApp(ctx context.Context) {
	p.t.Helper()
	dir := p.t.TempDir()
	bin := filepath.Join(dir, "echoback")
	build := exec.Command("go", "build", "-o", bin, "github.com/plinth-os/plinth/internal/echoback")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		p.t.Fatalf("build echoback: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		p.t.Fatal(err)
	}
	archive := filepath.Join(dir, "app.tar")
	f, err := os.Create(archive)
	if err != nil {
		p.t.Fatal(err)
	}
	err = imagestore.WriteArchive(f, "demo:v1", []imagestore.File{{Name: "echoback", Data: data, Mode: 0o755}},
		imagestore.ImageConfig{Entrypoint: []string{"/echoback", "--http", ":8080"}})
	f.Close()
	if err != nil {
		p.t.Fatal(err)
	}
	imgs, cleanup, err := imagestore.ReadArchive(archive, dir)
	defer cleanup()
	if err != nil {
		p.t.Fatal(err)
	}
	vm := p.vms[0]
	ref, err := name.ParseReference(vm.HostAddr(RegistryPort) + "/demo:v1")
	if err != nil {
		p.t.Fatal(err)
	}
	tr := imagestore.HTTPSOnly(&http.Transport{TLSClientConfig: p.creds.TLS(), DialContext: vm.DialContext})
	start := time.Now()
	if err := remote.Write(ref, imgs[0].Image, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		p.t.Fatalf("push to the registry: %v", err)
	}
	digest, err := imgs[0].Image.Digest()
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("pushed the app image in %.1fs", time.Since(start).Seconds())

	c := p.controller(0)
	if _, err := c.PutApp(ctx, controller.App{Name: "demo", Scale: map[string]int{"web": 2}}, new(uint64)); err != nil {
		p.t.Fatal(err)
	}
	quick := &job.Check{Type: job.CheckHTTP, Interval: job.Duration{Duration: time.Second}}
	res, err := c.NewRelease(ctx, "demo", controller.ReleaseRequest{
		Image: "demo@" + digest.String(), Deploy: true, HealthTimeout: job.Duration{Duration: 5 * time.Minute},
		Processes: map[string]controller.Process{"web": {Port: 8080, Check: quick}},
	})
	if err != nil {
		p.t.Fatal(err)
	}
	start = time.Now()
	testwait.For(p.t, "the app's deploy", 6*time.Minute, func() error {
		d, _, err := c.Deploy(ctx, res.Deploy.ID, controller.QueryOptions{})
		switch {
		case err != nil:
			return err
		case d.State == controller.DeployFailed:
			p.t.Fatalf("deploy failed: %s\n%v", d.Reason, d.Log)
		case d.State != controller.DeployDone:
			return fmt.Errorf("deploy %s: %v", d.State, d.Log)
		}
		return nil
	})
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
