package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/netd"
)

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
