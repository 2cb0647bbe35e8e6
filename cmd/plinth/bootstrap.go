package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/bootstrap"
	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/internal/layer0"
	"github.com/plinth-os/plinth/manifests"
	"github.com/plinth-os/plinth/services/controller"
)

func clusterBootstrapCommand() *cobra.Command {
	f := &clusterFlags{}
	var (
		expect       int
		timeout      time.Duration
		steps        []string
		statePath    string
		manifestPath string
		auto         bool
		binary       string
	)
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Start the platform on a new cluster: controller, discovery, scheduler",
		Long: "bootstrap runs the platform manifest (manifests/platform.toml, built in) against the\n" +
			"cluster of --host: it waits for --expect alive hosts, starts the controller on the\n" +
			"hosts with the controller role through their host APIs, waits for quorum, starts\n" +
			"discovery on every host and the scheduler on the controller hosts, then registers\n" +
			"their formations so the scheduler adopts the running jobs. Each step is idempotent;\n" +
			"--steps runs some again, with the outputs of the others from --state.\n" +
			"A bootstrapped cluster is refused, unless --steps is given.\n\n" +
			"--auto is what a machine config's bootstrap_expect runs on every host: only the\n" +
			"controller host with the lowest node ID goes on, the others exit.",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if expect < 1 {
				return fmt.Errorf("give --expect N: how many hosts to wait for (all of those booting now)")
			}
			if len(f.controllers) > 0 {
				return fmt.Errorf("--controller does not apply: bootstrap starts the controllers, and finds them through --host")
			}
			creds, err := f.credentials()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			seed := host.NewClient(f.hostAddr, creds.TLS())
			m := manifests.Platform
			if manifestPath != "" {
				if m, err = os.ReadFile(manifestPath); err != nil {
					return err
				}
			}
			manifest, err := bootstrap.ParseManifest(cmp.Or(manifestPath, "platform.toml"), m)
			if err != nil {
				return err
			}
			by := "plinth cluster bootstrap"
			if auto {
				info, mine, err := autoBootstrapHost(ctx, seed, expect, timeout)
				if err != nil || !mine {
					return err
				}
				by = "host " + info.ID + " (" + info.Hostname + ")"
			}
			if len(steps) == 0 {
				if done, err := alreadyBootstrapped(ctx, seed, creds.TLS()); err != nil || done {
					if auto {
						return nil
					}
					return err
				}
			}
			p := &bootstrap.Platform{Seed: seed, TLS: creds.TLS(), Binary: binary, By: by}
			r := &bootstrap.Runner{
				Actions: p.Actions(),
				Vars:    map[string]string{"expect": strconv.Itoa(expect), "timeout": timeout.String()},
				Steps:   steps,
				State:   bootstrap.FileState{Path: statePath},
				Out:     os.Stdout,
			}
			start := time.Now()
			if _, err := r.Run(ctx, manifest); err != nil {
				return err
			}
			fmt.Printf("platform bootstrapped in %s; see plinth status\n", time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f.register(cmd, false)
	fl := cmd.Flags()
	fl.IntVar(&expect, "expect", 0, "how many alive hosts to wait for")
	fl.DurationVar(&timeout, "timeout", 10*time.Minute, "how long each waiting step waits")
	fl.StringSliceVar(&steps, "steps", nil, "run only these steps (IDs from the manifest)")
	fl.StringVar(&statePath, "state", defaultBootstrapState(), "file that keeps each step's outputs")
	fl.StringVar(&manifestPath, "manifest", "", "manifest file (default: the built-in platform.toml)")
	fl.StringVar(&binary, "binary", layer0.PlatformBinary, "the plinth binary's path on the hosts' system rootfs")
	fl.BoolVar(&auto, "auto", false, "run only on the lowest-ID controller host (what bootstrap_expect runs)")
	return cmd
}

func defaultBootstrapState() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "plinth", "bootstrap.json")
}

// autoBootstrapHost waits until expect hosts are alive and says whether
// this host is the one to bootstrap: the controller host with the lowest
// node ID.
func autoBootstrapHost(ctx context.Context, seed *host.Client, expect int, timeout time.Duration) (host.HostInfo, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		info, ierr := seed.Host(ctx)
		ms, merr := seed.Members(ctx)
		if ierr == nil && merr == nil {
			var alive, voters []string
			for _, m := range ms {
				if m.Status == host.StatusAlive {
					alive = append(alive, m.ID)
					if controller.IsControllerHost(m) {
						voters = append(voters, m.ID)
					}
				}
			}
			if len(alive) >= expect {
				slices.Sort(voters)
				switch {
				case len(voters) == 0:
					return info, false, fmt.Errorf("bootstrap_expect: none of the %d alive hosts has the %q role", len(alive), controller.RoleController)
				case voters[0] != info.ID:
					fmt.Printf("host %s bootstraps the cluster; nothing to do here\n", voters[0])
					return info, false, nil
				}
				return info, true, nil
			}
		}
		select {
		case <-ctx.Done():
			return info, false, fmt.Errorf("bootstrap_expect: fewer than %d hosts alive after %s", expect, timeout)
		case <-time.After(time.Second):
		}
	}
}

// alreadyBootstrapped reports whether the cluster's controller says it
// was bootstrapped, as an error that says so for the operator. A cluster
// whose controller does not answer is taken as new: its steps are
// idempotent anyway.
func alreadyBootstrapped(ctx context.Context, seed *host.Client, tlsConfig *tls.Config) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, ok, err := bootstrap.Bootstrapped(ctx, controller.NewHostClient(seed, tlsConfig))
	if err != nil || !ok {
		return false, nil
	}
	return true, fmt.Errorf("the cluster is already bootstrapped (%s): nothing to do; to run steps again anyway, name them with --steps", s.Value)
}
