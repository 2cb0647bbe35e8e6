package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	boot "github.com/plinth-os/plinth/init"
	"github.com/plinth-os/plinth/init/config"
	"github.com/plinth-os/plinth/netd"
)

func netdCommand() *cobra.Command {
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

func netCommand() *cobra.Command {
	net := &cobra.Command{Use: "net", Short: "Inspect the network daemon"}
	var socket string
	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Show links, addresses, DHCP leases and errors as netd sees them",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := netd.NewClient(socket).Status(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printNetStatus(st)
			return nil
		},
	}
	status.Flags().StringVar(&socket, "socket", filepath.Join(netd.DefaultConfig().RunDir, netd.SocketName), "netd status socket")
	status.Flags().BoolVar(&asJSON, "json", false, "print the raw status as JSON")
	net.AddCommand(status)
	return net
}

func printNetStatus(st netd.Status) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "LINK\tKIND\tSTATE\tMTU\tADDRESSES\tDHCP\tERROR")
	for _, l := range st.Links {
		state := "absent"
		switch {
		case l.Present && l.Up && l.Carrier:
			state = "up"
		case l.Present && l.Up:
			state = "no-carrier"
		case l.Present:
			state = "down"
		}
		if l.Master != "" {
			state += " (in " + l.Master + ")"
		}
		dhcp := "-"
		if l.DHCP != nil {
			dhcp = l.DHCP.State
			if !l.DHCP.Expires.IsZero() {
				dhcp += " until " + l.DHCP.Expires.Local().Format(time.TimeOnly)
			}
			if l.DHCP.LastError != "" && l.Error == "" {
				l.Error = fmt.Sprintf("dhcp: %s (%d attempts)", l.DHCP.LastError, l.DHCP.Attempts)
			}
		}
		addrs := strings.Join(l.Addresses, ",")
		if addrs == "" {
			addrs = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", l.Name, l.Kind, state, l.MTU, addrs, dhcp, l.Error)
	}
	w.Flush()
	fmt.Printf("ready: %v   dns: %s   search: %s   reconciles: %d\n", st.Ready, strings.Join(st.DNS, ","), strings.Join(st.Search, ","), st.Reconciles)
	if st.LastError != "" {
		fmt.Printf("last error: %s\n", st.LastError)
	}
}
