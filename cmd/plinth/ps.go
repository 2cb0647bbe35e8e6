package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/services/controller"
	"github.com/plinth-os/plinth/services/deployer"
)

// instance is one of an app's jobs on a host, as ps shows it.
type instance struct {
	Type     string    `json:"type"`
	Job      string    `json:"job"`
	Release  int       `json:"release"`
	Host     string    `json:"host"`
	HostID   string    `json:"host_id"`
	State    string    `json:"state"`
	Started  time.Time `json:"started,omitzero"`
	Restarts int       `json:"restarts"`
	Health   string    `json:"health,omitempty"`
	api      string
}

// appInstances finds app's instances: the placements of its formations,
// with each job's state from its host and its health from discovery.
func appInstances(ctx context.Context, f *clusterFlags, c *controller.Client, app string) ([]instance, error) {
	formations, _, err := c.Formations(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, err
	}
	mine := map[string]controller.Formation{}
	for _, fm := range formations {
		if fm.Job.Tags[controller.AppTag] == app {
			mine[fm.Name] = fm
		}
	}
	placements, _, err := c.Placements(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, err
	}
	hosts, _, err := c.Hosts(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, err
	}
	byID := map[string]controller.Host{}
	for _, h := range hosts {
		byID[h.ID] = h
	}
	instances, _, err := c.Instances(ctx, controller.QueryOptions{})
	if err != nil {
		return nil, err
	}
	var out []instance
	for _, p := range placements {
		fm, ok := mine[p.Formation]
		if !ok {
			continue
		}
		rel, _ := strconv.Atoi(fm.Job.Tags[controller.ReleaseTag])
		h := byID[p.Host]
		in := instance{Type: fm.Job.Tags[controller.TypeTag], Job: p.Job, Release: rel, Host: cmp.Or(h.Hostname, p.Host), HostID: p.Host, State: "unknown", api: h.API}
		for _, i := range instances {
			if i.Host == p.Host && i.Job == p.Job {
				switch {
				case i.Draining:
					in.Health = "draining"
				case i.Healthy:
					in.Health = "healthy"
				default:
					in.Health = "unhealthy: " + i.Output
				}
			}
		}
		out = append(out, in)
	}
	creds, err := f.credentials()
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for i := range out {
		if out[i].api == "" {
			continue
		}
		wg.Go(func() {
			jctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			j, err := host.NewClient(out[i].api, creds.TLS()).Job(jctx, out[i].Job)
			if err != nil {
				out[i].State = "unreachable"
				return
			}
			out[i].State, out[i].Started, out[i].Restarts = j.Status.State, j.Status.StartedAt, j.Status.Restarts
		})
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b instance) int {
		if a.Type != b.Type {
			return strings.Compare(a.Type, b.Type)
		}
		return strings.Compare(a.Job, b.Job)
	})
	return out, nil
}

