package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
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
		Short: "Boot a self-bootstrapping cluster of VMs, deploy, kill a node, cut the power, watch it come back",
		Long: "Make a cluster bundle and a data disk per node, boot --nodes VMs on one private L2\n" +
			"segment (inside a network namespace of their own) whose machine configs say\n" +
			"bootstrap_expect, so that they start the platform by themselves; print the member\n" +
			"table and plinth status once healthy; push an example app's image (built here) to\n" +
			"the cluster's registry, deploy it (two web instances and a TCP echo service), route\n" +
			"it and fetch it through every node's router; change its config (a new release),\n" +
			"roll it back, and restart it while a client sends requests, none failing; kill a VM\n" +
			"running a web instance without warning and show the replacement, then kill every VM\n" +
			"at once, boot them again on the same disks and show the app served once more. Then\n" +
			"power off.",
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

	d := &demoCluster{dir: dir, creds: creds}
	defer d.close()
	for i := range n {
		nodeDir := filepath.Join(dir, fmt.Sprintf("node%d", i+1))
		if err := os.MkdirAll(nodeDir, 0o700); err != nil {
			return err
		}
		disk, err := vmtest.DataDisk(nodeDir, 512<<20)
		if err != nil {
			return err
		}
		d.cfgs = append(d.cfgs, vmtest.PlatformNode(i, n, kernel, initrd, seg, bundlePath, disk))
	}
	fmt.Printf("every node's machine config says bootstrap_expect = %d: the platform starts itself\n", n)
	start := time.Now()
	if err := d.boot(ctx); err != nil {
		return err
	}
	members, err := waitAllAlive(ctx, d.hosts, n)
	if err != nil {
		return err
	}
	fmt.Printf("\nevery node lists %d alive members, %.1fs after the first start; as node1 sees them:\n\n", n, time.Since(start).Seconds())
	printMembers(members)
	if err := d.showStatus(ctx, start, "power-on", nil); err != nil {
		return err
	}
	// The example app: deployed, routed, changed, rolled back and
	// restarted under requests, through the platform.
	if err := d.deployDemoApp(ctx); err != nil {
		return err
	}
	fmt.Printf("\nthe app through every node's router (HTTP by domain, TCP by port):\n")
	if err := d.showApp(ctx, "hello from"); err != nil {
		return err
	}
	if err := d.deploy(ctx, controller.ReleaseRequest{Set: map[string]string{"GREETING": "bonjour"}}); err != nil {
		return err
	}
	if err := d.showApp(ctx, "bonjour from"); err != nil {
		return err
	}
	if err := d.deploy(ctx, controller.ReleaseRequest{From: 1}); err != nil {
		return err
	}
	if err := d.showApp(ctx, "hello from"); err != nil {
		return err
	}
	if err := d.plinth(ctx, "releases", "-a", demoApp); err != nil {
		return err
	}
	err = d.underLoad(ctx, "a rolling restart", func() error {
		return d.deploy(ctx, controller.ReleaseRequest{Description: "restart"})
	})
	if err != nil {
		return err
	}

	// The victim runs a web instance and is not node1, whose forwards
	// the demo uses most.
	web, err := d.webHosts(ctx)
	if err != nil {
		return err
	}
	victim := -1
	for i := 1; i < n; i++ {
		if web[i] {
			victim = i
		}
	}
	if victim < 0 {
		return fmt.Errorf("no web instance outside node1")
	}
	fmt.Printf("\nkilling %s's QEMU without warning (it runs a web instance)...\n", d.vms[victim].Name())
	killed := time.Now()
	if err := d.vms[victim].Kill(); err != nil {
		return err
	}
	<-d.vms[victim].Exited()
	if err := d.showStatus(ctx, killed, "the kill", d.webRuns(ctx)); err != nil {
		return err
	}
	if err := d.showApp(ctx, "hello from"); err != nil {
		return err
	}

	fmt.Printf("\npower cut: killing every QEMU at once, then starting them again on the same disks...\n")
	for _, vm := range d.vms {
		vm.Kill()
		<-vm.Exited()
	}
	restart := time.Now()
	if err := d.boot(ctx); err != nil {
		return err
	}
	if err := d.showStatus(ctx, restart, "the cold start", d.webRuns(ctx)); err != nil {
		return err
	}
	if err := d.showApp(ctx, "hello from"); err != nil {
		return err
	}
	if err := d.plinth(ctx, "ps", "-a", demoApp); err != nil {
		return err
	}
	if err := d.gitPushDemo(ctx); err != nil {
		return err
	}

	pctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, vm := range d.vms {
		if err := vm.Powerdown(pctx); err != nil {
			return err
		}
	}
	for _, vm := range d.vms {
		if code, err := vm.WaitExit(pctx); err != nil || code != 0 {
			return fmt.Errorf("%s: power off: status %d, %v", vm.Name(), code, err)
		}
	}
	fmt.Printf("\nplinth vm cluster: %d nodes powered off cleanly after %.1fs\n", n, time.Since(start).Seconds())
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
