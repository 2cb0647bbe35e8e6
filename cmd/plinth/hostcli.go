package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-os/plinth/host"
	"github.com/plinth-os/plinth/host/bundle"
	"github.com/plinth-os/plinth/host/imagestore"
	"github.com/plinth-os/plinth/host/job"
)

// hostCommand groups the job verbs against one host's API.
func hostCommand() *cobra.Command {
	var addr, credsPath string
	cmd := &cobra.Command{Use: "host", Short: "Run and inspect jobs on one host (its host API)"}
	cmd.PersistentFlags().StringVar(&addr, "host", "127.0.0.1", "host API address, host[:port]")
	cmd.PersistentFlags().StringVar(&credsPath, "credentials", defaultCredentials(), "client credentials file (client.toml)")
	client := func() (*host.Client, error) {
		creds, err := bundle.LoadCredentials(credsPath)
		if err != nil {
			return nil, fmt.Errorf("%w (pass --credentials with the client.toml from `plinth cluster init`)", err)
		}
		return host.NewClient(addr, creds.TLS()), nil
	}
	// withClient runs f with a client and a context that Ctrl-C cancels.
	var withClient clientRunner = func(f func(ctx context.Context, c *host.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(_ *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			return f(ctx, c, args)
		}
	}

	ps := &cobra.Command{Use: "ps", Short: "List jobs", Args: cobra.NoArgs,
		RunE: withClient(func(ctx context.Context, c *host.Client, _ []string) error {
			jobs, err := c.Jobs(ctx)
			if err != nil {
				return err
			}
			printJobs(jobs)
			return nil
		})}

	var spec job.Spec
	var restart, user string
	var publish []string
	var memory int64
	var detach bool
	run := &cobra.Command{Use: "run --id ID (--rootfs DIR | --image REF) [flags] [-- COMMAND [ARG...]]", Short: "Create and start a job",
		Args: cobra.ArbitraryArgs,
		RunE: withClient(func(ctx context.Context, c *host.Client, args []string) error {
			spec.Cmd, spec.User, spec.Resources.MemoryBytes = args, user, memory
			spec.Restart.Policy = restart
			for _, p := range publish {
				port, err := parsePublish(p)
				if err != nil {
					return err
				}
				spec.Ports = append(spec.Ports, port)
			}
			j, err := c.CreateJob(ctx, spec)
			if err != nil {
				return err
			}
			if detach {
				fmt.Println(j.Spec.ID)
				return nil
			}
			// Attached: show the output until the run ends, exit with its code.
			logsDone := make(chan struct{})
			lctx, cancel := context.WithCancel(ctx)
			go func() {
				defer close(logsDone)
				c.JobLogs(lctx, spec.ID, job.LogOptions{Follow: true}, printLine(false))
			}()
			j, err = c.WaitJob(ctx, spec.ID)
			time.Sleep(200 * time.Millisecond) // the last lines of a short job
			cancel()
			<-logsDone
			if err != nil {
				return err
			}
			if j.Status.Exit != nil && j.Status.Exit.Code != 0 {
				os.Exit(min(max(j.Status.Exit.Code, 1), 255))
			}
			return nil
		})}
	f := run.Flags()
	f.StringVar(&spec.ID, "id", "", "job id (required)")
	f.StringVar(&spec.Rootfs, "rootfs", "", `root directory of the job, or "system" for the host's own (read-only)`)
	f.StringVar(&spec.Image, "image", "", "imported image to run (name:tag or ID; plinth host import)")
	f.StringArrayVarP(&spec.Env, "env", "e", nil, "KEY=value (repeatable)")
	f.StringVarP(&spec.WorkingDir, "workdir", "w", "", "working directory inside the job")
	f.StringVarP(&user, "user", "u", "", "uid or uid:gid")
	f.Int64Var(&memory, "memory", 0, "memory limit in bytes")
	f.Int64Var(&spec.Resources.Pids, "pids", 0, "process limit")
	f.Float64Var(&spec.Resources.CPUQuota, "cpus", 0, "CPU limit in cores")
	f.StringVar(&spec.Network, "network", "", "none (default), host, or bridge (an address on the container network)")
	f.StringArrayVarP(&publish, "publish", "p", nil, "HOSTPORT:PORT[/udp] to publish (bridge jobs; repeatable)")
	f.BoolVar(&spec.ReadonlyRootfs, "read-only", false, "mount the rootfs read-only")
	f.BoolVar(&spec.UserNamespace, "userns", false, "run the job's root as an unprivileged host ID range")
	f.StringVar(&restart, "restart", "", "never (default), on-failure or always")
	f.BoolVar(&spec.Resurrect, "resurrect", false, "start again when the host boots")
	f.BoolVarP(&detach, "detach", "d", false, "print the id and return instead of showing the output")
	run.MarkFlagRequired("id")

	var follow, timestamps bool
	var tail int
	var stream string
	logs := &cobra.Command{Use: "logs ID", Short: "Show a job's output", Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *host.Client, args []string) error {
			return c.JobLogs(ctx, args[0], job.LogOptions{Follow: follow, Tail: tail, Stream: stream}, printLine(timestamps))
		})}
	logs.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	logs.Flags().IntVar(&tail, "tail", 0, "only the last N lines")
	logs.Flags().StringVar(&stream, "stream", "", "stdout or stderr only")
	logs.Flags().BoolVarP(&timestamps, "timestamps", "t", false, "prefix each line with its time and stream")

	var grace time.Duration
	stop := &cobra.Command{Use: "stop ID", Short: "Stop a job: SIGTERM, then SIGKILL after the grace period", Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *host.Client, args []string) error {
			j, err := c.StopJob(ctx, args[0], grace)
			if err == nil {
				fmt.Printf("%s %s\n", j.Spec.ID, j.Status.State)
			}
			return err
		})}
	stop.Flags().DurationVar(&grace, "grace", 0, "time between SIGTERM and SIGKILL (default: the host's, 10s)")

	var force bool
	rm := &cobra.Command{Use: "rm ID", Short: "Remove a stopped job and its logs", Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *host.Client, args []string) error {
			return c.RemoveJob(ctx, args[0], force)
		})}
	rm.Flags().BoolVarP(&force, "force", "f", false, "kill the job first if it runs")

	kill := &cobra.Command{Use: "kill ID [SIGNAL]", Short: "Send a signal (default KILL) to a job", Args: cobra.RangeArgs(1, 2),
		RunE: withClient(func(ctx context.Context, c *host.Client, args []string) error {
			sig := "KILL"
			if len(args) == 2 {
				sig = args[1]
			}
			return c.SignalJob(ctx, args[0], sig)
		})}

	inspect := &cobra.Command{Use: "inspect ID", Short: "Print a job's spec and status as JSON", Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *host.Client, args []string) error {
			j, err := c.Job(ctx, args[0])
			if err != nil {
				return err
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(j)
		})}

	events := &cobra.Command{Use: "events", Short: "Print job events as they happen", Args: cobra.NoArgs,
		RunE: withClient(func(ctx context.Context, c *host.Client, _ []string) error {
			s, err := c.JobEvents(ctx)
			if err != nil {
				return err
			}
			go func() { <-ctx.Done(); s.Close() }()
			for {
				e, err := s.NextJob()
				if err != nil {
					return nil
				}
				detail := ""
				if e.Exit != nil {
					detail = fmt.Sprintf(" code=%d signal=%s oom=%v", e.Exit.Code, e.Exit.Signal, e.Exit.OOMKilled)
				}
				fmt.Printf("%s %s %s%s\n", e.Time.Format(time.RFC3339), e.Type, e.Job, detail)
			}
		})}

	imp := &cobra.Command{Use: "import ARCHIVE", Short: "Import the images of a `docker save` archive or a tar of an OCI layout", Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *host.Client, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			imgs, err := c.ImportImage(ctx, f)
			if err != nil {
				return err
			}
			printImages(imgs)
			return nil
		})}
	images := &cobra.Command{Use: "images", Short: "List imported images", Args: cobra.NoArgs,
		RunE: withClient(func(ctx context.Context, c *host.Client, _ []string) error {
			imgs, err := c.Images(ctx)
			if err != nil {
				return err
			}
			printImages(imgs)
			return nil
		})}

	cmd.AddCommand(ps, run, logs, stop, rm, kill, inspect, events, imp, images, hostUpgradeCommand(withClient), hostInstallCommand(withClient))
	return cmd
}

