package main

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/internal/layer0"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/deployer"
	"github.com/plinth-os/plinth/services/router"
	"github.com/plinth-os/plinth/services/scheduler"
	"github.com/plinth-os/plinth/services/updater"
)

func schedulerCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "scheduler", Short: "The scheduler: keeps the formations placed on the hosts"}
	cmd.AddCommand(schedulerRunCommand())
	return cmd
}

func schedulerRunCommand() *cobra.Command {
	cfg := scheduler.DefaultConfig()
	var credsPath, hostAPI string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a scheduler (what the scheduler job runs)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return runPlatformJob("scheduler", credsPath, func(creds *bundle.Credentials, log *slog.Logger) (service, error) {
				hc := host.NewClient(hostAPI, creds.TLS())
				cc := controller.NewHostClient(hc, creds.TLS())
				cfg.Host = hc
				cfg.Controller = cc
				cfg.Dial = func(addr string) scheduler.HostAPI { return host.NewClient(addr, creds.TLS()) }
				dcfg := deployer.DefaultConfig()
				dcfg.Controller = cc
				dcfg.Retention = cc
				dcfg.Dial = func(addr string) deployer.HostAPI { return host.NewClient(addr, creds.TLS()) }
				dcfg.Logger = log.With("service", "deployer")
				dep, err := deployer.New(dcfg)
				if err != nil {
					return nil, err
				}
				ucfg := updater.DefaultConfig()
				ucfg.Controller = cc
				ucfg.Dial = func(addr string) updater.HostAPI { return host.NewClient(addr, creds.TLS()) }
				ucfg.OpenBundle = updater.RegistryBundles(net.JoinHostPort("127.0.0.1", strconv.Itoa(controller.RegistryPort)), imagestore.TLSTransport(creds.TLS()))
				ucfg.Logger = log.With("service", "updater")
				upd, err := updater.New(ucfg)
				if err != nil {
					return nil, err
				}
				// The deployer and the updater run while this scheduler
				// is the active one.
				cfg.WhileActive = func(ctx context.Context) {
					var wg sync.WaitGroup
					wg.Go(func() { dep.Lead(ctx) })
					wg.Go(func() { upd.Lead(ctx) })
					wg.Wait()
				}
				// One transport for every router: a client per drain would
				// leave a kept-alive connection behind each time.
				routers := router.Transport(creds.TLS())
				cfg.DialRouter = func(addr string) *router.Client { return router.NewClientTransport(addr, routers) }
				cfg.Logger = log
				return scheduler.New(cfg)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&credsPath, "credentials", layer0.JobCredentials, "host certificate of the cluster CA")
	fl.StringVar(&hostAPI, "host-api", controller.DefaultConfig().HostAPI, "the local host API")
	fl.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long a job being removed gets for its routed work to end")
	fl.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "how long the active scheduler's lease lasts unrenewed")
	return cmd
}
