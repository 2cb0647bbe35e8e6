package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host/slots"
	"github.com/plinth-os/plinth/image"
	"github.com/plinth-os/plinth/image/disk"
	"github.com/plinth-os/plinth/internal/layer0"
	"github.com/plinth-os/plinth/version"
)

func rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "plinth",
		Short:         "plinth: an immutable self-hosting platform",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(versionCommand(), imageCommand(), vmCommand(), layer0.SelftestCommand(), layer0.NetdCommand(), netCommand(),
		layer0.HostdCommand(), membersCommand(), clusterCommand(), hostCommand(), controllerCommand(), servicesCommand(), discoveryCommand(),
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
	flavour := image.DefaultFlavour
	var oneBinary bool
	build := &cobra.Command{
		Use:   "build",
		Short: "Build vmlinuz, initrd.img, system.img and manifest.json",
		Long: "Build the boot artifacts into --out. The kernel package is downloaded once\n" +
			"with apt-get into --cache. By default the running plinth binary is the one\n" +
			"installed into the image.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.UseFlavour(flavour); err != nil {
				return err
			}
			if cfg.FirmwareDir != "" && !fileExists(cfg.FirmwareDir) {
				return fmt.Errorf("firmware directory %s does not exist", cfg.FirmwareDir)
			}
			if cfg.Binary == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find own binary (pass --binary): %w", err)
				}
				cfg.Binary = self
			}
			if cmd.Flags().Changed("one-binary") {
				cfg.OneBinary = oneBinary
			} else if cfg.OneBinary && cfg.HostBinary != "" {
				fmt.Fprintf(os.Stderr, "the %s flavour is one binary, for its size: plinth is /init and --host-binary is not installed (--one-binary=false installs it)\n", flavour)
			}
			if cfg.HostBinary == "" && !cfg.OneBinary {
				// make builds plinth-host beside plinth.
				if sib := filepath.Join(filepath.Dir(cfg.Binary), "plinth-host"); fileExists(sib) {
					cfg.HostBinary = sib
				} else {
					fmt.Fprintf(os.Stderr, "no %s: the image's /init is plinth itself, larger and slower to start (build plinth-host, or pass --host-binary)\n", sib)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			m, err := image.Build(ctx, cfg)
			if err != nil {
				return err
			}
			var total int64
			for _, f := range m.Files {
				fmt.Printf("%-16s %9.2f MB  sha256:%s\n", f.Name, float64(f.Size)/1e6, f.SHA256[:16])
				// initrd.img is system.img and initrd-slot.img in one.
				if f.Name != image.InitrdName {
					total += f.Size
				}
			}
			fmt.Printf("%-16s %9.2f MB  (plinth %s, kernel %s; initrd.img counted in its parts)\n", "total", float64(total)/1e6, m.Version, m.KernelRelease)
			if len(m.Firmware) > 0 {
				fmt.Printf("firmware: %d file(s) included\n", len(m.Firmware))
			}
			if len(m.FirmwareMissing) > 0 {
				var drivers []string
				for d, files := range m.FirmwareMissing {
					drivers = append(drivers, fmt.Sprintf("%s (%d)", d, len(files)))
				}
				sort.Strings(drivers)
				fmt.Printf("firmware not included (in Debian's non-free-firmware; give --firmware DIR): %s; see firmware_missing in %s\n",
					strings.Join(drivers, ", "), image.ManifestName)
			}
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&cfg.OutDir, "out", cfg.OutDir, "output directory")
	f.StringVar(&cfg.CacheDir, "cache", cfg.CacheDir, "kernel download cache")
	f.StringVar(&cfg.Binary, "binary", "", "plinth binary to install as /usr/bin/plinth (default: this one)")
	f.StringVar(&cfg.HostBinary, "host-binary", "", "layer-0 binary to install as /init (default: plinth-host beside --binary)")
	f.StringVar(&flavour, "kernel", flavour, "kernel flavour: cloud (virtual machines, cloud hardware) or generic (real machines)")
	f.BoolVar(&oneBinary, "one-binary", false, "install plinth as /init too, without plinth-host (default: the generic flavour's choice, for its size)")
	f.StringVar(&cfg.FirmwareDir, "firmware", "", "directory of firmware files (like /lib/firmware) to take the drivers' firmware from")
	f.StringVar(&cfg.Compression, "compression", cfg.Compression, "initramfs compression: "+strings.Join([]string{image.CompressLZ4, image.CompressNone}, ", "))
	f.StringVar(&cfg.SquashfsCompression, "squashfs-compression", cfg.SquashfsCompression, "system image compression: lz4, zstd, none")
	f.StringVar(&cfg.Version, "version", cfg.Version, "image version (os-release, manifest)")
	f.Uint64Var(&cfg.Serial, "serial", cfg.Serial, "build serial: an upgrade to a lower one is a downgrade")
	f.StringVar(&cfg.SignKey, "sign-key", "", "ed25519 private key (PEM) to sign the manifest with; also writes upgrade.bundle")
	f.StringSliceVar(&cfg.TrustedKeys, "trust", nil, "trusted-keys files the image trusts (default: the signing key)")
	f.StringVar(&cfg.TestFault, "test-fault", "", "tests only: build an image that fails on purpose ("+image.FaultHostd+" or "+image.FaultInitHang+")")
	img.AddCommand(build, keygenCommand(), signCommand(), diskCommand())
	return img
}

func keygenCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Make an ed25519 image signing key",
		Long: "keygen writes a new private key (PKCS #8 PEM) to --out and prints its public key\n" +
			"as a trusted-keys line: give that line's file to `image build --trust` so that\n" +
			"images trust the key. Keep the private key off the hosts.",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			pub, err := image.GenerateKey(out)
			if err != nil {
				return err
			}
			fmt.Println(image.FormatKey(pub, filepath.Base(out)))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the private key to (must not exist)")
	cmd.MarkFlagRequired("out")
	return cmd
}

func signCommand() *cobra.Command {
	var dir, key string
	cmd := &cobra.Command{
		Use:   "sign",
		Short: "Sign a build's manifest and write its upgrade bundle",
		Long: "sign adds --key's signature to DIR/manifest.sig (keeping other keys' signatures)\n" +
			"and writes DIR/upgrade.bundle. The manifest holds every artifact's sha256 and the\n" +
			"system image's dm-verity root hash, so the signature covers all of them.",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			priv, err := image.LoadKey(key)
			if err != nil {
				return err
			}
			man, err := os.ReadFile(filepath.Join(dir, image.ManifestName))
			if err != nil {
				return err
			}
			old, err := os.ReadFile(filepath.Join(dir, image.SignatureName))
			if err != nil && !os.IsNotExist(err) {
				return err
			}
			sig, err := image.SignManifest(man, old, priv)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, image.SignatureName), sig, 0o644); err != nil {
				return err
			}
			return image.WriteBundle(dir, filepath.Join(dir, image.BundleName))
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "out", "build directory (manifest.json and the artifacts)")
	cmd.Flags().StringVar(&key, "key", "", "ed25519 private key (PEM) from `plinth image keygen`")
	cmd.MarkFlagRequired("key")
	return cmd
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

func diskCommand() *cobra.Command {
	var dir, out, cmdline, loader string
	var size int64
	cmd := &cobra.Command{
		Use:   "disk",
		Short: "Write an installable disk image from a signed build",
		Long: "disk writes a raw GPT disk image: an EFI system partition with systemd-boot and\n" +
			"a boot entry for slot A, slot A holding the build in --dir (verity-protected\n" +
			"system image, signed manifest), slot B empty for the first upgrade, and an ext4\n" +
			"data partition (PLINTH-DATA, /var) on the rest. It boots under UEFI; write it\n" +
			"to a disk with dd, or boot it in QEMU with OVMF.",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			b, err := image.LoadBuild(dir)
			if err != nil {
				return err
			}
			keys, err := os.ReadFile(filepath.Join(dir, image.TrustedKeysName))
			if err != nil {
				return err
			}
			trusted, err := image.ParseTrustedKeys(keys)
			if err != nil {
				return err
			}
			// The disk's own stage 1 will check the slot with these keys.
			m, err := b.Verify(trusted, image.Arch)
			if err != nil {
				return fmt.Errorf("build in %s: %w", dir, err)
			}
			bl, err := os.ReadFile(loader)
			if err != nil {
				return fmt.Errorf("EFI boot loader: %w (apt-get install systemd-boot-efi)", err)
			}
			spec, err := slots.NewDiskSpec(b, m, bl, cmdline, filepath.Join(dir, image.SystemName))
			if err != nil {
				return err
			}
			spec.Size = size
			parts, err := disk.Write(out, spec)
			if err != nil {
				return err
			}
			for _, p := range parts {
				fmt.Printf("%-12s %2d %8d MiB\n", p.Name, p.Index, p.Size>>20)
			}
			fmt.Printf("%s: plinth %s in slot A\n", out, m.Version)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "out", "signed build directory (make image)")
	f.StringVar(&out, "out", "out/disk.img", "disk image file, or a block device")
	f.Int64Var(&size, "size", 2<<30, "disk image size in bytes (0 for a block device's own)")
	f.StringVar(&cmdline, "cmdline", slots.DefaultOptions, "kernel command line of the boot entries")
	f.StringVar(&loader, "boot-loader", image.DefaultConfig().SystemdBoot, "systemd-boot EFI binary")
	return cmd
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}