func printLine(timestamps bool) func(job.LogLine) error {
	return func(l job.LogLine) error {
		out := os.Stdout
		if l.Stream == job.Stderr {
			out = os.Stderr
		}
		if timestamps {
			fmt.Fprintf(out, "%s %s %s\n", l.Time.Format(time.RFC3339Nano), l.Stream, l.Text)
		} else {
			fmt.Fprintln(out, l.Text)
		}
		return nil
	}
}

func printJobs(jobs []job.Job) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTATE\tPID\tRESTARTS\tEXIT\tCOMMAND")
	for _, j := range jobs {
		exit := "-"
		if e := j.Status.Exit; e != nil {
			switch {
			case e.OOMKilled:
				exit = "oom-killed"
			case e.Unknown:
				exit = "unknown"
			case e.Signal != "":
				exit = e.Signal
			default:
				exit = fmt.Sprint(e.Code)
			}
		}
		pid := "-"
		if j.Status.Pid != 0 {
			pid = fmt.Sprint(j.Status.Pid)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", j.Spec.ID, j.Status.State, pid, j.Status.Restarts, exit, strings.Join(j.Spec.Cmd, " "))
	}
	w.Flush()
}

func printImages(imgs []imagestore.Image) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tNAMES\tLAYERS\tSIZE")
	for _, img := range imgs {
		id := strings.TrimPrefix(img.ID, "sha256:")
		fmt.Fprintf(w, "%s\t%s\t%d\t%.1f MB\n", id[:min(12, len(id))], strings.Join(img.Names, ","), len(img.Layers), float64(img.Size)/1e6)
	}
	w.Flush()
}

// parsePublish reads HOSTPORT:PORT[/udp].
func parsePublish(s string) (job.Port, error) {
	ports, proto, _ := strings.Cut(s, "/")
	h, c, ok := strings.Cut(ports, ":")
	hp, err1 := strconv.Atoi(h)
	cp, err2 := strconv.Atoi(c)
	if !ok || err1 != nil || err2 != nil {
		return job.Port{}, fmt.Errorf("--publish %q: want HOSTPORT:PORT or HOSTPORT:PORT/udp", s)
	}
	return job.Port{Host: hp, Container: cp, Proto: proto}, nil
}
