package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/job"
	"github.com/plinth-os/plinth/internal/layer0"
	"github.com/plinth-os/plinth/services/controller"
)

// clusterFlags are how CLI commands reach the cluster: credentials, a
// host to ask for members, or controller addresses given outright.
type clusterFlags struct {
	credsPath   string
	hostAddr    string
	controllers []string
	asJSON      bool
}

func (f *clusterFlags) register(cmd *cobra.Command, jsonFlag bool) {
	fl := cmd.PersistentFlags()
	fl.StringVar(&f.credsPath, "credentials", defaultCredentials(), "client credentials file (client.toml)")
	fl.StringVar(&f.hostAddr, "host", "127.0.0.1", "a host API address whose members name the controllers")
	fl.StringSliceVar(&f.controllers, "controller", nil, "controller API addresses (default: the hosts with the controller role)")
	if jsonFlag {
		fl.BoolVar(&f.asJSON, "json", false, "print JSON")
	}
}

func (f *clusterFlags) credentials() (*bundle.Credentials, error) {
	creds, err := bundle.LoadCredentials(f.credsPath)
	if err != nil {
		return nil, fmt.Errorf("%w (pass --credentials with the client.toml from `plinth cluster init`)", err)
	}
	return creds, nil
}

// controllerClient returns a client of --controller, else of the
// controllers that --host's members name.
func (f *clusterFlags) controllerClient(ctx context.Context) (*controller.Client, error) {
	creds, err := f.credentials()
	if err != nil {
		return nil, err
	}
	if len(f.controllers) > 0 {
		return controller.NewClient(f.controllers, creds.TLS()), nil
	}
	return controller.NewHostClient(host.NewClient(f.hostAddr, creds.TLS()), creds.TLS()), nil
}

// withTimeout runs f with a context that ends after d or at Ctrl-C.
func withTimeout(d time.Duration, f func(ctx context.Context) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(ctx)
}

// service is a platform service that runs until its context ends.
type service interface {
	Run(ctx context.Context) error
}

// runPlatformJob runs what a platform job runs: the service newService
// makes from the job's credentials (hostd writes them) and a logger to
// the job's log, until SIGINT or SIGTERM.
func runPlatformJob(job, credsPath string, newService func(*bundle.Credentials, *slog.Logger) (service, error)) error {
	creds, err := bundle.LoadCredentials(credsPath)
	if err != nil {
		return fmt.Errorf("%w (the %s job gets it from hostd: job spec credentials = true)", err, job)
	}
	s, err := newService(creds, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := s.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// withController runs do with a client of the cluster's controllers
// (controllerClient) and a context that ends after d or at Ctrl-C.
func (f *clusterFlags) withController(d time.Duration, do func(ctx context.Context, c *controller.Client) error) error {
	return withTimeout(d, func(ctx context.Context) error {
		c, err := f.controllerClient(ctx)
		if err != nil {
			return err
		}
		return do(ctx, c)
	})
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func controllerCommand() *cobra.Command {
	var f clusterFlags
	cmd := &cobra.Command{Use: "controller", Short: "Run and manage the cluster's controller (its control plane)"}
	f.register(cmd, true)
	cmd.AddCommand(controllerRunCommand(), controllerStatusCommand(&f), controllerVotersCommand(&f))
	return cmd
}

func controllerRunCommand() *cobra.Command {
	cfg := controller.DefaultConfig()
	var credsPath string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a controller voter (what the controller job runs)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return runPlatformJob("controller", credsPath, func(creds *bundle.Credentials, log *slog.Logger) (service, error) {
				cfg.Credentials = creds
				cfg.Log = log
				return controller.New(cfg)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&credsPath, "credentials", layer0.JobCredentials, "host certificate of the cluster CA")
	fl.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "raft log, snapshots")
	fl.StringVar(&cfg.HostAPI, "host-api", cfg.HostAPI, "the local host API")
	fl.IntVar(&cfg.Ports.API, "api-port", cfg.Ports.API, "controller API port (the same on every controller)")
	fl.IntVar(&cfg.Ports.Raft, "raft-port", cfg.Ports.Raft, "raft port (the same on every controller)")
	fl.IntVar(&cfg.Expect, "expect", cfg.Expect, "voters a first start waits for before bootstrapping (1, 3 or 5)")
	return cmd
}

func controllerStatusCommand(f *clusterFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the controller's leader, term, indexes and voters with their health",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				st, err := showStatus(ctx, c, f.asJSON, wholeStatus)
				if err == nil && !st.Healthy() {
					err = errors.New("controller is not healthy")
				}
				return err
			})
		},
	}
}

// showStatus asks the controller for its status and prints it: as JSON
// (of what asJSON picks from it) or as a table.
func showStatus(ctx context.Context, c *controller.Client, asJSON bool, pick func(controller.Status) any) (controller.Status, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return st, err
	}
	if asJSON {
		return st, printJSON(pick(st))
	}
	printStatus(st)
	return st, nil
}

func wholeStatus(st controller.Status) any { return st }

