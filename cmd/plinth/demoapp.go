package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
	vmtest "github.com/plinth-os/plinth/vm-tests"
)

// The demo's example app: a web process (busybox httpd serving a page
// made from its config at start) and a TCP echo service (busybox nc),
// deployed through the platform.
const (
	demoApp    = "hello"
	demoDomain = "hello.demo"
)

// demoAppArchive builds the example app's image as a `docker save`
// archive, on a static busybox (Debian's busybox-static).
func demoAppArchive() ([]byte, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("the demo app needs a static busybox (apt-get install busybox-static): %w", err)
	}
	var archive bytes.Buffer
	err = imagestore.WriteArchive(&archive, demoApp+":1", []imagestore.File{
		{Name: "bin/", Mode: 0o755},
		{Name: "bin/busybox", Data: bb, Mode: 0o755},
		{Name: "bin/sh", Link: "busybox"},
		{Name: "www/", Mode: 0o755},
	}, imagestore.ImageConfig{})
	if err != nil {
		return nil, fmt.Errorf("the demo app's image: %w", err)
	}
	return archive.Bytes(), nil
}

// demoProcesses are the app's process types.
func demoProcesses() map[string]controller.Process {
	page := `echo "$GREETING from $(hostname), release v$PLINTH_RELEASE" > /www/index.html && exec busybox httpd -f -p $PORT -h /www`
	return map[string]controller.Process{
		"web": {Cmd: []string{"/bin/sh", "-c", page}, Port: 8080,
			Check: &job.Check{Type: job.CheckHTTP, Interval: job.Duration{Duration: time.Second}}},
		"echo": {Cmd: []string{"/bin/busybox", "nc", "-ll", "-p", "9000", "-e", "/bin/busybox", "cat"}, Port: 9000},
	}
}

// deployDemoApp pushes the example app's image to node1's registry (as
// a client outside the cluster, through a forwarded port), makes the app
// with two web instances and one echo, deploys it, and routes HTTP
// (hello.demo) and TCP (port 30100) to it on every host.
func (d *demoCluster) deployDemoApp(ctx context.Context) error {
	archive, err := demoAppArchive()
	if err != nil {
		return err
	}
	path := d.dir + "/hello.tar"
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		return err
	}
	imgs, cleanup, err := imagestore.ReadArchive(path, d.dir)
	defer cleanup()
	if err != nil {
		return err
	}
	vm := d.vms[0]
	ref, err := name.ParseReference(vm.HostAddr(vmtest.RegistryPort) + "/" + demoApp + ":1")
	if err != nil {
		return err
	}
	start := time.Now()
	tr := imagestore.HTTPSOnly(&http.Transport{TLSClientConfig: d.creds.TLS(), DialContext: vm.DialContext})
	if err := remote.Write(ref, imgs[0].Image, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		return fmt.Errorf("push the demo app's image: %w", err)
	}
	digest, err := imgs[0].Image.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("\npushed the app's image (%d KB) to %s's registry in %.1fs: %s@%s\n", len(archive)>>10, vm.Name(), time.Since(start).Seconds(), demoApp, digest)

	c := d.controller(0)
	if _, err := c.PutApp(ctx, controller.App{Name: demoApp, Scale: map[string]int{"web": 2, "echo": 1}}, new(uint64)); err != nil {
		return fmt.Errorf("create the app: %w", err)
	}
	if err := d.deploy(ctx, controller.ReleaseRequest{Image: demoApp + "@" + digest.String(), Processes: demoProcesses(),
		Set: map[string]string{"GREETING": "hello"}}); err != nil {
		return err
	}
	for _, r := range []controller.Route{
		{Type: controller.RouteHTTP, Service: demoApp, Domain: demoDomain},
		{Type: controller.RouteTCP, Service: demoApp + "-echo", Port: vmtest.RouteTestPort},
	} {
		out, err := c.AddRoute(ctx, r)
		if err != nil {
			return fmt.Errorf("add a route: %w", err)
		}
		fmt.Printf("route %s: %s %s → service %s, on every host's router\n", out.ID, out.Type, routeMatch(out), out.Service)
	}
	return d.plinth(ctx, "ps", "-a", demoApp)
}

// deploy makes a release of the demo app with its deploy, and prints
// the deploy's steps as they come, as plinth deploy does.
func (d *demoCluster) deploy(ctx context.Context, q controller.ReleaseRequest) error {
	c := d.controller(0)
	q.Deploy = true
	q.HealthTimeout = job.Duration{Duration: 5 * time.Minute}
	res, err := c.NewRelease(ctx, demoApp, q)
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	fmt.Printf("\nrelease v%d of %s (%s), deploying:\n", res.Release.Version, demoApp, res.Release.Description)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	return followDeploy(dctx, c, res.Deploy.ID)
}

// plinth runs the CLI on node1 and prints what it says.
func (d *demoCluster) plinth(ctx context.Context, args ...string) error {
	r, err := vmtest.Plinth(ctx, d.alive()[0], args...)
	if err != nil {
		return fmt.Errorf("plinth %s: %w", strings.Join(args, " "), err)
	}
	fmt.Printf("\n$ plinth %s\n%s\n", strings.Join(args, " "), indent(r.Output))
	if r.ExitCode != 0 {
		return fmt.Errorf("plinth %s exited %d", strings.Join(args, " "), r.ExitCode)
	}
	return nil
}

