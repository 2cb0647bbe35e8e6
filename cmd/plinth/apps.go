package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/services/appspec"
	"github.com/plinth-os/plinth/services/controller"
)

// appFlags are the cluster flags and the app a command works on.
type appFlags struct {
	clusterFlags
	app string
}

func (f *appFlags) register(cmd *cobra.Command) {
	f.clusterFlags.register(cmd, true)
	cmd.PersistentFlags().StringVarP(&f.app, "app", "a", "", "the app (default: app in ./plinth.toml)")
}

// appFile is where commands find the app's declaration by default.
const appFile = "plinth.toml"

// name is the app: --app, else the app ./plinth.toml names.
func (f *appFlags) name() (string, error) {
	if f.app != "" {
		return f.app, nil
	}
	data, err := os.ReadFile(appFile)
	if errors.Is(err, os.ErrNotExist) {
		return "", errors.New("which app? give -a APP, or run in a directory whose plinth.toml says app = \"NAME\"")
	}
	if err != nil {
		return "", err
	}
	file, err := appspec.ParseFile(appFile, data)
	if err != nil {
		return "", err
	}
	if file.App == "" {
		return "", fmt.Errorf("%s names no app: add app = \"NAME\", or give -a APP", appFile)
	}
	return file.App, nil
}

// withApp runs do with the controller and the app, which must exist.
func (f *appFlags) withApp(d time.Duration, do func(ctx context.Context, c *controller.Client, app controller.App) error) error {
	name, err := f.name()
	if err != nil {
		return err
	}
	return f.withController(d, func(ctx context.Context, c *controller.Client) error {
		app, err := c.App(ctx, name, controller.QueryOptions{})
		if controller.IsNotFound(err) {
			// A follower may not have it yet: ask the leader.
			app, err = c.App(ctx, name, controller.QueryOptions{Consistent: true})
		}
		if controller.IsNotFound(err) {
			return fmt.Errorf("no app %q (plinth apps lists them; plinth apps create %s makes it)", name, name)
		}
		if err != nil {
			return err
		}
		return do(ctx, c, app)
	})
}

// appReleases are app's releases, newest first.
func appReleases(ctx context.Context, c *controller.Client, app string) ([]controller.Release, error) {
	all, _, err := c.Releases(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, err
	}
	out := slices.DeleteFunc(all, func(r controller.Release) bool { return r.App != app })
	slices.SortFunc(out, func(a, b controller.Release) int { return b.Version - a.Version })
	return out, nil
}

// currentRelease is the app's serving release, or its last one made
// when none serves yet.
func currentRelease(ctx context.Context, c *controller.Client, app controller.App) (controller.Release, error) {
	v := app.Release
	if v == 0 {
		v = app.LastRelease
	}
	if v == 0 {
		return controller.Release{}, fmt.Errorf("%s has no release yet: plinth deploy -a %s --image FILE|REF", app.Name, app.Name)
	}
	return c.Release(ctx, app.Name, v, controller.QueryOptions{})
}

func appsCommand() *cobra.Command {
	f := &appFlags{}
	cmd := &cobra.Command{
		Use:   "apps",
		Short: "List, create, inspect and destroy apps",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error { return listApps(ctx, c, f) })
		},
	}
	f.register(cmd)
	list := &cobra.Command{Use: "list", Short: "List the apps", Args: cobra.NoArgs, RunE: cmd.RunE}
	var strategy string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Make an app (deploy to it next)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				_, err := c.PutApp(ctx, controller.App{Name: args[0], Strategy: strategy}, new(uint64))
				if controller.IsConflict(err) {
					return fmt.Errorf("app %s exists already", args[0])
				}
				if err != nil {
					return err
				}
				fmt.Printf("app %s made; deploy it with: plinth deploy -a %s --image FILE|REF\n", args[0], args[0])
				return nil
			})
		},
	}
	create.Flags().StringVar(&strategy, "strategy", "", "deploys' default strategy: rolling or all-at-once")
	info := &cobra.Command{
		Use:   "info",
		Short: "Show an app: its release, scale, routes and last deploy",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				return appInfo(ctx, c, f, app)
			})
		},
	}
	var confirm string
	destroy := &cobra.Command{
		Use:   "destroy",
		Short: "Remove an app with its releases, routes and instances",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				if confirm != app.Name {
					return fmt.Errorf("this removes %s, its releases, routes and instances: give --confirm %s", app.Name, app.Name)
				}
				if err := c.DestroyApp(ctx, app.Name, &app.ModifyIndex); err != nil {
					return err
				}
				fmt.Printf("app %s destroyed; its instances stop now\n", app.Name)
				return nil
			})
		},
	}
	destroy.Flags().StringVar(&confirm, "confirm", "", "the app's name, to confirm")
	cmd.AddCommand(list, create, info, destroy)
	return cmd
}

