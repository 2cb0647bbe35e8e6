package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
)

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