// showApp fetches the app's page through every alive VM's router until
// each answers with want in it, and echoes a line through every VM's TCP
// route.
func (d *demoCluster) showApp(ctx context.Context, want string) error {
	for _, vm := range d.vms {
		select {
		case <-vm.Exited():
			continue
		default:
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: vm.DialContext, DisableKeepAlives: true}}
		var last error
		for try := 0; try < 120; try++ {
			start := time.Now()
			body, err := getPage(ctx, hc, vm.HostAddr(vmtest.RouterHTTPPort))
			if err == nil && strings.Contains(body, want) {
				fmt.Printf("  GET http://%s/ via %s's router: %q in %.1f ms\n", demoDomain, vm.Name(), body, float64(time.Since(start).Microseconds())/1000)
				last = nil
				break
			}
			if err == nil {
				err = fmt.Errorf("%q, want %q", body, want)
			}
			last = err
			time.Sleep(time.Second)
		}
		if last != nil {
			return fmt.Errorf("%s's router: %w", vm.Name(), last)
		}
		if err := echoOnce(ctx, vm); err != nil {
			return err
		}
	}
	return nil
}

func getPage(ctx context.Context, hc *http.Client, addr string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	req.Host = demoDomain
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return strings.TrimSpace(string(body)), nil
}

// echoOnce sends a line through vm's TCP route to the echo service.
func echoOnce(ctx context.Context, vm *vmtest.VM) error {
	var last error
	for try := 0; try < 60; try++ {
		conn, err := vm.DialContext(ctx, "tcp", vm.HostAddr(vmtest.RouteTestPort))
		if err == nil {
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			line := "ping via " + vm.Name()
			fmt.Fprintln(conn, line)
			got, rerr := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if rerr == nil && strings.TrimSpace(got) == line {
				fmt.Printf("  tcp :%d via %s's router: echoed %q\n", vmtest.RouteTestPort, vm.Name(), line)
				return nil
			}
			err = fmt.Errorf("echo %q, %v", got, rerr)
		}
		last = err
		time.Sleep(time.Second)
	}
	return fmt.Errorf("%s's TCP route: %w", vm.Name(), last)
}

// underLoad runs deploy while one client sends requests, one after
// another, through node1's router, and fails if any of them failed.
func (d *demoCluster) underLoad(ctx context.Context, what string, deploy func() error) error {
	vm := d.vms[0]
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: vm.DialContext, DisableKeepAlives: true}}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for end := time.Now().Add(15 * time.Minute); time.Now().Before(end); {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := getPage(ctx, hc, vm.HostAddr(vmtest.RouterHTTPPort)); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			} else {
				ok.Add(1)
			}
		}
	})
	err := deploy()
	close(stop)
	wg.Wait()
	if err != nil {
		return err
	}
	fmt.Printf("\n%s: %d requests answered through %s's router during the deploy, %d failed\n", what, ok.Load(), vm.Name(), failed.Load())
	if failed.Load() > 0 {
		return fmt.Errorf("%d requests failed during the deploy (first: %v)", failed.Load(), firstErr.Load())
	}
	return nil
}

// gitPushDemo ends the demo as a developer's day starts: a repository
// with a Procfile and a build step, pushed with git through node2's
// router, built on the cluster on the app image already in the registry,
// deployed, and fetched through every router.
func (d *demoCluster) gitPushDemo(ctx context.Context) error {
	const app, domain = "site", "site.demo"
	c := d.controller(0)
	if _, err := c.PutApp(ctx, controller.App{Name: app}, new(uint64)); err != nil {
		return fmt.Errorf("create the app: %w", err)
	}
	repo := d.dir + "/site"
	files := map[string]string{
		"plinth.toml": "app = \"site\"\n\n[build]\nbase = \"" + demoApp + ":1\"   # already in the cluster's registry\ncommand = \"sh build.sh\"\n",
		"Procfile":    "web: busybox httpd -f -p $PORT -h /app/public\n",
		"build.sh":    "set -e\nmkdir -p public\necho \"built by git push on $(hostname), build $PLINTH_BUILD\" > public/index.html\necho wrote public/index.html\n",
	}
	if err := os.MkdirAll(repo, 0o755); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(repo+"/"+name, []byte(data), 0o644); err != nil {
			return err
		}
	}
	vm := d.vms[1]
	fmt.Printf("\na git repository with a Procfile and a build step, pushed through %s's router:\n\n$ git push %s main\n", vm.Name(), vmtest.GitURL(vm, app))
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "."}, {"commit", "-q", "-m", "the site"}} {
		if err := vmtest.Git(ctx, vm, d.creds, repo, io.Discard, args...); err != nil {
			return err
		}
	}
	start := time.Now()
	if err := vmtest.Git(ctx, vm, d.creds, repo, os.Stdout, "push", vmtest.GitURL(vm, app), "main"); err != nil {
		return err
	}
	fmt.Printf("pushed, built and deployed in %.1fs\n", time.Since(start).Seconds())
	r, err := c.AddRoute(ctx, controller.Route{Type: controller.RouteHTTP, Service: app, Domain: domain})
	if err != nil {
		return fmt.Errorf("add a route: %w", err)
	}
	fmt.Printf("route %s: http %s → service %s\n", r.ID, domain, app)
	for _, v := range d.vms {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: v.DialContext, DisableKeepAlives: true}}
		var page string
		for deadline := time.Now().Add(2 * time.Minute); ; {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+v.HostAddr(vmtest.RouterHTTPPort)+"/", nil)
			req.Host = domain
			resp, err := hc.Do(req)
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				page = strings.TrimSpace(string(body))
				if resp.StatusCode == http.StatusOK && strings.HasPrefix(page, "built by git push") {
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s through %s's router: %q, %v", domain, v.Name(), page, err)
			}
			time.Sleep(time.Second)
		}
		fmt.Printf("  %s via %s: %s\n", domain, v.Name(), page)
	}
	return d.plinth(ctx, "builds", "-a", app)
}