func listApps(ctx context.Context, c *controller.Client, f *appFlags) error {
	apps, _, err := c.Apps(ctx, controller.QueryOptions{})
	if err != nil {
		return err
	}
	if f.asJSON {
		return printJSON(apps)
	}
	if len(apps) == 0 {
		fmt.Println("no apps: plinth apps create NAME")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tRELEASE\tSCALE\tCREATED")
	for _, a := range apps {
		rel := "-"
		if a.Release > 0 {
			rel = "v" + strconv.Itoa(a.Release)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Name, rel, scaleString(a, nil), age(a.Created))
	}
	return tw.Flush()
}

// scaleString says "web=2 worker=1" for the types of r (or those the app
// scales, without r).
func scaleString(a controller.App, r *controller.Release) string {
	types := slices.Sorted(maps.Keys(a.Scale))
	if r != nil {
		types = slices.Sorted(maps.Keys(r.Processes))
	}
	var parts []string
	for _, t := range types {
		parts = append(parts, fmt.Sprintf("%s=%d", t, a.ScaleOf(t)))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func appInfo(ctx context.Context, c *controller.Client, f *appFlags, app controller.App) error {
	var rel *controller.Release
	if r, err := currentRelease(ctx, c, app); err == nil {
		rel = &r
	}
	routes, _, err := c.Routes(ctx, controller.QueryOptions{})
	if err != nil {
		return err
	}
	var mine []controller.Route
	if rel != nil {
		for _, rt := range routes {
			for typ := range rel.Processes {
				if rt.Service == controller.ServiceName(app.Name, typ) {
					mine = append(mine, rt)
				}
			}
		}
	}
	deploys, err := appDeploys(ctx, c, app.Name)
	if err != nil {
		return err
	}
	if f.asJSON {
		out := map[string]any{"app": app, "release": rel, "routes": mine}
		if len(deploys) > 0 {
			out["last_deploy"] = deploys[0]
		}
		return printJSON(out)
	}
	fmt.Printf("app:       %s\n", app.Name)
	fmt.Printf("created:   %s ago\n", age(app.Created))
	if rel == nil {
		fmt.Println("release:   none yet")
		return nil
	}
	serving := "serving"
	if app.Release != rel.Version {
		serving = "not deployed yet"
	}
	fmt.Printf("release:   v%d (%s): %s\n", rel.Version, serving, rel.Description)
	fmt.Printf("image:     %s\n", rel.Image)
	fmt.Printf("scale:     %s\n", scaleString(app, rel))
	fmt.Printf("strategy:  %s\n", cmp.Or(app.Strategy, controller.StrategyRolling))
	for _, typ := range slices.Sorted(maps.Keys(rel.Processes)) {
		p := rel.Processes[typ]
		cmd := "(the image's entrypoint)"
		if len(p.Cmd) > 0 {
			cmd = strings.Join(p.Cmd, " ")
		}
		port := ""
		if p.Port != 0 {
			port = fmt.Sprintf(" port %d, service %s", p.Port, controller.ServiceName(app.Name, typ))
		}
		fmt.Printf("process:   %s: %s%s\n", typ, cmd, port)
	}
	for _, rt := range mine {
		fmt.Printf("route:     %s %s %s\n", rt.ID, rt.Type, routeMatch(rt))
	}
	if len(deploys) > 0 {
		d := deploys[0]
		fmt.Printf("deploy:    v%d %s %s ago", d.To, d.State, age(d.Started))
		if d.Reason != "" {
			fmt.Printf(": %s", d.Reason)
		}
		fmt.Println()
	}
	return nil
}

// appDeploys are app's deploys, newest first.
func appDeploys(ctx context.Context, c *controller.Client, app string) ([]controller.Deploy, error) {
	all, _, err := c.Deploys(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, err
	}
	out := slices.DeleteFunc(all, func(d controller.Deploy) bool { return d.App != app })
	slices.SortFunc(out, func(a, b controller.Deploy) int { return b.To - a.To })
	return out, nil
}

func releasesCommand() *cobra.Command {
	f := &appFlags{}
	cmd := &cobra.Command{
		Use:   "releases",
		Short: "List an app's releases, newest first",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				rels, err := appReleases(ctx, c, app.Name)
				if err != nil {
					return err
				}
				if f.asJSON {
					return printJSON(rels)
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "RELEASE\tCREATED\tIMAGE\tDESCRIPTION")
				for _, r := range rels {
					mark := ""
					if r.Version == app.Release {
						mark = " (serving)"
					}
					_, digest, _ := strings.Cut(r.Image, "@sha256:")
					fmt.Fprintf(tw, "v%d%s\t%s\t%.12s\t%s\n", r.Version, mark, age(r.Created), digest, r.Description)
				}
				return tw.Flush()
			})
		},
	}
	f.register(cmd)
	return cmd
}