func printStatus(st controller.Status) {
	leader := st.Leader
	if leader == "" {
		leader = "none (election under way, or quorum lost)"
	}
	fmt.Printf("cluster %s  leader %s  term %d  commit %d  applied %d (asked %s)\n", st.ClusterID, leader, st.Term, st.CommitIndex, st.AppliedIndex, st.ID)
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VOTER\tHOSTNAME\tAPI\tSERF\tSTATE\tAPPLIED\tHEALTH")
	for _, v := range st.Voters {
		health := "ok"
		if !v.Healthy {
			health = "unhealthy: " + v.Error
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", v.ID, v.Hostname, v.API, v.Serf, v.State, v.AppliedIndex, health)
	}
	w.Flush()
}

func controllerVotersCommand(f *clusterFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "voters [add|remove NODE]",
		Short: "List the voters, or add or remove one by node ID",
		Long: "Voters are normally managed for you: controller hosts join as voters on their\n" +
			"first start, a host that leaves the cluster gracefully is removed, and a failed\n" +
			"one stays (it may come back). Remove a voter by hand only for a host that is\n" +
			"gone for good; add one to bring back a host whose data was lost.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 || len(args) == 2 && (args[0] == "add" || args[0] == "remove") {
				return nil
			}
			return errors.New("usage: plinth controller voters [add|remove NODE]")
		},
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				var err error
				if len(args) == 2 {
					if args[0] == "add" {
						err = c.AddVoter(ctx, args[1])
					} else {
						err = c.RemoveVoter(ctx, args[1])
					}
					if err != nil {
						return err
					}
				}
				_, err = showStatus(ctx, c, f.asJSON, func(st controller.Status) any { return st.Voters })
				return err
			})
		},
	}
	return cmd
}

// clusterBackupCommands are `plinth cluster backup|restore`.
func clusterBackupCommands() []*cobra.Command {
	var f clusterFlags
	backup := &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a backup of the controller's whole state to FILE (- for stdout)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(10*time.Minute, func(ctx context.Context, c *controller.Client) error {
				out := os.Stdout
				tmp := ""
				if args[0] != "-" {
					// Written beside the target and renamed: an
					// interrupted backup never leaves a partial file.
					fh, err := os.CreateTemp(filepath.Dir(args[0]), ".plinth-backup-*")
					if err != nil {
						return err
					}
					defer os.Remove(fh.Name())
					out, tmp = fh, fh.Name()
				}
				h, err := c.Backup(ctx, out)
				if err != nil {
					return err
				}
				if tmp != "" {
					if err := out.Sync(); err != nil {
						return err
					}
					if err := out.Close(); err != nil {
						return err
					}
					if err := os.Rename(tmp, args[0]); err != nil {
						return err
					}
				}
				if f.asJSON {
					return printJSON(h)
				}
				fmt.Fprintf(os.Stderr, "backup of cluster %s at index %d (%d bytes of state, sha256 %s) written to %s\n", h.ClusterID, h.Index, h.Size, h.SHA256[:16], args[0])
				return nil
			})
		},
	}
	f.register(backup, true)
	var g clusterFlags
	var force bool
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the controller's whole state with a backup's",
		Long: "restore checks the backup (header, size, SHA-256, contents) before it sends it;\n" +
			"a damaged or truncated file is refused and nothing changes. A backup of another\n" +
			"cluster (another CA) is refused unless --force.",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return withTimeout(10*time.Minute, func(ctx context.Context) error {
				in, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer in.Close()
				c, err := g.controllerClient(ctx)
				if err != nil {
					return err
				}
				h, err := c.Restore(ctx, in, force)
				if err != nil {
					return err
				}
				if g.asJSON {
					return printJSON(h)
				}
				fmt.Printf("restored cluster %s's state at index %d, taken %s\n", h.ClusterID, h.Index, h.Time.Format(time.RFC3339))
				return nil
			})
		},
	}
	g.register(restore, true)
	restore.Flags().BoolVar(&force, "force", false, "restore a backup of another cluster")
	return []*cobra.Command{backup, restore}
}

func servicesCommand() *cobra.Command {
	var f clusterFlags
	cmd := &cobra.Command{
		Use:   "services [NAME]",
		Short: "List services with their instances, health, leader and host",
		Long: "A job declares services in its spec (name, port, and a health check: tcp, http or\n" +
			"command). The discovery agent on its host runs each check every " + job.DefaultCheckInterval.String() + " with a\n" +
			job.DefaultCheckTimeout.String() + " timeout unless the check sets its own interval and timeout; a service's\n" +
			"leader is its oldest healthy instance, changed only when that one fails.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return f.withController(30*time.Second, func(ctx context.Context, c *controller.Client) error {
				services, _, err := c.Services(ctx, controller.QueryOptions{})
				if err != nil {
					return err
				}
				instances, _, err := c.Instances(ctx, controller.QueryOptions{})
				if err != nil {
					return err
				}
				type entry struct {
					controller.Service
					Instances []controller.Instance `json:"instances"`
				}
				var out []entry
				for _, s := range services {
					if len(args) == 1 && s.Name != args[0] {
						continue
					}
					e := entry{Service: s, Instances: []controller.Instance{}}
					for _, i := range instances {
						if i.Service == s.Name {
							e.Instances = append(e.Instances, i)
						}
					}
					out = append(out, e)
				}
				if len(args) == 1 && len(out) == 0 {
					return fmt.Errorf("no service %q (no job declares it, or its instances are gone)", args[0])
				}
				if f.asJSON {
					if out == nil {
						out = []entry{}
					}
					return printJSON(out)
				}
				fmt.Printf("checks: every %s, timeout %s, unless a job's spec sets them\n\n", job.DefaultCheckInterval, job.DefaultCheckTimeout)
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "SERVICE\tINSTANCE\tADDRESS\tHEALTH\tLEADER\tHOST\tJOB")
				for _, e := range out {
					for _, i := range e.Instances {
						health := "healthy"
						if !i.Healthy {
							health = "unhealthy"
						}
						if i.Output != "" {
							health += " (" + i.Output + ")"
						}
						lead := ""
						if i.ID == e.Leader {
							lead = "leader"
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Name, i.ID, i.Addr, health, lead, i.Host, i.Job)
					}
				}
				return w.Flush()
			})
		},
	}
	f.register(cmd, true)
	return cmd
}
