package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/internal/layer0"
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
			return runPlatformJob("discovery", credsPath, func(creds *bundle.Credentials, log *slog.Logger) (service, error) {
				hc := host.NewClient(hostAPI, creds.TLS())
				cfg.Host = hc
				cfg.Controller = controller.NewHostClient(hc, creds.TLS())
				cfg.Logger = log
				return discovery.New(cfg)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&credsPath, "credentials", layer0.JobCredentials, "host certificate of the cluster CA")
	fl.StringVar(&hostAPI, "host-api", controller.DefaultConfig().HostAPI, "the local host API")
	fl.StringVar(&cfg.DNSAddr, "dns", cfg.DNSAddr, "address DNS is served on, UDP and TCP")
	fl.StringVar(&cfg.ResolvConf, "resolv-conf", cfg.ResolvConf, "resolvers for names outside .plinth")
	return cmd
}