func rollbackCommand() *cobra.Command {
	f := &appFlags{}
	var df deployFlags
	cmd := &cobra.Command{
		Use:   "rollback [vN]",
		Short: "Deploy an earlier release's image and config again, as a new release",
		Long: `Make a new release from an earlier one (default: the one that served before
the serving one) and deploy it. Nothing is rebuilt: the image is the one the
old release ran.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withApp(df.timeout(), func(ctx context.Context, c *controller.Client, app controller.App) error {
				from, err := rollbackTarget(ctx, c, app, args)
				if err != nil {
					return err
				}
				q := df.request()
				q.From = from
				return deployRelease(ctx, c, app.Name, q, df.detach)
			})
		},
	}
	f.register(cmd)
	df.register(cmd)
	return cmd
}

// rollbackTarget is the release to roll back to: the argument, or the
// one the last successful deploy before the serving release's moved
// from.
func rollbackTarget(ctx context.Context, c *controller.Client, app controller.App, args []string) (int, error) {
	if len(args) == 1 {
		v, err := strconv.Atoi(strings.TrimPrefix(args[0], "v"))
		if err != nil || v < 1 {
			return 0, fmt.Errorf("release %q: give a release such as v3 (plinth releases -a %s)", args[0], app.Name)
		}
		if v == app.Release {
			return 0, fmt.Errorf("v%d serves already", v)
		}
		return v, nil
	}
	if app.Release == 0 {
		return 0, fmt.Errorf("%s has no serving release to roll back from", app.Name)
	}
	deploys, err := appDeploys(ctx, c, app.Name)
	if err != nil {
		return 0, err
	}
	for _, d := range deploys {
		if d.To == app.Release && d.State == controller.DeployDone && d.From > 0 {
			return d.From, nil
		}
	}
	return 0, fmt.Errorf("no release served before v%d: give one (plinth releases -a %s)", app.Release, app.Name)
}

func configCommand() *cobra.Command {
	f := &appFlags{}
	var df deployFlags
	show := func(ctx context.Context, c *controller.Client, app controller.App) error {
		r, err := currentRelease(ctx, c, app)
		if err != nil {
			return err
		}
		if f.asJSON {
			return printJSON(r.Config)
		}
		for _, k := range slices.Sorted(maps.Keys(r.Config)) {
			fmt.Printf("%s=%s\n", k, r.Config[k])
		}
		return nil
	}
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show and change an app's config vars (each change is a new release, deployed)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(30*time.Second, show)
		},
	}
	f.register(cmd)
	df.register(cmd)
	showCmd := &cobra.Command{Use: "show", Short: "Show every config var", Args: cobra.NoArgs, RunE: cmd.RunE}
	get := &cobra.Command{
		Use:   "get KEY",
		Short: "Print one config var's value",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				r, err := currentRelease(ctx, c, app)
				if err != nil {
					return err
				}
				v, ok := r.Config[args[0]]
				if !ok {
					return fmt.Errorf("%s has no config var %s", app.Name, args[0])
				}
				fmt.Println(v)
				return nil
			})
		},
	}
	set := &cobra.Command{
		Use:   "set KEY=VALUE...",
		Short: "Set config vars: a new release, deployed",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			vars := map[string]string{}
			for _, a := range args {
				k, v, ok := strings.Cut(a, "=")
				if !ok {
					return fmt.Errorf("%q: give KEY=VALUE", a)
				}
				if err := controller.CheckConfigVar(k, v); err != nil {
					return err
				}
				vars[k] = v
			}
			return f.withApp(df.timeout(), func(ctx context.Context, c *controller.Client, app controller.App) error {
				q := df.request()
				q.Set = vars
				return deployRelease(ctx, c, app.Name, q, df.detach)
			})
		},
	}
	unset := &cobra.Command{
		Use:   "unset KEY...",
		Short: "Remove config vars: a new release, deployed",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withApp(df.timeout(), func(ctx context.Context, c *controller.Client, app controller.App) error {
				r, err := currentRelease(ctx, c, app)
				if err != nil {
					return err
				}
				for _, k := range args {
					if _, ok := r.Config[k]; !ok {
						return fmt.Errorf("%s has no config var %s (plinth config -a %s)", app.Name, k, app.Name)
					}
				}
				q := df.request()
				q.Unset = args
				return deployRelease(ctx, c, app.Name, q, df.detach)
			})
		},
	}
	cmd.AddCommand(showCmd, get, set, unset, configCheckCommand())
	return cmd
}

func deploysCommand() *cobra.Command {
	f := &appFlags{}
	cmd := &cobra.Command{
		Use:   "deploys",
		Short: "List an app's deploys, newest first",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				deploys, err := appDeploys(ctx, c, app.Name)
				if err != nil {
					return err
				}
				if f.asJSON {
					return printJSON(deploys)
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DEPLOY\tFROM\tTO\tSTRATEGY\tSTATE\tSTARTED\tTOOK\tREASON")
				for _, d := range deploys {
					took := "-"
					if !d.Ended.IsZero() {
						took = d.Ended.Sub(d.Started).Round(100 * time.Millisecond).String()
					}
					fmt.Fprintf(tw, "%s\tv%d\tv%d\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.From, d.To, d.Strategy, d.State, age(d.Started), took, d.Reason)
				}
				return tw.Flush()
			})
		},
	}
	f.register(cmd)
	return cmd
}

func eventsCommand() *cobra.Command {
	f := &appFlags{}
	var follow bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the cluster's recent events (an app's, with -a)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			app := f.app
			d := 30 * time.Second
			if follow {
				d = 365 * 24 * time.Hour
			}
			return f.withController(d, func(ctx context.Context, c *controller.Client) error {
				var index, last uint64
				for {
					events, m, err := c.Events(ctx, controller.QueryOptions{Index: index, Wait: controller.MaxWait})
					if err != nil {
						if ctx.Err() != nil {
							return nil
						}
						return err
					}
					for _, e := range events {
						if e.ID <= last || (app != "" && e.Subject != app) {
							continue
						}
						last = e.ID
						if f.asJSON {
							printJSON(e)
							continue
						}
						fmt.Printf("%s  %-16s %s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Type, e.Message)
					}
					if !follow {
						return nil
					}
					index = m.Index
				}
			})
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	return cmd
}
