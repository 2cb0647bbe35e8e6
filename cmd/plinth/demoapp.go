package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
	vmtest "github.com/plinth-os/plinth/vm-tests"
)

// The demo's example app: a web server in an image of its own, deployed
// to a node as a job and fetched from outside the cluster.
const (
	demoAppImage = "plinth.demo/hello:1"
	demoAppJob   = "hello-web"
	demoAppPort  = 8080
)

// demoAppArchive builds the example app's image as a `docker save`
// archive: a static busybox (Debian's busybox-static) serving one page
// with its httpd.
func demoAppArchive(page string) ([]byte, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("the demo app needs a static busybox (apt-get install busybox-static): %w", err)
	}
	var archive bytes.Buffer
	err = imagestore.WriteArchive(&archive, demoAppImage, []imagestore.File{
		{Name: "bin/", Mode: 0o755},
		{Name: "bin/busybox", Data: bb, Mode: 0o755},
		{Name: "bin/sh", Link: "busybox"},
		{Name: "bin/httpd", Link: "busybox"},
		{Name: "www/", Mode: 0o755},
		{Name: "www/index.html", Data: []byte(page), Mode: 0o644},
	}, imagestore.ImageConfig{Cmd: []string{"httpd", "-f", "-p", fmt.Sprint(demoAppPort), "-h", "/www"}})
	if err != nil {
		return nil, fmt.Errorf("the demo app's image: %w", err)
	}
	return archive.Bytes(), nil
}

// deployDemoApp imports the example app's image into vm's host, runs it
// as a job on the host's network and fetches its page through the port
// QEMU forwards, the way a user outside the cluster would.
func deployDemoApp(ctx context.Context, vm *vmtest.VM, c *host.Client) error {
	page := fmt.Sprintf("hello from a plinth job on %s\n", vm.Name())
	archive, err := demoAppArchive(page)
	if err != nil {
		return err
	}
	start := time.Now()
	imgs, err := c.ImportImage(ctx, bytes.NewReader(archive))
	if err != nil {
		return fmt.Errorf("import the demo app's image into %s: %w", vm.Name(), err)
	}
	fmt.Printf("\nimported %s (%s, %d KB) into %s in %.1fs\n", demoAppImage, imgs[0].ID[:19], imgs[0].Size>>10, vm.Name(), time.Since(start).Seconds())

	// The image's overlay needs a kernel module that loads in the
	// background after ready; until then the host answers 503.
	spec := job.Spec{ID: demoAppJob, Image: demoAppImage, Network: job.NetworkHost, Restart: job.Restart{Policy: job.RestartAlways}}
	var j job.Job
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
		j, err = c.CreateJob(ctx, spec)
		var apiErr *host.APIError
		if err == nil {
			break
		}
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("start the demo app on %s: %w", vm.Name(), err)
		}
	}
	fmt.Printf("job %s started on %s (pid %d) %.1fs after the import began\n", demoAppJob, vm.Name(), j.Status.Pid, time.Since(start).Seconds())

	addr := vm.HostAddr(demoAppPort)
	if addr == "" {
		return fmt.Errorf("%s forwards no port %d", vm.Name(), demoAppPort)
	}
	web := &http.Client{Transport: &http.Transport{DialContext: vm.DialContext}, Timeout: 10 * time.Second}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		resp, err := web.Get("http://" + addr + "/")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(body) == page {
				fmt.Printf("GET http://%s:%d/ (forwarded to %s) answered: %s", vm.Name(), demoAppPort, addr, body)
				return nil
			}
			err = fmt.Errorf("status %s, body %q", resp.Status, body)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("fetch the demo app's page from %s: %w", vm.Name(), err)
		}
	}
}
