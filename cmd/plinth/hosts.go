package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/services/controller"
)

func hostsCommand() *cobra.Command {
	f := &clusterFlags{}
	cmd := &cobra.Command{Use: "hosts", Short: "Cordon, uncordon and drain hosts"}
	f.register(cmd, true)
	flag := func(use, short string, cordon bool) *cobra.Command {
		return &cobra.Command{
			Use: use + " HOST", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				return withTimeout(30*time.Second, func(ctx context.Context) error {
					c, err := f.controllerClient(ctx)
					if err != nil {
						return err
					}
					h, err := c.Cordon(ctx, args[0], cordon)
					if err != nil {
						return err
					}
					if f.asJSON {
						return printJSON(h)
					}
					fmt.Printf("host %s (%s): %s\n", h.ID, h.Hostname, hostFlags(h))
					return nil
				})
			},
		}
	}
	var timeout time.Duration
	drain := &cobra.Command{
		Use:   "drain HOST",
		Short: "Cordon a host and move its jobs away, one at a time, each once its replacement is healthy",
		Long: "drain cordons HOST and has the scheduler move the jobs of its count formations\n" +
			"to other hosts, one at a time: it starts a replacement, waits until it is healthy,\n" +
			"then stops the old job. Omni formations' jobs (one per host) stay. The command\n" +
			"waits until no count formation has a job on HOST; uncordon ends a drain.",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return withTimeout(timeout, func(ctx context.Context) error {
				c, err := f.controllerClient(ctx)
				if err != nil {
					return err
				}
				h, err := c.Drain(ctx, args[0])
				if err != nil {
					return err
				}
				fmt.Printf("host %s (%s): draining\n", h.ID, h.Hostname)
				return waitDrained(ctx, c, h.ID)
			})
		},
	}
	drain.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for the jobs to move")
	cmd.AddCommand(flag("cordon", "Give a host no new placements; its jobs stay", true),
		flag("uncordon", "Let a host take placements again (ends a drain)", false), drain)
	return cmd
}

func hostFlags(h controller.Host) string {
	switch {
	case h.Draining:
		return "draining"
	case h.Cordoned:
		return "cordoned"
	}
	return "schedulable"
}

// waitDrained follows the placements until no count formation has one
// on the host, printing each move.
func waitDrained(ctx context.Context, c *controller.Client, hostID string) error {
	var index uint64
	left := -1
	for {
		ps, meta, err := c.Placements(ctx, controller.QueryOptions{Index: index, Wait: 30 * time.Second})
		if err != nil {
			return fmt.Errorf("follow the drain: %w", err)
		}
		fs, _, err := c.Formations(ctx, controller.QueryOptions{})
		if err != nil {
			return fmt.Errorf("follow the drain: %w", err)
		}
		omni := map[string]bool{}
		for _, f := range fs {
			omni[f.Name] = f.Omni
		}
		n := 0
		for _, p := range ps {
			if p.Host == hostID && !omni[p.Formation] {
				n++
			}
			if p.Replaces != "" && index > 0 && p.CreateIndex > index {
				fmt.Printf("  %s: replacement %s started\n", p.Replaces, p.ID)
			}
		}
		if n != left {
			fmt.Printf("  %d %s left to move\n", n, plural(n, "job", "jobs"))
			left = n
		}
		if n == 0 {
			fmt.Printf("host %s drained; `plinth hosts uncordon %s` takes it back\n", hostID, hostID)
			return nil
		}
		index = meta.Index
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
