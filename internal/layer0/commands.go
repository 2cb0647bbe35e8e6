// Package layer0 holds what both binaries that can run a plinth machine's
// layer 0 share: the dispatch to a container's init or to PID 1, and the
// commands PID 1 runs as services (netd, hostd, the self-check). The
// plinth binary (the CLI and the platform's services) and plinth-host
// (the initramfs's /init: only what runs before ready, and the re-exec
// every container start makes) both build from it.
package layer0

import (
	"context"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/host/labels"
	"github.com/plinth-os/plinth/image"
	boot "github.com/plinth-os/plinth/init"
	"github.com/plinth-os/plinth/init/config"
	"github.com/plinth-os/plinth/netd"
)

// JobCredentials is where hostd puts a platform job's certificate.
const JobCredentials = "/run/plinth/credentials.toml"

// PlatformBinary is the plinth binary's path on the system rootfs.
const PlatformBinary = image.PlatformBinaryPath

// BootstrapJobID is the job a machine config's bootstrap_expect makes
// hostd create: it runs `plinth cluster bootstrap --auto`.
const BootstrapJobID = "plinth-bootstrap"

// BootstrapStateDir keeps the auto bootstrap's step outputs on the host's
// data partition.
const BootstrapStateDir = "/var/lib/plinth/bootstrap"

// bootstrapJobSpec is that job: on the system rootfs with the host's
// network and a host certificate, restarted after a failure (with the
// job backoff) until it succeeds. Once it has exited well, its record
// stays, so hostd does not create it again, even after a reboot.
func bootstrapJobSpec(expect int) job.Spec {
	return job.Spec{
		ID:     BootstrapJobID,
		Rootfs: job.SystemRootfs,
		Cmd: []string{PlatformBinary, "cluster", "bootstrap", "--auto", "--expect", strconv.Itoa(expect),
			"--credentials", JobCredentials, "--state", filepath.Join(BootstrapStateDir, "state.json")},
		Network:     job.NetworkHost,
		Restart:     job.Restart{Policy: job.RestartOnFailure},
		Credentials: true,
		Volumes:     []job.Volume{{Source: BootstrapStateDir, Target: BootstrapStateDir}},
	}
}