func psCommand() *cobra.Command {
	f := &appFlags{}
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List an app's instances with their hosts; scale and restart them",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				ins, err := appInstances(ctx, &f.clusterFlags, c, app.Name)
				if err != nil {
					return err
				}
				if f.asJSON {
					return printJSON(ins)
				}
				if len(ins) == 0 {
					fmt.Printf("%s has no instances (scale: %s)\n", app.Name, scaleString(app, nil))
					return nil
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TYPE\tINSTANCE\tHOST\tSTATE\tAGE\tRESTARTS\tRELEASE\tHEALTH")
				for _, i := range ins {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\tv%d\t%s\n", i.Type, i.Job, i.Host, i.State, age(i.Started), i.Restarts, i.Release, cmp.Or(i.Health, "-"))
				}
				return tw.Flush()
			})
		},
	}
	f.register(cmd)
	scale := &cobra.Command{
		Use:   "scale TYPE=N...",
		Short: "Set how many instances of each process type run",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			want := map[string]int{}
			for _, a := range args {
				typ, n, ok := strings.Cut(a, "=")
				v, err := strconv.Atoi(n)
				if !ok || err != nil || v < 0 {
					return fmt.Errorf("%q: give TYPE=N, such as web=3", a)
				}
				want[typ] = v
			}
			return f.withApp(30*time.Second, func(ctx context.Context, c *controller.Client, app controller.App) error {
				if r, err := currentRelease(ctx, c, app); err == nil {
					for typ := range want {
						if _, ok := r.Processes[typ]; !ok {
							return fmt.Errorf("v%d of %s has no process type %s (it has %s)", r.Version, app.Name, typ, scaleString(app, &r))
						}
					}
				}
				if app.Scale == nil {
					app.Scale = map[string]int{}
				}
				for typ, n := range want {
					app.Scale[typ] = n
				}
				out, err := c.PutApp(ctx, app, &app.ModifyIndex)
				if controller.IsConflict(err) {
					return fmt.Errorf("%s changed meanwhile: run the command again", app.Name)
				}
				if err != nil {
					return err
				}
				fmt.Printf("%s scaled: %s (plinth ps -a %s shows the instances as they come and go)\n", app.Name, scaleString(out, nil), app.Name)
				return nil
			})
		},
	}
	var df deployFlags
	restart := &cobra.Command{
		Use:   "restart",
		Short: "Replace every instance with a fresh one, rolling, without dropping requests",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withApp(df.timeout(), func(ctx context.Context, c *controller.Client, app controller.App) error {
				q := df.request()
				q.Description = "restart"
				return deployRelease(ctx, c, app.Name, q, df.detach)
			})
		},
	}
	df.register(restart)
	cmd.AddCommand(scale, restart)
	return cmd
}

func logsCommand() *cobra.Command {
	f := &appFlags{}
	var follow bool
	var lines int
	var typ, hostName string
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Show an app's logs: every instance on every host, in time order",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			d := time.Minute
			if follow {
				d = 365 * 24 * time.Hour
			}
			return f.withApp(d, func(ctx context.Context, c *controller.Client, app controller.App) error {
				return appLogs(ctx, &f.clusterFlags, c, app.Name, logFilter{typ: typ, host: hostName}, lines, follow)
			})
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new lines, from new instances too")
	fl.IntVarP(&lines, "lines", "n", 100, "how many of the last lines to print first")
	fl.StringVar(&typ, "type", "", "only this process type's instances")
	fl.StringVar(&hostName, "on", "", "only the instances on this host (name or ID); --host is the host API the CLI talks to")
	return cmd
}

type logFilter struct{ typ, host string }

func (l logFilter) keep(i instance) bool {
	return (l.typ == "" || i.Type == l.typ) && (l.host == "" || i.Host == l.host || i.HostID == l.host)
}

type logLine struct {
	job.LogLine
	from string
}

