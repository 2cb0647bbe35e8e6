package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/services/controller"
	vmtest "github.com/plinth-os/plinth/vm-tests"
)

// startDemoControllers does what `plinth controller start-jobs` does on
// the demo's VMs (all have the controller role), waits until node1's
// controller reports a leader and every voter healthy, and prints its
// status.
func startDemoControllers(ctx context.Context, vms []*vmtest.VM, clients []*host.Client, creds *bundle.Credentials) error {
	start := time.Now()
	spec := controller.JobSpec(platformBinary, len(vms), controller.DefaultConfig().DataDir)
	for i, c := range clients {
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
			_, err := c.CreateJob(ctx, spec)
			var apiErr *host.APIError
			if err == nil {
				break
			}
			if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("start the controller on %s: %w", vms[i].Name(), err)
			}
		}
	}
	fmt.Printf("\ncontroller jobs started on %d nodes; waiting for their raft cluster...\n", len(vms))
	st, err := waitControllerHealthy(ctx, demoController(vms[0], creds), len(vms), 4*time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("the controller has a leader and %d healthy voters %.1fs after its jobs were created:\n\n", len(st.Voters), time.Since(start).Seconds())
	printStatus(st)
	return nil
}

// demoController is a controller client of vm's controller, through its
// forwarded port.
func demoController(vm *vmtest.VM, creds *bundle.Credentials) *controller.Client {
	return controller.NewClientTransport([]string{vm.HostAddr(vmtest.ControllerAPIPort)},
		&http.Transport{TLSClientConfig: creds.TLS(), DialContext: vm.DialContext})
}

// waitControllerHealthy polls c's status until it has a leader and
// voters healthy voters.
func waitControllerHealthy(ctx context.Context, c *controller.Client, voters int, timeout time.Duration) (controller.Status, error) {
	deadline := time.Now().Add(timeout)
	for {
		call, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := c.Status(call)
		cancel()
		healthy := 0
		for _, v := range st.Voters {
			if v.Healthy {
				healthy++
			}
		}
		if err == nil && st.Leader != "" && healthy >= voters {
			return st, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("leader %q, %d of %d voters healthy", st.Leader, healthy, voters)
			}
			return st, fmt.Errorf("controller not healthy within %v: %w", timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// showControllerAfterKill writes through node1's controller and prints
// its status: the survivors keep a quorum.
func showControllerAfterKill(ctx context.Context, vm *vmtest.VM, creds *bundle.Credentials, voters int) error {
	c := demoController(vm, creds)
	if _, err := waitControllerHealthy(ctx, c, voters-1, time.Minute); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := c.PutSetting(wctx, "demo", "written after a node was killed", nil)
	if err != nil {
		return fmt.Errorf("write through %s's controller: %w", vm.Name(), err)
	}
	st, err := c.Status(wctx)
	if err != nil {
		return err
	}
	fmt.Printf("\nthe controller still takes writes (setting %q at index %d); its status as %s sees it:\n\n", s.Key, s.ModifyIndex, vm.Name())
	printStatus(st)
	return nil
}
