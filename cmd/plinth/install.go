package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/slots"
)

// hostInstallCommand is `plinth host install --disk DISK`.
func hostInstallCommand(withClient clientRunner) *cobra.Command {
	var opts host.InstallOptions
	var diskPath, bundle string
	cmd := &cobra.Command{
		Use:   "install --disk /dev/vdX [--bundle FILE|URL]",
		Short: "Install plinth onto a disk of a running host (booted from the network)",
		Long: "install sends a signed upgrade bundle (out/upgrade.bundle of `make image`) to the\n" +
			"host, which writes a new plinth disk onto --disk: an EFI system partition with\n" +
			"systemd-boot, slot A holding the bundle's image (committed), slot B empty, and a\n" +
			"data partition whose filesystem grows to the rest of the disk at its first boot.\n" +
			"The host checks the bundle (signature, architecture, digests) and the disk before\n" +
			"writing anything: a whole disk, not holding anything mounted or in use, and\n" +
			"blank unless --force. Then power the machine off and boot it from the disk: it\n" +
			"comes up as a new host, with a new node ID kept on the data partition.",
		Args: cobra.NoArgs,
		RunE: withClient(func(ctx context.Context, c *host.Client, _ []string) error {
			src, err := openBundle(ctx, bundle)
			if err != nil {
				return err
			}
			defer src.Close()
			info, err := c.Host(ctx)
			if err != nil {
				return err
			}
			start := time.Now()
			res, err := c.Install(ctx, diskPath, src, opts)
			if err != nil {
				return err
			}
			fmt.Printf("%s: plinth %s installed on %s (%.1f GiB) in %.1fs\n",
				info.Hostname, res.Version, res.Disk, float64(res.SizeBytes)/(1<<30), time.Since(start).Seconds())
			for _, p := range res.Partitions {
				fmt.Printf("  %-14s %-12s %8d MiB\n", p.Device, p.Name, p.SizeBytes>>20)
			}
			fmt.Println("Power the machine off and boot it from this disk (first in the firmware's boot order).")
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&diskPath, "disk", "", "the host's disk to install to, a whole disk such as /dev/vdb (required)")
	f.StringVar(&bundle, "bundle", "out/upgrade.bundle", "signed upgrade bundle: a file, or an http(s) URL")
	f.BoolVar(&opts.Force, "force", false, "overwrite a disk that is not blank (one in use is refused all the same)")
	f.StringVar(&opts.Cmdline, "cmdline", slots.DefaultOptions, "kernel command line of the disk's boot entries")
	cmd.MarkFlagRequired("disk")
	return cmd
}
