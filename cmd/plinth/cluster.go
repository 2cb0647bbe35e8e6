package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host/bundle"
)

// Names of the files `plinth cluster init` writes into --dir.
const (
	bundleFileName      = "bundle.toml"
	credentialsFileName = "client.toml"
)

// defaultClientValidity is how long operator credentials last unless
// --valid says otherwise.
const defaultClientValidity = 365 * 24 * time.Hour

func clusterCommand() *cobra.Command {
	cluster := &cobra.Command{Use: "cluster", Short: "Make a cluster's secrets and operator credentials; bootstrap its platform; back up and restore its state; upgrade its hosts"}
	cluster.AddCommand(clusterInitCommand(), clusterCredentialsCommand(), clusterTokenCommand())
	cluster.AddCommand(clusterBackupCommands()...)
	cluster.AddCommand(clusterBootstrapCommand(), clusterUpgradeCommand())
	return cluster
}

func clusterInitCommand() *cobra.Command {
	var dir, name string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Make a new cluster: its bundle for the hosts and credentials for you",
		Long: "init makes a new cluster CA, gossip key and join token, and writes them into\n" +
			"--dir as " + bundleFileName + ", which every host of the cluster needs (the machine\n" +
			"config's cluster.bundle), and operator credentials \"admin\" as " + credentialsFileName + ",\n" +
			"for the plinth CLI. Both files are secret. Existing files are never replaced.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bundlePath := filepath.Join(dir, bundleFileName)
			credsPath := filepath.Join(dir, credentialsFileName)
			// Check both before writing either, so that a refusal leaves
			// nothing half made.
			for _, p := range []string{bundlePath, credsPath} {
				if _, err := os.Lstat(p); err == nil {
					return fmt.Errorf("%s already exists; remove it or pick another --dir", p)
				}
			}
			b, err := bundle.Create(name)
			if err != nil {
				return fmt.Errorf("%w (--name)", err)
			}
			creds, err := b.IssueClient("admin", defaultClientValidity)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("make bundle directory: %w", err)
			}
			if err := writeMarshaled(bundlePath, b); err != nil {
				return err
			}
			if err := writeMarshaled(credsPath, creds); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "made %v\n", b)
			fmt.Fprintf(out, "  %s  for every host of the cluster (machine config cluster.bundle); secret\n", bundlePath)
			fmt.Fprintf(out, "  %s  your credentials \"admin\" until %s; secret\n", credsPath, creds.Cert.Leaf.NotAfter.Format(time.DateOnly))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory to write "+bundleFileName+" and "+credentialsFileName+" into (made with mode 0700)")
	f.StringVar(&name, "name", "plinth", "cluster name: lowercase letters, digits and '-'")
	cmd.MarkFlagRequired("dir")
	return cmd
}

func clusterCredentialsCommand() *cobra.Command {
	var bundlePath, name, out string
	var valid time.Duration
	cmd := &cobra.Command{
		Use:   "credentials",
		Short: "Issue operator credentials from a cluster bundle",
		Long: "credentials issues a client certificate, named --name, from the cluster CA in\n" +
			"--bundle and writes it with the CA and its key to --out, for the plinth CLI.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := bundle.Load(bundlePath)
			if err != nil {
				return err
			}
			creds, err := b.IssueClient(name, valid)
			if err != nil {
				return err
			}
			if err := writeMarshaled(out, creds); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: credentials %q for cluster %q until %s; secret\n",
				out, name, b.Cluster, creds.Cert.Leaf.NotAfter.Format(time.DateOnly))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&bundlePath, "bundle", "", "the cluster's "+bundleFileName)
	f.StringVar(&name, "name", "", "whom the credentials are for (the certificate's common name)")
	f.StringVar(&out, "out", "", "file to write; must not exist")
	f.DurationVar(&valid, "valid", defaultClientValidity, "how long the credentials last (at most until the CA expires)")
	for _, required := range []string{"bundle", "name", "out"} {
		cmd.MarkFlagRequired(required)
	}
	return cmd
}

func clusterTokenCommand() *cobra.Command {
	var bundlePath string
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Print the cluster's join token (a secret: it fetches the whole bundle)",
		Long: "Print the join token of the bundle. A machine config with [cluster] token and join,\n" +
			"instead of bundle, makes hostd fetch the bundle from a seed's host API, verified\n" +
			"against the CA the token names, and keep it. Whoever holds the token can join the\n" +
			"cluster and read its CA key: treat it like bundle.toml.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := bundle.Load(bundlePath)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), b.JoinToken)
			return nil
		},
	}
	cmd.Flags().StringVar(&bundlePath, "bundle", "bundle.toml", "cluster bundle file")
	return cmd
}

func writeMarshaled(path string, v interface{ Marshal() ([]byte, error) }) error {
	data, err := v.Marshal()
	if err != nil {
		return err
	}
	return bundle.WriteFile(path, data)
}
