package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	vmtest "github.com/plinth-os/plinth/vm-tests"
)

func vmCommand() *cobra.Command {
	vm := &cobra.Command{Use: "vm", Short: "Boot plinth images in QEMU (TCG)"}
	var (
		cfg        vmtest.Config
		configFile string
		untilReady bool
		forwards   []int
	)
	run := &cobra.Command{
		Use:   "run",
		Short: "Boot one VM and show its console; Ctrl-C powers it off",
		Long: "Boot one VM from --kernel and --initrd with its serial console on stdout.\n" +
			"Ctrl-C presses the ACPI power button and waits for an ordered power-off.\n" +
			"With --until-ready the VM is powered off as soon as plinth reports ready.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				data, err := os.ReadFile(configFile)
				if err != nil {
					return fmt.Errorf("machine config: %w", err)
				}
				cfg.MachineConfig = data
			}
			if len(forwards) > 0 {
				user := &vmtest.UserNet{}
				for _, p := range forwards {
					user.Forwards = append(user.Forwards, vmtest.Forward{GuestPort: p})
				}
				cfg.NICs = append(cfg.NICs, vmtest.NIC{User: user})
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, unix.SIGTERM)
			defer stop()
			if !untilReady {
				return vmtest.Run(ctx, cfg, os.Stdout)
			}
			return runUntilReady(ctx, cfg)
		},
	}
	f := run.Flags()
	f.StringVar(&cfg.Kernel, "kernel", "out/vmlinuz", "kernel image")
	f.StringVar(&cfg.Initrd, "initrd", "out/initrd.img", "initramfs")
	f.StringVar(&cfg.Cmdline, "append", "", "extra kernel command line")
	f.IntVar(&cfg.Memory, "memory", 512, "guest memory in MiB")
	f.IntVar(&cfg.CPUs, "cpus", 1, "guest vCPUs")
	f.StringVar(&cfg.StateDir, "state", "", "directory for console.log, qmp.sock (default: temporary)")
	f.StringVar(&configFile, "config", "", "machine config (TOML) passed through fw_cfg")
	f.IntSliceVar(&forwards, "forward", nil, "guest TCP port to expose on 127.0.0.1 (user networking; repeatable)")
	f.BoolVar(&untilReady, "until-ready", false, "power off once plinth reports ready")
	vm.AddCommand(run, vmClusterCommand())
	return vm
}

// runUntilReady boots, waits for the ready line, then powers off in order
// and reports how long each part took.
func runUntilReady(ctx context.Context, cfg vmtest.Config) error {
	cfg.Console = os.Stdout
	start := time.Now()
	vm, err := vmtest.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer vm.Close()
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := vm.WaitFor(wctx, "plinth: ready in "); err != nil {
		return fmt.Errorf("waiting for plinth to be ready: %w (console: %s)", err, vm.ConsoleLog())
	}
	ready := time.Since(start)
	pctx, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	if err := vm.Powerdown(pctx); err != nil {
		return err
	}
	code, err := vm.WaitExit(pctx)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("qemu exited with status %d", code)
	}
	fmt.Printf("\nplinth vm: ready after %.1fs wall time, powered off cleanly after %.1fs\n", ready.Seconds(), time.Since(start).Seconds())
	return nil
}
