package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/services/controller"
)

func formationsCommand() *cobra.Command {
	f := &clusterFlags{}
	cmd := &cobra.Command{
		Use:   "formations",
		Short: "List, apply, scale and delete formations: what the scheduler keeps running",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				fs, _, err := c.Formations(ctx, controller.QueryOptions{})
				if err != nil {
					return err
				}
				if f.asJSON {
					return printJSON(fs)
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tKIND\tRUNNING\tCONSTRAINTS\tCOMMAND\tREASON")
				for _, f := range fs {
					kind, want := "count", strconv.Itoa(f.Count)
					if f.Omni {
						kind, want = "omni", strconv.Itoa(f.Status.Desired)
					}
					var cons []string
					for k, v := range f.Constraints {
						cons = append(cons, k+"="+v)
					}
					fmt.Fprintf(w, "%s\t%s\t%d/%s\t%s\t%s\t%s\n", f.Name, kind, f.Status.Running, want,
						strings.Join(cons, ","), strings.Join(f.Job.Cmd, " "), f.Status.Reason)
				}
				return w.Flush()
			})
		},
	}
	f.register(cmd, true)
	cmd.AddCommand(&cobra.Command{
		Use:   "apply FILE",
		Short: "Create or replace the formation in FILE (JSON, as GET /v1/formations/NAME gives it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var fm controller.Formation
			dec := json.NewDecoder(strings.NewReader(string(data)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&fm); err != nil {
				return fmt.Errorf("%s: %w (see docs/scheduler.md for the fields)", args[0], err)
			}
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				out, err := c.PutFormation(ctx, fm, nil)
				if err != nil {
					return err
				}
				fmt.Printf("formation %s applied (index %d); plinth status shows it placed\n", out.Name, out.ModifyIndex)
				return nil
			})
		},
	}, &cobra.Command{
		Use:   "scale NAME COUNT",
		Short: "Set a count formation's number of instances",
		Args:  cobra.ExactArgs(2),
		RunE: func(_ *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 0 {
				return fmt.Errorf("count %q: give a number, 0 or more", args[1])
			}
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				// Read, change, write with compare-and-set: a concurrent
				// change of the formation is not overwritten.
				for {
					fm, err := c.Formation(ctx, args[0], controller.QueryOptions{Consistent: true})
					if err != nil {
						return err
					}
					if fm.Omni {
						return fmt.Errorf("formation %s is omni (one per eligible host): it has no count", fm.Name)
					}
					fm.Count = n
					cas := fm.ModifyIndex
					if _, err := c.PutFormation(ctx, fm, &cas); controller.IsConflict(err) {
						continue
					} else if err != nil {
						return err
					}
					fmt.Printf("formation %s: count %d\n", fm.Name, n)
					return nil
				}
			})
		},
	}, &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a formation; the scheduler stops its jobs",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				if err := c.DeleteFormation(ctx, args[0], nil); err != nil {
					return err
				}
				fmt.Printf("formation %s deleted; the scheduler stops its jobs\n", args[0])
				return nil
			})
		},
	})
	return cmd
}