func HostdCommand() *cobra.Command {
	cfg := host.DefaultConfig()
	var configPath, bundlePath string
	cmd := &cobra.Command{
		Use:   "hostd",
		Short: "Run the host agent: node identity, cluster membership (Serf), host API (mutual TLS)",
		Long: "hostd gives this host a stable node ID (kept in --state-dir), joins the cluster\n" +
			"described by the cluster bundle (plinth cluster init) through the --join seeds, and\n" +
			"serves the host API over HTTPS with client certificates from the cluster CA.\n" +
			"Without a bundle it makes a single-host one in --state-dir. It runs on any Linux\n" +
			"host as well as inside the plinth image, where init starts it from the machine\n" +
			"config's [cluster] section (--config). Flags override the config.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flags := cmd.Flags()
			if configPath != "" {
				m, err := config.Load(configPath)
				if err != nil {
					return err
				}
				fromMachineConfig(&cfg, m, flags.Changed)
				if !flags.Changed("bundle") {
					bundlePath = m.Cluster.Bundle
				}
			}
			if bundlePath == config.BundleFWCfg {
				bundlePath = boot.FwCfgBundle
			}
			if bundlePath != "" {
				b, err := bundle.Load(bundlePath)
				if err != nil {
					return err
				}
				cfg.Bundle = b
			}
			d, err := host.New(cfg, host.Options{
				Log:   boot.ConsoleLogger(os.Stdout),
				Ready: func() { daemon.SdNotify(false, daemon.SdNotifyReady) },
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
			defer stop()
			return d.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "machine config file (TOML); its hostname and [cluster] section are used")
	f.StringVar(&bundlePath, "bundle", "", `cluster bundle file from "plinth cluster init" ("fw_cfg": QEMU's opt/plinth/bundle)`)
	f.StringVar(&cfg.JoinToken, "token", "", "join token (plinth cluster token): fetch the bundle from a --join seed instead of --bundle;\nevery user can read a command line, so prefer [cluster] token in a --config file")
	f.StringSliceVar(&cfg.Join, "join", nil, "seed hosts to join, host[:port], comma-separated or repeated")
	f.StringVar(&cfg.Advertise, "advertise", "", "address to advertise: interface name, CIDR or IP (default: the default route's link)")
	f.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "where the node ID, gossip snapshot, kept or single-host bundle.toml and root's client.toml are kept")
	f.StringVar(&cfg.BindAddr, "bind", cfg.BindAddr, "IP the gossip sockets listen on")
	f.IntVar(&cfg.GossipPort, "gossip-port", cfg.GossipPort, "Serf port, UDP and TCP")
	f.IntVar(&cfg.APIPort, "api-port", cfg.APIPort, "host API port (HTTPS)")
	f.StringVar(&cfg.APIBind, "api-bind", "", "IP the host API listens on (default: every address)")
	f.StringVar(&cfg.RunDir, "run-dir", cfg.RunDir, "where the containers' runtime state is kept (a tmpfs)")
	f.BoolVar(&cfg.ContainerNetwork, "container-network", cfg.ContainerNetwork, "give bridge jobs a bridge, addresses and the VXLAN overlay (changes the host's links)")
	f.Func("container-subnet", "this host's /24 of the container range (default: picked from the node ID and kept)", func(v string) error {
		p, err := netip.ParsePrefix(v)
		cfg.ContainerSubnet = p
		return err
	})
	f.BoolVar(&cfg.JobDNS, "job-dns", cfg.JobDNS, "give jobs with a network an /etc/resolv.conf naming this host first (127.0.0.1, or the bridge's gateway),\nwhere a DNS server run with the host's network answers, then the host's own resolvers")
	f.StringVar(&cfg.Init, "init", cfg.Init, "static init run as every job's PID 1 (tini-static); empty runs commands as PID 1")
	f.StringSliceVar(&cfg.Roles, "roles", nil, "roles to advertise, comma-separated")
	f.StringToStringVar(&cfg.Labels, "labels", nil, "labels to advertise for formations' constraints, as zone=eu-1,disk=ssd")
	f.StringVar(&cfg.CgroupParent, "cgroup-parent", "", "cgroup the jobs' cgroups go under (default /plinth); one per hostd sharing a machine")
	f.StringVar(&cfg.VolumeRoot, "volume-root", "", "directory the jobs' volume sources are under (default /); one per hostd sharing a machine")
	f.StringVar(&cfg.Hostname, "hostname", "", "hostname to advertise (default: the kernel's)")
	return cmd
}

// fromMachineConfig copies the machine config's settings into cfg, except
// those set by a flag.
func fromMachineConfig(cfg *host.Config, m config.Machine, flagSet func(string) bool) {
	c := m.Cluster
	set := func(flag string, apply func()) {
		if !flagSet(flag) {
			apply()
		}
	}
	set("join", func() { cfg.Join = c.Join })
	set("token", func() { cfg.JoinToken = c.Token })
	set("advertise", func() { cfg.Advertise = c.Advertise })
	set("gossip-port", func() { cfg.GossipPort = c.GossipPort })
	set("api-port", func() { cfg.APIPort = c.APIPort })
	set("roles", func() { cfg.Roles = c.Roles })
	// The machine config's check parsed them already.
	set("labels", func() { cfg.Labels, _ = labels.FromList(c.Labels) })
	set("hostname", func() { cfg.Hostname = m.Hostname })
	// On a plinth machine the discovery agent serves DNS on every host,
	// so jobs get it as their resolver.
	set("job-dns", func() { cfg.JobDNS = true })
	if c.BootstrapExpect > 0 {
		cfg.StartJobs = append(cfg.StartJobs, bootstrapJobSpec(c.BootstrapExpect))
	}
}

func NetdCommand() *cobra.Command {
	var configPath, stateDir, runDir string
	var dhcpHostname bool
	cmd := &cobra.Command{
		Use:   "netd",
		Short: "Run the network daemon: links, addresses, routes, DHCP, DNS from the machine config",
		Long: "netd reads the [network] section of a machine config (--config; without it, DHCP on every\n" +
			"physical interface with carrier), applies it with netlink and keeps it applied. It reports\n" +
			"readiness on $NOTIFY_SOCKET and serves its status on <run-dir>/netd.sock (plinth net status).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := netd.DefaultConfig()
			if configPath != "" {
				m, err := config.Load(configPath)
				if err != nil {
					return err
				}
				cfg = m.Network
			}
			if cmd.Flags().Changed("state-dir") {
				cfg.StateDir = stateDir
			}
			if cmd.Flags().Changed("run-dir") {
				cfg.RunDir = runDir
			}
			log := boot.ConsoleLogger(os.Stdout)
			opts := netd.Options{
				Log:   log,
				Ready: func() { daemon.SdNotify(false, daemon.SdNotifyReady) },
				ReleaseOnStop: func() bool {
					_, err := os.Stat(filepath.Join(cfg.RunDir, netd.ShutdownMarker))
					return err == nil
				},
			}
			if dhcpHostname {
				opts.SetHostname = func(h string) error { return unix.Sethostname([]byte(h)) }
			}
			d, err := netd.New(cfg, opts)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
			defer stop()
			return d.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "machine config file (TOML); its [network] section is used")
	f.StringVar(&stateDir, "state-dir", netd.DefaultConfig().StateDir, "where DHCP leases are kept across restarts")
	f.StringVar(&runDir, "run-dir", netd.DefaultConfig().RunDir, "where resolv.conf and the status socket go")
	f.BoolVar(&dhcpHostname, "dhcp-hostname", false, "set the hostname a DHCP server offers when the config names none")
	return cmd
}

func SelftestCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "selftest",
		Short: "Check the running plinth system and print a JSON report",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { os.Exit(boot.RunSelftest()) },
	}
}
