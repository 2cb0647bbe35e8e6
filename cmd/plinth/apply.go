package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/services/appspec"
	"github.com/plinth-os/plinth/services/controller"
)

func applyCommand() *cobra.Command {
	f := &appFlags{}
	var df deployFlags
	var file string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Make an app what its plinth.toml says: show the changes, then apply them",
		Long: `Read plinth.toml and change the app to match it: its processes, release
command and config (a new release of the serving image, deployed), its
scale and deploy strategy, and its routes (added and removed). The changes
are printed first; --dry-run stops there. A missing app is made; its image
comes from plinth deploy.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			data, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			decl, err := appspec.ParseFile(file, data)
			if err != nil {
				return err
			}
			if f.app == "" {
				f.app = decl.App
			}
			if f.app == "" {
				return fmt.Errorf("%s names no app: add app = \"NAME\", or give -a APP", file)
			}
			return f.withController(df.timeout(), func(ctx context.Context, c *controller.Client) error {
				return apply(ctx, c, f.app, decl, &df, dryRun)
			})
		},
	}
	f.register(cmd)
	df.register(cmd)
	cmd.Flags().StringVarP(&file, "file", "f", appFile, "the app's plinth.toml")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only show what would change")
	return cmd
}

// plan is what apply changes.
type plan struct {
	lines      []string
	release    *controller.ReleaseRequest
	app        *controller.App
	addRoutes  []controller.Route
	dropRoutes []controller.Route
}

func apply(ctx context.Context, c *controller.Client, name string, decl *appspec.File, df *deployFlags, dryRun bool) error {
	app, err := c.App(ctx, name, controller.QueryOptions{})
	exists := err == nil
	if controller.IsNotFound(err) {
		app = controller.App{Name: name}
	} else if err != nil {
		return err
	}
	var rel *controller.Release
	if exists && (app.Release > 0 || app.LastRelease > 0) {
		r, err := currentRelease(ctx, c, app)
		if err != nil {
			return err
		}
		rel = &r
	}
	routes, _, err := c.Routes(ctx, controller.QueryOptions{})
	if err != nil {
		return err
	}
	p := diff(app, rel, routes, decl)
	if !exists {
		p.lines = append([]string{"+ app " + name}, p.lines...)
	}
	if len(p.lines) == 0 && exists {
		fmt.Printf("%s is as %s says: nothing to change\n", name, appFile)
		return nil
	}
	for _, l := range p.lines {
		fmt.Println(l)
	}
	if p.release != nil && rel == nil {
		return fmt.Errorf("%s has no image yet: deploy one first (plinth deploy -a %s --image FILE|REF), then apply", name, name)
	}
	if dryRun {
		return nil
	}
	if !exists {
		if app, err = c.PutApp(ctx, app, new(uint64)); err != nil {
			return err
		}
	}
	if p.app != nil {
		p.app.ModifyIndex = app.ModifyIndex
		if _, err := c.PutApp(ctx, *p.app, &app.ModifyIndex); err != nil {
			return fmt.Errorf("scale %s: %w", name, err)
		}
	}
	if p.release != nil {
		q := *p.release
		def := df.request()
		q.Deploy, q.Strategy, q.HealthTimeout = true, cmp.Or(def.Strategy, decl.Deploy.Strategy), def.HealthTimeout
		if q.HealthTimeout.Duration == 0 {
			q.HealthTimeout.Duration = decl.Deploy.HealthTimeout.Duration
		}
		if err := deployRelease(ctx, c, name, q, false); err != nil {
			return err
		}
	}
	for _, r := range p.dropRoutes {
		if err := c.DeleteRoute(ctx, r.ID); err != nil {
			return fmt.Errorf("remove route %s: %w", r.ID, err)
		}
	}
	for _, r := range p.addRoutes {
		out, err := c.AddRoute(ctx, r)
		if err != nil {
			return fmt.Errorf("add route to %s: %w", r.Service, err)
		}
		fmt.Printf("route %s: %s %s\n", out.ID, out.Type, routeMatch(out))
	}
	fmt.Printf("%s applied\n", name)
	return nil
}

// diff compares the app as it is with decl.
func diff(app controller.App, rel *controller.Release, routes []controller.Route, decl *appspec.File) plan {
	var p plan
	q := controller.ReleaseRequest{}
	changedRelease := false
	var cur controller.Release
	if rel != nil {
		cur = *rel
	}
	if procs := decl.ReleaseProcesses(); procs != nil && !sameJSON(procs, cur.Processes) {
		for _, typ := range slices.Sorted(maps.Keys(procs)) {
			if old, ok := cur.Processes[typ]; !ok {
				p.lines = append(p.lines, "+ process "+typ)
			} else if !sameJSON(old, procs[typ]) {
				p.lines = append(p.lines, "~ process "+typ)
			}
		}
		for typ := range cur.Processes {
			if _, ok := procs[typ]; !ok {
				p.lines = append(p.lines, "- process "+typ)
			}
		}
		q.Processes, changedRelease = procs, true
	}
	if !slices.Equal(decl.Release, cur.ReleaseCommand) && (len(decl.Release) > 0 || len(cur.ReleaseCommand) > 0) {
		p.lines = append(p.lines, fmt.Sprintf("~ release command %q", []string(decl.Release)))
		q.ReleaseCommand, changedRelease = decl.Release, true
		if q.Processes == nil {
			q.Processes = cur.Processes
		}
	}
	if decl.Config != nil && !maps.Equal(decl.Config, cur.Config) {
		for _, k := range slices.Sorted(maps.Keys(decl.Config)) {
			if old, ok := cur.Config[k]; !ok {
				p.lines = append(p.lines, "+ config "+k)
			} else if old != decl.Config[k] {
				p.lines = append(p.lines, "~ config "+k)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(cur.Config)) {
			if _, ok := decl.Config[k]; !ok {
				p.lines = append(p.lines, "- config "+k)
			}
		}
		q.Set, q.ReplaceConfig, changedRelease = decl.Config, true, true
	}
	if changedRelease {
		q.Description = "apply " + appFile
		p.release = &q
	}
	next := app
	next.Scale = maps.Clone(app.Scale)
	if next.Scale == nil {
		next.Scale = map[string]int{}
	}
	scaled := false
	for _, typ := range slices.Sorted(maps.Keys(decl.Processes)) {
		if s := decl.Processes[typ].Scale; s != nil && app.ScaleOf(typ) != *s {
			p.lines = append(p.lines, fmt.Sprintf("~ scale %s %d → %d", typ, app.ScaleOf(typ), *s))
			next.Scale[typ] = *s
			scaled = true
		}
	}
	if decl.Deploy.Strategy != "" && decl.Deploy.Strategy != app.Strategy {
		p.lines = append(p.lines, fmt.Sprintf("~ strategy %s", decl.Deploy.Strategy))
		next.Strategy = decl.Deploy.Strategy
		scaled = true
	}
	if scaled {
		p.app = &next
	}
	// Routes: the file's against those to the app's services.
	services := map[string]bool{}
	for typ := range cur.Processes {
		services[controller.ServiceName(app.Name, typ)] = true
	}
	for typ := range decl.Processes {
		services[controller.ServiceName(app.Name, typ)] = true
	}
	want := map[string]controller.Route{}
	for _, r := range decl.Routes {
		rt := controller.Route{Type: r.Type, Service: controller.ServiceName(app.Name, cmp.Or(r.Process, controller.WebProcess)),
			Domain: r.Domain, Path: r.Path, Port: r.Port, PortEnd: r.PortEnd, Sticky: r.Sticky}
		want[routeKey(rt)] = rt
	}
	have := map[string]bool{}
	for _, r := range routes {
		if !services[r.Service] {
			continue
		}
		key := routeKey(r)
		if _, ok := want[key]; ok {
			have[key] = true
			continue
		}
		// A TCP route the file gives no port matches the port it got.
		anyPort := r
		anyPort.Port = 0
		if _, ok := want[routeKey(anyPort)]; ok && r.Type == controller.RouteTCP {
			have[routeKey(anyPort)] = true
			continue
		}
		if decl.Routes != nil {
			p.lines = append(p.lines, fmt.Sprintf("- route %s %s %s", r.ID, r.Type, routeMatch(r)))
			p.dropRoutes = append(p.dropRoutes, r)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(want)) {
		if !have[key] {
			r := want[key]
			p.lines = append(p.lines, fmt.Sprintf("+ route %s %s to %s", r.Type, routeMatch(r), r.Service))
			p.addRoutes = append(p.addRoutes, r)
		}
	}
	return p
}

// routeKey is what makes a route the same one for apply: its type,
// service and what it matches (a TCP route without a port matches any).
func routeKey(r controller.Route) string {
	port := r.Port
	if r.Type == controller.RouteHTTP {
		port = 0
	}
	return fmt.Sprintf("%s|%s|%s|%s|%d|%v", r.Type, r.Service, r.Domain, cmp.Or(r.Path, "/"), port, r.Sticky)
}

func sameJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return reflect.DeepEqual(x, y)
}

func exportCommand() *cobra.Command {
	f := &appFlags{}
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Print what runs as plinth.toml (processes, scale, config, routes)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				r, err := currentRelease(ctx, c, app)
				if err != nil {
					return err
				}
				routes, _, err := c.Routes(ctx, controller.QueryOptions{})
				if err != nil {
					return err
				}
				data, err := appspec.Export(app, r, routes)
				if err != nil {
					return err
				}
				_, err = os.Stdout.Write(data)
				return err
			})
		},
	}
	f.register(cmd)
	return cmd
}
