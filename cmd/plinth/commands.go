package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/image"
	boot "github.com/plinth-os/plinth/init"
	"github.com/plinth-os/plinth/version"
)

func rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "plinth",
		Short:         "plinth: an immutable self-hosting platform",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(versionCommand(), imageCommand(), vmCommand(), selftestCommand(), netdCommand(), netCommand(),
		hostdCommand(), membersCommand(), clusterCommand(), hostCommand(), controllerCommand(), servicesCommand(), discoveryCommand(),
		schedulerCommand(), hostsCommand(), statusCommand(), formationsCommand(), routerCommand(), routesCommand(), registryCommand(),
		appsCommand(), deployCommand(), releasesCommand(), rollbackCommand(), configCommand(), psCommand(), logsCommand(), runCommand(),
		deploysCommand(), eventsCommand(), applyCommand(), exportCommand(), builderCommand(), gitCommand(), buildsCommand(), settingsCommand(),
		powerCommand("poweroff", "Power the machine off in order", unix.SIGUSR2),
		powerCommand("reboot", "Reboot the machine in order", unix.SIGTERM))
	return root
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the plinth version",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { fmt.Println(version.Version) },
	}
}

func imageCommand() *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Build plinth boot images"}
	cfg := image.DefaultConfig()
	build := &cobra.Command{
		Use:   "build",
		Short: "Build vmlinuz, initrd.img, system.img and manifest.json",
		Long: "Build the boot artifacts into --out. The kernel package is downloaded once\n" +
			"with apt-get into --cache. By default the running plinth binary is the one\n" +
			"installed into the image.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Binary == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find own binary (pass --binary): %w", err)
				}
				cfg.Binary = self
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			m, err := image.Build(ctx, cfg)
			if err != nil {
				return err
			}
			var total int64
			for _, f := range m.Files {
				fmt.Printf("%-12s %9.2f MB  sha256:%s\n", f.Name, float64(f.Size)/1e6, f.SHA256[:16])
				total += f.Size
			}
			fmt.Printf("%-12s %9.2f MB  (plinth %s, kernel %s)\n", "total", float64(total)/1e6, m.Version, m.KernelRelease)
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&cfg.OutDir, "out", cfg.OutDir, "output directory")
	f.StringVar(&cfg.CacheDir, "cache", cfg.CacheDir, "kernel download cache")
	f.StringVar(&cfg.Binary, "binary", "", "plinth binary to install (default: this one)")
	f.StringVar(&cfg.Compression, "compression", cfg.Compression, "initramfs compression: "+strings.Join([]string{image.CompressLZ4, image.CompressNone}, ", "))
	f.StringVar(&cfg.SquashfsCompression, "squashfs-compression", cfg.SquashfsCompression, "system image compression: lz4, zstd, none")
	img.AddCommand(build)
	return img
}

func selftestCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "selftest",
		Short: "Check the running plinth system and print a JSON report",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { os.Exit(boot.RunSelftest()) },
	}
}

func powerCommand(name, short string, sig unix.Signal) *cobra.Command {
	return &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := unix.Kill(1, sig); err != nil {
				return fmt.Errorf("signal PID 1: %w", err)
			}
			return nil
		},
	}
}
