package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/discovery"
)

func discoveryCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "discovery", Short: "The discovery agent: health checks of this host's services, DNS for .plinth names"}
	cmd.AddCommand(discoveryRunCommand())
	return cmd
}

func discoveryRunCommand() *cobra.Command {
	cfg := discovery.DefaultConfig()
	var credsPath, hostAPI string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the discovery agent (what the discovery job runs)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			creds, err := bundle.LoadCredentials(credsPath)
			if err != nil {
				return fmt.Errorf("%w (the discovery job gets it from hostd: job spec credentials = true)", err)
			}
			hc := host.NewClient(hostAPI, creds.TLS())
			cfg.Host = hc
			cfg.Controller = controller.NewHostClient(hc, creds.TLS())
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			a, err := discovery.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&credsPath, "credentials", jobCredentials, "host certificate of the cluster CA")
	fl.StringVar(&hostAPI, "host-api", controller.DefaultConfig().HostAPI, "the local host API")
	fl.StringVar(&cfg.DNSAddr, "dns", cfg.DNSAddr, "address DNS is served on, UDP and TCP")
	fl.StringVar(&cfg.ResolvConf, "resolv-conf", cfg.ResolvConf, "resolvers for names outside .plinth")
	return cmd
}