// appLogs prints the last n lines of every instance merged by time,
// then, following, new lines as they come, from instances that start
// meanwhile too.
func appLogs(ctx context.Context, f *clusterFlags, c *controller.Client, app string, filter logFilter, n int, follow bool) error {
	creds, err := f.credentials()
	if err != nil {
		return err
	}
	ins, err := appInstances(ctx, f, c, app)
	if err != nil {
		return err
	}
	ins = slices.DeleteFunc(ins, func(i instance) bool { return !filter.keep(i) })
	prefix := func(i instance) string { return fmt.Sprintf("%s %s[%s]", i.Type, i.Job, i.Host) }
	var mu sync.Mutex
	var all []logLine
	// seen is, per instance, the time of the last line read: following
	// starts after it.
	seen := map[string]time.Time{}
	var wg sync.WaitGroup
	for _, i := range ins {
		wg.Go(func() {
			host.NewClient(i.api, creds.TLS()).JobLogs(ctx, i.Job, job.LogOptions{Tail: n}, func(l job.LogLine) error {
				mu.Lock()
				all = append(all, logLine{l, prefix(i)})
				seen[i.HostID+"/"+i.Job] = l.Time
				mu.Unlock()
				return nil
			})
		})
	}
	wg.Wait()
	slices.SortStableFunc(all, func(a, b logLine) int { return a.Time.Compare(b.Time) })
	for _, l := range all[max(0, len(all)-n):] {
		printLogLine(l)
	}
	if !follow {
		return nil
	}
	// Follow every instance, and look for new ones every 2 s.
	out := make(chan logLine, 256)
	followed := map[string]bool{}
	for _, i := range ins {
		followed[i.HostID+"/"+i.Job] = true
	}
	// An instance's lines after the time given: from its last line read,
	// or (new instances) all.
	start := func(i instance, after time.Time) {
		tail := 1
		if after.IsZero() {
			tail = 0
		}
		go host.NewClient(i.api, creds.TLS()).JobLogs(ctx, i.Job, job.LogOptions{Follow: true, Tail: tail}, func(l job.LogLine) error {
			if !l.Time.After(after) {
				return nil
			}
			select {
			case out <- logLine{l, prefix(i)}:
			case <-ctx.Done():
			}
			return nil
		})
	}
	for _, i := range ins {
		start(i, seen[i.HostID+"/"+i.Job])
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case l := <-out:
			printLogLine(l)
		case <-tick.C:
			now, err := appInstances(ctx, f, c, app)
			if err != nil {
				continue
			}
			for _, i := range now {
				if key := i.HostID + "/" + i.Job; filter.keep(i) && !followed[key] && i.api != "" {
					followed[key] = true
					start(i, time.Time{})
				}
			}
		}
	}
}

func printLogLine(l logLine) {
	fmt.Printf("%s %s: %s\n", l.Time.Local().Format("2006-01-02T15:04:05.000"), l.from, l.Text)
}

func runCommand() *cobra.Command {
	f := &appFlags{}
	var detach bool
	var typ string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "run -- CMD [ARG...]",
		Short: "Run a one-off command with the app's image and config on a host",
		Long: `Run a command once, as a job on one of the cluster's hosts, with the app's
serving release (its image and config vars). Its output streams here and
its exit code is the command's; Ctrl-C stops it. With --detach it runs on
after the command returns.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			code := 0
			err := f.withApp(timeout, func(ctx context.Context, c *controller.Client, app controller.App) error {
				r, err := currentRelease(ctx, c, app)
				if err != nil {
					return err
				}
				hosts, _, err := c.Hosts(ctx, controller.QueryOptions{})
				if err != nil {
					return err
				}
				h, err := deployer.PickHost(hosts)
				if err != nil {
					return err
				}
				creds, err := f.credentials()
				if err != nil {
					return err
				}
				b := make([]byte, 3)
				rand.Read(b)
				spec := controller.OneOffJob(&r, fmt.Sprintf("%s.run.%s", app.Name, hex.EncodeToString(b)), typ, args)
				hc := host.NewClient(h.API, creds.TLS())
				if detach {
					spec.Restart = job.Restart{Policy: job.RestartNever}
					if _, err := hc.CreateJob(ctx, spec); err != nil {
						return err
					}
					fmt.Printf("running %s on %s; its output: plinth host logs --host %s %s\n", spec.ID, h.Hostname, h.API, spec.ID)
					return nil
				}
				j, err := deployer.RunJob(ctx, hc, spec, func(l job.LogLine) {
					w := os.Stdout
					if l.Stream == "stderr" {
						w = os.Stderr
					}
					fmt.Fprintln(w, l.Text)
				})
				if err != nil {
					return err
				}
				code = deployer.ExitCode(j)
				return nil
			})
			if err != nil {
				return err
			}
			if code != 0 {
				cmd.SilenceErrors = true
				return exitCode(code)
			}
			return nil
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.BoolVar(&detach, "detach", false, "start it and return")
	fl.StringVar(&typ, "type", "run", "the process type it runs as ($PLINTH_PROCESS_TYPE)")
	fl.DurationVar(&timeout, "timeout", 24*time.Hour, "stop it after this long")
	return cmd
}

// exitCode is an error that makes plinth exit with a command's code.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
