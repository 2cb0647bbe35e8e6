package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/labels"
	boot "github.com/plinth-os/plinth/init"
	"github.com/plinth-os/plinth/init/config"
)

func hostdCommand() *cobra.Command {
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

// defaultCredentials is where `plinth members` looks for client
// credentials when given none: $PLINTH_CREDENTIALS, else the file hostd
// keeps for root on its own host.
func defaultCredentials() string {
	if p := os.Getenv("PLINTH_CREDENTIALS"); p != "" {
		return p
	}
	return filepath.Join(host.DefaultStateDir, host.LocalCredentialsFile)
}

func membersCommand() *cobra.Command {
	var addr, credsPath string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's hosts as one host sees them",
		Long: "members asks one host's API (--host) for the members its gossip knows:\n" +
			"node ID, hostname, address, status (alive, leaving, left, failed), version, roles,\n" +
			"and for hosts installed on a disk their slots (slot:version:entry, * = booted)\n" +
			"and upgrade state.\n" +
			"Credentials come from --credentials, $PLINTH_CREDENTIALS, or the file hostd\n" +
			"keeps for root (" + filepath.Join(host.DefaultStateDir, host.LocalCredentialsFile) + ").",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			creds, err := bundle.LoadCredentials(credsPath)
			if err != nil {
				return fmt.Errorf("%w (pass --credentials with the client.toml from `plinth cluster init`)", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			members, err := host.NewClient(addr, creds.TLS()).Members(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(members)
			}
			printMembers(members)
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "host", "127.0.0.1", "host API address, host[:port]")
	cmd.Flags().StringVar(&credsPath, "credentials", defaultCredentials(), "client credentials file (client.toml)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the members as JSON")
	return cmd
}

func printMembers(members []host.Member) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tHOSTNAME\tADDRESS\tSTATUS\tVERSION\tROLES\tSLOTS\tUPGRADE")
	for _, m := range members {
		ip, _, err := net.SplitHostPort(m.Addr)
		if err != nil {
			ip = m.Addr
		}
		roles := strings.Join(m.Roles, ",")
		if roles == "" {
			roles = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Hostname, ip, m.Status, m.Version, roles, cmp.Or(m.Slots, "-"), cmp.Or(m.Upgrade, "-"))
	}
	w.Flush()
}
