package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/services/controller"
)

// settingsCommand reads and writes the cluster's settings (docs/
// operator-guide.md lists them).
func settingsCommand() *cobra.Command {
	f := &clusterFlags{}
	cmd := &cobra.Command{
		Use:   "settings",
		Short: "List the cluster's settings, or get, set and unset one",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				all, _, err := c.Settings(ctx, controller.QueryOptions{})
				if err != nil {
					return err
				}
				if f.asJSON {
					return printJSON(all)
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY\tVALUE")
				for _, s := range all {
					v := s.Value
					if len(v) > 60 {
						v = fmt.Sprintf("(%d bytes)", len(v))
					}
					fmt.Fprintf(tw, "%s\t%s\n", s.Key, v)
				}
				return tw.Flush()
			})
		},
	}
	f.register(cmd, true)
	one := func(use, short string, n int, do func(ctx context.Context, c *controller.Client, args []string) error) *cobra.Command {
		return &cobra.Command{Use: use, Short: short, Args: cobra.ExactArgs(n), RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error { return do(ctx, c, args) })
		}}
	}
	cmd.AddCommand(
		one("get KEY", "Print a setting's value", 1, func(ctx context.Context, c *controller.Client, args []string) error {
			s, _, err := c.Setting(ctx, args[0], controller.QueryOptions{})
			if controller.IsNotFound(err) {
				return fmt.Errorf("setting %s is not set (its default applies)", args[0])
			}
			if err == nil {
				fmt.Println(s.Value)
			}
			return err
		}),
		one("set KEY VALUE", "Set a setting", 2, func(ctx context.Context, c *controller.Client, args []string) error {
			_, err := c.PutSetting(ctx, args[0], args[1], nil)
			return err
		}),
		one("unset KEY", "Remove a setting: its default applies again", 1, func(ctx context.Context, c *controller.Client, args []string) error {
			err := c.DeleteSetting(ctx, args[0], nil)
			if controller.IsNotFound(err) {
				return nil
			}
			return err
		}),
	)
	return cmd
}
