package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/updater"
)

func hostsCommand() *cobra.Command {
	f := &clusterFlags{}
	cmd := &cobra.Command{Use: "hosts", Short: "Cordon, uncordon and drain hosts"}
	f.register(cmd, true)
	flag := func(use, short string, cordon bool) *cobra.Command {
		return &cobra.Command{
			Use: use + " HOST", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
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
			return f.withController(timeout, func(ctx context.Context, c *controller.Client) error {
				h, err := c.Drain(ctx, args[0])
				if err != nil {
					return err
				}
				fmt.Printf("host %s (%s): draining\n", h.ID, h.Hostname)
				omni, err := waitDrained(ctx, c, h.ID)
				if err != nil {
					return err
				}
				creds, err := f.credentials()
				if err != nil {
					return err
				}
				if err := waitStopped(ctx, host.NewClient(h.API, creds.TLS()), h, omni); err != nil {
					return err
				}
				fmt.Printf("host %s drained; `plinth hosts uncordon %s` takes it back\n", h.ID, h.ID)
				return nil
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

// waitDrained follows the drain, printing how many jobs are left, and
// returns which formations are omni.
func waitDrained(ctx context.Context, c *controller.Client, hostID string) (map[string]bool, error) {
	return updater.WaitDrained(ctx, c, hostID, func(n int) {
		fmt.Printf("  %d %s left to move\n", n, plural(n, "job", "jobs"))
	})
}

// waitStopped waits until the drained host runs no job of a count
// formation: the scheduler forgets a placement before it stops its job.
// A host that does not answer (a dead host drained) has nothing to wait
// for.
func waitStopped(ctx context.Context, hc *host.Client, h controller.Host, omni map[string]bool) error {
	said := false
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		jobs, err := hc.Jobs(cctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("wait for the jobs on %s to stop: %w", h.ID, ctx.Err())
			}
			fmt.Printf("  %s does not answer (%v): its jobs are not waited for\n", h.ID, err)
			return nil
		}
		var running []string
		for _, j := range jobs {
			if f := j.Spec.Tags[controller.FormationTag]; f != "" && !omni[f] && j.Status.State == job.StateRunning {
				running = append(running, j.Spec.ID)
			}
		}
		if len(running) == 0 {
			return nil
		}
		if !said {
			fmt.Printf("  waiting for %s to stop\n", strings.Join(running, ", "))
			said = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s on %s to stop: %w", strings.Join(running, ", "), h.ID, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
