package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
	vmtest "github.com/plinth-os/plinth/vm-tests"
)

// demoCluster is the demo's VMs, booted from cfgs, again after a power
// cut on the same disks.
type demoCluster struct {
	dir   string
	cfgs  []vmtest.Config
	creds *bundle.Credentials
	vms   []*vmtest.VM
	hosts []*host.Client
	boots int
}

// boot starts every VM and waits until each is ready.
func (d *demoCluster) boot(ctx context.Context) error {
	d.boots++
	d.vms = make([]*vmtest.VM, len(d.cfgs))
	d.hosts = make([]*host.Client, len(d.cfgs))
	start := time.Now()
	errs := make([]error, len(d.cfgs))
	var wg sync.WaitGroup
	for i, cfg := range d.cfgs {
		cfg.StateDir = filepath.Join(d.dir, fmt.Sprintf("%s-boot%d", cfg.Name, d.boots))
		wg.Go(func() {
			vm, err := vmtest.Start(ctx, cfg)
			if err != nil {
				errs[i] = err
				return
			}
			d.vms[i] = vm
			wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			if _, err := vm.WaitFor(wctx, "plinth: ready in "); err != nil {
				errs[i] = fmt.Errorf("%s: %w\n%s", cfg.Name, err, vm.ConsoleTail(20))
				return
			}
			d.hosts[i], errs[i] = vmtest.HostClient(vm, d.creds)
			fmt.Printf("%s: ready %.1fs after start (console: %s)\n", cfg.Name, time.Since(start).Seconds(), vm.ConsoleLog())
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// close kills whatever still runs.
func (d *demoCluster) close() {
	for _, vm := range d.vms {
		if vm != nil {
			vm.Close()
		}
	}
}

// alive are the clients of the VMs still running.
func (d *demoCluster) alive() []*host.Client {
	var out []*host.Client
	for i, vm := range d.vms {
		select {
		case <-vm.Exited():
		default:
			out = append(out, d.hosts[i])
		}
	}
	return out
}

// showStatus waits until `plinth status` says healthy (and check, when
// given, agrees), then prints its screen as a host shows it.
func (d *demoCluster) showStatus(ctx context.Context, since time.Time, what string, check func(vmtest.PlatformStatus) error) error {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if _, err := vmtest.WaitHealthy(wctx, d.alive(), check); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	fmt.Printf("\n%s: plinth status says healthy %.1fs after %s:\n\n", what, time.Since(since).Seconds(), what)
	r, err := vmtest.Plinth(ctx, d.alive()[0], "status")
	if err != nil {
		return err
	}
	fmt.Println(indent(r.Output))
	return nil
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}

// webHosts returns, by VM, the hosts running an instance of the demo
// app's web process.
func (d *demoCluster) webHosts(ctx context.Context) (map[int]bool, error) {
	out := map[int]bool{}
	for i, c := range d.hosts {
		select {
		case <-d.vms[i].Exited():
			continue
		default:
		}
		jobs, err := c.Jobs(ctx)
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			if j.Spec.Tags[controller.AppTag] == demoApp && j.Spec.Tags[controller.TypeTag] == "web" && j.Status.State == job.StateRunning {
				out[i] = true
			}
		}
	}
	return out, nil
}

// webRuns checks that the app's two web instances run, on two hosts.
func (d *demoCluster) webRuns(ctx context.Context) func(vmtest.PlatformStatus) error {
	return func(vmtest.PlatformStatus) error {
		web, err := d.webHosts(ctx)
		if err != nil {
			return err
		}
		if len(web) != 2 {
			return fmt.Errorf("the app's web runs on %d hosts, want 2", len(web))
		}
		return nil
	}
}

// controller is a client of node i's controller, through its forward.
func (d *demoCluster) controller(i int) *controller.Client {
	vm := d.vms[i]
	return controller.NewClientTransport([]string{vm.HostAddr(vmtest.ControllerAPIPort)},
		&http.Transport{TLSClientConfig: d.creds.TLS(), DialContext: vm.DialContext})
}
