package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/services/controller"
	vmtest "github.com/plinth-os/plinth/vm-tests"
)

func vmClusterCommand() *cobra.Command {
	var kernel, initrd, dir string
	var nodes int
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Boot a cluster of VMs, deploy an example app, stop a node, watch the others notice",
		Long: "Make a cluster bundle, boot --nodes VMs on one private L2 segment (inside a network\n" +
			"namespace of their own) with it, wait until every host API lists every node alive,\n" +
			"print the member table, deploy an example web app (an image built here, imported\n" +
			"into node1 and run as a job) and fetch its page through a forwarded port, start the\n" +
			"controller on every node and show its leader and voters, then kill the last VM\n" +
			"without warning, report how long the first one takes to declare it failed, and show\n" +
			"the controller still taking writes. The others are powered off in order.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodes != 3 && nodes != 5 {
				return fmt.Errorf("--nodes %d: use 3 or 5 (every node is a controller voter, one is killed, and the others must keep a majority)", nodes)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, unix.SIGTERM)
			defer stop()
			return runVMCluster(ctx, kernel, initrd, dir, nodes)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kernel, "kernel", "out/vmlinuz", "kernel image")
	f.StringVar(&initrd, "initrd", "out/initrd.img", "initramfs")
	f.IntVar(&nodes, "nodes", 3, "number of VMs")
	f.StringVar(&dir, "dir", "", "directory for the bundle, credentials and consoles (default: temporary, removed)")
	return cmd
}

func runVMCluster(ctx context.Context, kernel, initrd, dir string, n int) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "plinth-cluster-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	const cluster = "demo"
	bundlePath, creds, err := vmtest.ClusterFiles(dir, cluster)
	if err != nil {
		return err
	}
	fmt.Printf("cluster %s: bundle and client credentials in %s\n", cluster, dir)
	ns, err := vmtest.CreateNetns()
	if err != nil {
		return err
	}
	defer ns.Delete()
	seg := ns.Segment()

	vms := make([]*vmtest.VM, n)
	defer func() {
		for _, vm := range vms {
			if vm != nil {
				vm.Close()
			}
		}
	}()
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		cfg := vmtest.ClusterNode(i, n, kernel, initrd, seg, bundlePath, controller.RoleController)
		cfg.StateDir = filepath.Join(dir, cfg.Name)
		if i == 0 {
			// The example app's port, as a user outside would reach it.
			user := cfg.NICs[1].User
			user.Forwards = append(user.Forwards, vmtest.Forward{GuestPort: demoAppPort})
		}
		wg.Go(func() {
			if vms[i], errs[i] = vmtest.Start(ctx, cfg); errs[i] != nil {
				return
			}
			wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			if _, err := vms[i].WaitFor(wctx, "plinth: ready in "); err != nil {
				errs[i] = fmt.Errorf("%s: %w\n%s", cfg.Name, err, vms[i].ConsoleTail(20))
				return
			}
			fmt.Printf("%s: ready %.1fs after start (console: %s)\n", cfg.Name, time.Since(start).Seconds(), vms[i].ConsoleLog())
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}

	clients := make([]*host.Client, n)
	for i, vm := range vms {
		if clients[i], err = vmtest.HostClient(vm, creds); err != nil {
			return err
		}
	}
	members, err := waitAllAlive(ctx, clients, n)
	if err != nil {
		return err
	}
	fmt.Printf("\nevery node lists %d alive members, %.1fs after the first start; as node1 sees them:\n\n", n, time.Since(start).Seconds())
	printMembers(members)
	if err := deployDemoApp(ctx, vms[0], clients[0]); err != nil {
		return err
	}
	if err := startDemoControllers(ctx, vms, clients, creds); err != nil {
		return err
	}

	victim := vms[n-1]
	var victimID string
	for _, m := range members {
		if m.Hostname == victim.Name() {
			victimID = m.ID
		}
	}
	if victimID == "" {
		return fmt.Errorf("node1 lists no member with hostname %s", victim.Name())
	}
	// The failure is expected within seconds (FastGossip); a stream that
	// never reports it must not hang the demo.
	ectx, ecancel := context.WithTimeout(ctx, time.Minute)
	defer ecancel()
	events, err := clients[0].Events(ectx)
	if err != nil {
		return err
	}
	defer events.Close()
	fmt.Printf("\nkilling %s's QEMU without warning...\n", victim.Name())
	killed := time.Now()
	if err := victim.Kill(); err != nil {
		return err
	}
	for {
		e, err := events.Next()
		if err != nil {
			return fmt.Errorf("node1's event stream, waiting for %s to be declared failed: %w", victim.Name(), err)
		}
		if e.Type == "member-failed" && e.Member.ID == victimID {
			break
		}
	}
	fmt.Printf("node1 reported %s failed after %.1fs\n\n", victim.Name(), time.Since(killed).Seconds())
	if members, err = clients[0].Members(ctx); err == nil {
		printMembers(members)
	}
	if err := showControllerAfterKill(ctx, vms[0], creds, n); err != nil {
		return err
	}

	pctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, vm := range vms[:n-1] {
		if err := vm.Powerdown(pctx); err != nil {
			return err
		}
	}
	for _, vm := range vms[:n-1] {
		if code, err := vm.WaitExit(pctx); err != nil || code != 0 {
			return fmt.Errorf("%s: power off: status %d, %v", vm.Name(), code, err)
		}
	}
	fmt.Printf("\nplinth vm cluster: %d nodes powered off cleanly after %.1fs\n", n-1, time.Since(start).Seconds())
	return nil
}

// waitAllAlive polls every host API until each lists n alive members and
// returns the first one's list.
func waitAllAlive(ctx context.Context, clients []*host.Client, n int) ([]host.Member, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		var first []host.Member
		var problem error
		for i, c := range clients {
			ms, err := c.Members(ctx)
			alive := 0
			for _, m := range ms {
				if m.Status == host.StatusAlive {
					alive++
				}
			}
			if err == nil && alive != n {
				err = fmt.Errorf("%d of %d members alive", alive, n)
			}
			if err != nil {
				problem = fmt.Errorf("node%d: %w", i+1, err)
				break
			}
			if i == 0 {
				first = ms
			}
		}
		if problem == nil {
			return first, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("cluster did not converge within a minute: %w", problem)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
