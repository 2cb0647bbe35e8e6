package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/internal/layer0"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/registry"
)

func registryCommand() *cobra.Command {
	f := &clusterFlags{}
	cmd := &cobra.Command{Use: "registry", Short: "The image registry: an OCI distribution API on every host"}
	f.register(cmd, true)
	cmd.AddCommand(registryRunCommand(), registryTokenCommand(f))
	return cmd
}

func registryRunCommand() *cobra.Command {
	cfg := registry.DefaultConfig()
	var credsPath, hostAPI string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a host's registry (what the registry job runs)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return runPlatformJob("registry", credsPath, func(creds *bundle.Credentials, log *slog.Logger) (service, error) {
				hc := host.NewClient(hostAPI, creds.TLS())
				cfg.Controller = controller.NewHostClient(hc, creds.TLS())
				cfg.TLS = creds.ServerTLS()
				cfg.PeerTLS = creds.TLS()
				cfg.Host = hc
				cfg.Logger = log
				return registryService{cfg: cfg, host: hc, log: log}, nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&credsPath, "credentials", layer0.JobCredentials, "host certificate of the cluster CA")
	fl.StringVar(&hostAPI, "host-api", controller.DefaultConfig().HostAPI, "the local host API")
	fl.StringVar(&cfg.Addr, "addr", cfg.Addr, "address the registry listens on")
	fl.StringVar(&cfg.Dir, "dir", cfg.Dir, "where the blobs are kept")
	return cmd
}

// registryService learns its host's ID from the host API, then runs the
// registry.
type registryService struct {
	cfg  registry.Config
	host *host.Client
	log  *slog.Logger
}

func (s registryService) Run(ctx context.Context) error {
	for {
		info, err := s.host.Host(ctx)
		if err == nil {
			s.cfg.HostID = info.ID
			break
		}
		s.log.Warn("local host API", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	r, err := registry.New(s.cfg)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

func registryTokenCommand(f *clusterFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "token",
		Short: "Make a new registry token (the old one stops working) and print it",
		Long: `Make a new token for clients that have no cluster certificate (docker,
podman, skopeo): they log in with any user name and the token as password.
Only its hash is kept, so it is printed once; run the command again to
replace it.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				b := make([]byte, 24)
				rand.Read(b)
				token := "plinth_" + hex.EncodeToString(b)
				sum := sha256.Sum256([]byte(token))
				if _, err := c.PutSetting(ctx, registry.TokenSetting, hex.EncodeToString(sum[:]), nil); err != nil {
					return err
				}
				fmt.Println(token)
				return nil
			})
		},
	}
}
